"""Accuracy statistics against scipy, hand-computed exact values and analytic intervals."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn
from torch.utils.data import TensorDataset

from suite.errors import DepthbenchError
from suite.run.stats import (
    geometric_t_interval,
    mcnemar_exact,
    pack_correct,
    paired_bootstrap_difference,
    t_interval,
    unpack_correct,
    wilson_interval,
)
from suite.run.train import evaluate


@pytest.mark.parametrize(
    ("successes", "trials"), [(0, 10), (3, 10), (10, 10), (1, 1), (342, 360), (500, 1000)]
)
@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_wilson_interval_matches_scipy(successes, trials, confidence):
    expected = stats.binomtest(successes, trials).proportion_ci(confidence, method="wilson")

    low, high = wilson_interval(successes, trials, confidence)

    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_wilson_interval_of_95_percent_on_360_images_is_about_2_points_wide_each_side():
    low, high = wilson_interval(342, 360)

    assert 0.92 < low < 0.93 and 0.96 < high < 0.97


def test_a_proportion_needs_trials():
    with pytest.raises(DepthbenchError, match="trials > 0"):
        wilson_interval(0, 0)


@given(st.lists(st.floats(50.0, 100.0), min_size=2, max_size=8))
@settings(deadline=None)
def test_t_interval_matches_scipy(values):
    values = np.array(values)
    sem = stats.sem(values)
    mean, low, high = t_interval(values)

    assert mean == pytest.approx(values.mean())
    if sem == 0:
        assert low == pytest.approx(high)
    else:
        expected = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sem)
        assert (low, high) == pytest.approx(expected)


def test_t_interval_by_hand_over_three_seeds():
    # mean 92, sd 2, t_{0.975, 2} = 4.302653
    mean, low, high = t_interval(np.array([90.0, 92.0, 94.0]))

    half_width = 4.302653 * 2 / np.sqrt(3)
    assert (mean, low, high) == pytest.approx((92, 92 - half_width, 92 + half_width), abs=1e-5)


def test_geometric_t_interval_is_the_t_interval_of_the_logarithms():
    values = np.array([0.095, 0.1, 0.139])

    centre, low, high = geometric_t_interval(values)

    log_mean, log_low, log_high = t_interval(np.log(values))
    assert (centre, low, high) == pytest.approx(np.exp([log_mean, log_low, log_high]))
    assert low < values.min() and values.max() < high
    with pytest.raises(DepthbenchError, match="positive values"):
        geometric_t_interval(np.array([1.0, 0.0]))


def discordant(only_a: int, only_b: int, both: int = 20, neither: int = 5):
    """Correctness of A and B on images with the given discordant and concordant counts."""
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return np.array(a), np.array(b)


@pytest.mark.parametrize(
    ("only_a", "only_b", "p_value"),
    [
        (1, 7, 2 * (1 + 8) / 2**8),  # 2 P(X <= 1), X ~ Binomial(8, 1/2)
        (5, 0, 2 / 2**5),  # 2 P(X = 0), X ~ Binomial(5, 1/2)
        (3, 3, 1.0),
        (0, 0, 1.0),  # no discordant image: nothing tells them apart
    ],
)
def test_mcnemar_exact_p_value_by_hand(only_a, only_b, p_value):
    a, b = discordant(only_a, only_b)

    test = mcnemar_exact(a, b)

    assert (test.only_a, test.only_b) == (only_a, only_b)
    assert test.p_value == pytest.approx(p_value, rel=1e-12)


def test_mcnemar_ignores_images_both_get_right_or_wrong():
    few = mcnemar_exact(*discordant(2, 9, both=10, neither=0))
    many = mcnemar_exact(*discordant(2, 9, both=10_000, neither=3_000))

    assert few.p_value == many.p_value


def test_paired_comparison_refuses_different_image_sets():
    with pytest.raises(DepthbenchError, match="same images"):
        mcnemar_exact(np.ones(10, bool), np.ones(11, bool))


def test_paired_bootstrap_matches_the_analytic_paired_interval_on_a_large_case():
    """20000 images, B right where A is plus 3% more, A right on 1% B misses: the bootstrap's
    percentiles agree with d ± z sd(d) / sqrt(n), d the per-image difference."""
    rng = np.random.default_rng(7)
    n = 20_000
    a = rng.random(n) < 0.85
    b = a.copy()
    b[~a & (rng.random(n) < 0.2)] = True
    b[a & (rng.random(n) < 0.01)] = False
    d = b.astype(float) - a.astype(float)
    half_width = stats.norm.ppf(0.975) * d.std(ddof=1) / np.sqrt(n)

    difference, low, high = paired_bootstrap_difference(a, b)

    assert difference == pytest.approx(d.mean())
    assert low == pytest.approx(d.mean() - half_width, abs=0.05 * half_width)
    assert high == pytest.approx(d.mean() + half_width, abs=0.05 * half_width)
    # pairing matters: an unpaired interval would be several times wider here
    unpaired = stats.norm.ppf(0.975) * np.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n)
    assert high - low < 0.5 * 2 * unpaired


def test_paired_bootstrap_over_seeds_keeps_each_image_whole():
    """Three seeds of two networks: the per-image difference is averaged over seeds before the
    images are resampled, so the interval is the analytic one of those per-image means."""
    rng = np.random.default_rng(3)
    a = rng.random((3, 10_000)) < 0.8
    b = a ^ (rng.random((3, 10_000)) < 0.05)
    d = b.mean(axis=0) - a.mean(axis=0)
    half_width = stats.norm.ppf(0.975) * d.std(ddof=1) / np.sqrt(d.size)

    difference, low, high = paired_bootstrap_difference(a, b)

    assert difference == pytest.approx(b.mean() - a.mean())
    assert (low, high) == pytest.approx(
        (d.mean() - half_width, d.mean() + half_width), abs=0.05 * half_width
    )


def test_paired_bootstrap_is_seeded():
    a, b = discordant(40, 90, both=500)

    first = paired_bootstrap_difference(a, b, resamples=200)
    assert paired_bootstrap_difference(a, b, resamples=200) == first
    assert paired_bootstrap_difference(a, b, resamples=200, seed=1) != first


@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_packed_correctness_round_trips(bits):
    correct = np.array(bits)

    assert unpack_correct(pack_correct(correct), len(bits)).tolist() == bits


def test_packed_correctness_of_the_wrong_length_is_refused():
    text = pack_correct(np.ones(16, bool))

    with pytest.raises(DepthbenchError, match="does not fit 30 test images"):
        unpack_correct(text, 30)


def test_evaluate_returns_which_images_were_right():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 10, generator=generator)
    labels = torch.randint(0, 10, (300,), generator=generator)

    accuracy = evaluate(nn.Identity(), TensorDataset(logits, labels), batch_size=64)

    assert accuracy.correct.tolist() == (logits.argmax(dim=1) == labels).tolist()
    assert accuracy.top1 == pytest.approx(100 * accuracy.correct.mean())
