"""dp-depth importance tables: entry networks, re-initialisation, scoring, caching, normalisation.

The network is a real torchvision MobileNetV2 with a short block list (L = 14, residual blocks,
stride boundaries and block ends like the full one), with random BN statistics, on real digits.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest
import torch
from torch.utils.data import Subset
from torchvision.models import MobileNetV2

from methods.dp_depth.importance import (
    CorruptImportanceEntryWarning,
    EntryCache,
    entry_network,
    entry_plan,
    importance_entries,
    importance_table,
    normalise,
    table_cache_dir,
)
from methods.dp_depth.solver import measured_entries
from suite.core.trace import trace
from suite.run.data import load_data
from suite.run.train import FinetuneRecipe
from tests.conftest import randomize_batchnorm

SHORT_MBV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s
ONE_STEP = FinetuneRecipe(steps=1, lr=0.1, batch_size=32)


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2)
    return trace(randomize_batchnorm(model), 32, "mbv2-short")


@pytest.fixture(scope="module")
def data():
    digits = load_data("digits", resolution=32)
    return replace(digits, holdout=Subset(digits.holdout, range(16)))


def interrupt_after(scored: int):
    """A progress callback that interrupts the table once ``scored`` entries are scored now."""
    calls = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        if done - calls[0] == scored:
            raise KeyboardInterrupt("interrupted by the test")

    return progress


def test_the_mobilenet_v2_under_test_has_block_ends_residuals_and_stride_boundaries(traced):
    chain = traced.chain
    assert chain.L == 14
    assert [(r.source, r.target) for r in chain.residuals] == [(5, 8), (11, 14)]
    assert sorted(chain.stride_boundaries) == [5, 11]
    assert sorted(p for p in range(1, 15) if chain.unit(p).act is None) == [2, 5, 8, 11, 14]


def test_entries_with_the_extension_are_the_upstream_exclude_zeros_entries(traced):
    chain = traced.chain
    segments = chain.segments("upstream")
    entries = importance_entries(segments, chain, add_block_end_activations=True)
    assert entries == measured_entries(segments, frozenset({2, 5, 8, 11, 14}))
    assert (5, 8, 0, 1) in entries and (5, 8, 1, 1) in entries and (3, 5, 1, 0) in entries


def test_entries_without_the_extension_keep_the_original_states(traced):
    chain = traced.chain
    segments = chain.segments("upstream")
    entries = importance_entries(segments, chain, add_block_end_activations=False)
    assert [entry[:2] for entry in entries] == sorted(segments)
    assert (5, 8, 0, 0) in entries and (0, 2, 1, 0) in entries and (3, 4, 1, 1) in entries
    for entry in entries:
        assert entry_plan(chain, entry).activations <= chain.original_activations


def test_an_entry_fuses_its_segment_and_sets_the_end_states(traced):
    chain = traced.chain
    plan = entry_plan(chain, (5, 8, 0, 1))  # a whole residual block, an activation added at 8
    original = chain.original_activations
    assert 6 in original and 7 in original and 8 not in original
    assert plan.activations == (original - {6, 7}) | {8}
    assert plan.groups(chain) == [(p - 1, p) for p in range(1, 6)] + [(5, 8)] + [
        (p - 1, p) for p in range(9, 15)
    ]
    assert entry_plan(chain, (3, 5, 1, 0)).activations == original - {4}


def test_a_smoke_single_conv_entry_with_original_states_is_the_base_network(traced, data, tmp_path):
    entry = (6, 7, 1, 1)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        network = entry_network(traced, entry, reinitialise=False, seed=0).eval()
        torch.testing.assert_close(network(images), traced.model.eval()(images))
    table = importance_table(traced, data, [entry], ONE_STEP, "smoke", tmp_path)
    assert table.scores[entry].top1_delta == 0
    assert table.scores[entry].loss_delta == pytest.approx(0, abs=1e-5)


def test_a_smoke_entry_that_removes_activations_changes_the_holdout_loss(traced, data, tmp_path):
    table = importance_table(
        traced, data, [(2, 5, 1, 1), (5, 8, 0, 1)], ONE_STEP, "smoke", tmp_path
    )
    assert all(score.loss_delta != 0 for score in table.scores.values())
    assert {score.fidelity for score in table.scores.values()} == {"smoke"}


def test_single_conv_entries_are_reinitialised_and_longer_ones_are_not(traced):
    network = entry_network(traced, (6, 7, 1, 1), reinitialise=True, seed=0)
    conv, bn = network.unit(7)
    assert not torch.equal(conv.weight, traced.conv(7).weight)
    torch.testing.assert_close(bn.running_mean, torch.zeros_like(bn.running_mean))
    torch.testing.assert_close(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.equal(traced.bn(7).running_var, torch.ones_like(bn.running_var))
    for p in set(range(1, 15)) - {7}:
        assert torch.equal(network.unit(p)[0].weight, traced.conv(p).weight)
    again = entry_network(traced, (6, 7, 1, 1), reinitialise=True, seed=0)
    assert torch.equal(again.unit(7)[0].weight, conv.weight)
    longer = entry_network(traced, (5, 8, 0, 1), reinitialise=True, seed=0)
    for p in range(1, 15):
        assert torch.equal(longer.unit(p)[0].weight, traced.conv(p).weight)


def test_full_fidelity_reinitialises_fine_tunes_and_records_its_fidelity(traced, data, tmp_path):
    entry = (6, 7, 1, 1)
    table = importance_table(traced, data, [entry], ONE_STEP, "full", tmp_path)
    score = table.scores[entry]
    assert score.fidelity == "full"
    assert score.loss_delta != 0  # the smoke score of this entry is exactly the base network's
    stored = json.loads(
        EntryCache(table_cache_dir(tmp_path, traced, data, ONE_STEP, "full"))
        .path(entry)
        .read_text()
    )
    assert stored["fidelity"] == "full"


def test_an_interrupted_table_resumes_without_recomputing_stored_entries(traced, data, tmp_path):
    entries = importance_entries(traced.chain.segments("upstream"), traced.chain, True)[:8]
    with pytest.raises(KeyboardInterrupt):
        importance_table(
            traced, data, entries, ONE_STEP, "smoke", tmp_path, progress=interrupt_after(3)
        )
    table = importance_table(traced, data, entries, ONE_STEP, "smoke", tmp_path)
    assert (table.computed, table.cached) == (len(entries) - 3, 3)
    cached = importance_table(traced, data, entries, ONE_STEP, "smoke", tmp_path)
    assert (cached.computed, cached.cached) == (0, len(entries))
    assert cached.scores == table.scores
    fresh = importance_table(traced, data, entries, ONE_STEP, "smoke", tmp_path / "fresh")
    assert fresh.scores == table.scores


def test_a_corrupt_cached_entry_is_measured_again_with_a_warning(traced, data, tmp_path):
    entry = (2, 5, 1, 1)
    first = importance_table(traced, data, [entry], ONE_STEP, "smoke", tmp_path)
    path = EntryCache(table_cache_dir(tmp_path, traced, data, ONE_STEP, "smoke")).path(entry)
    path.write_text('{"top1_delta": "not a number"')
    with pytest.warns(CorruptImportanceEntryWarning, match=str(path)):
        again = importance_table(traced, data, [entry], ONE_STEP, "smoke", tmp_path)
    assert again.computed == 1 and again.scores == first.scores
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptImportanceEntryWarning)
        assert importance_table(traced, data, [entry], ONE_STEP, "smoke", tmp_path).cached == 1


def test_the_cache_key_follows_weights_data_fidelity_and_the_full_recipe(traced, data, tmp_path):
    def key(model=traced, splits=data, recipe=ONE_STEP, fidelity="full"):
        return table_cache_dir(tmp_path, model, splits, recipe, fidelity)

    other_recipe = ONE_STEP.model_copy(update={"lr": 0.05})
    assert key() == key()
    assert key(recipe=other_recipe) != key()
    assert key(fidelity="smoke") != key()
    assert key(fidelity="smoke", recipe=other_recipe) == key(fidelity="smoke")
    assert key(splits=replace(data, holdout=Subset(data.holdout, range(12)))) != key()
    before, weight = key(), traced.conv(3).weight.detach().clone()
    with torch.no_grad():
        traced.conv(3).weight[0, 0, 0, 0] += 1
    try:
        assert key() != before
    finally:
        with torch.no_grad():
            traced.conv(3).weight.copy_(weight)
    assert key() == before


def test_normalise_subtracts_alpha_times_the_mean_of_single_conv_entries():
    h = {(0, 1, 1, 1): -4.0, (1, 2, 1, 0): -2.0, (0, 2, 1, 1): -1.0, (2, 5, 0, 1): 3.0}
    normalised = normalise(h, alpha=1.5)
    offset = 1.5 * (-4.0 + -2.0) / 2  # -4.5: a bonus of 4.5 per segment
    assert normalised == {entry: value - offset for entry, value in h.items()}
    assert normalised[(0, 2, 1, 1)] == 3.5
    assert normalise(h, alpha=0) == h
