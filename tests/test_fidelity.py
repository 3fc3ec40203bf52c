"""Fidelities: each method's search effort at smoke < quick <= full, and what quick really runs.

``quick`` is the default run's fidelity: every method's real algorithm at a reduced, stated effort
(docs/methods/<name>.md). These tests read each method's fidelity mapping, check that quick lies
strictly above smoke and at most at full, and that quick dp-depth entries really are
re-initialised and fine-tuned, recomputed here by hand with the shared fine-tune.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils.data import Subset
from torchvision.models import MobileNetV2

from methods.depthshrinker import SMOKE_SEARCH_STEPS, DepthShrinkerConfig, search_steps
from methods.dp_depth.importance import (
    QUICK_BATCH,
    QUICK_STEPS,
    UPSTREAM_RECIPE,
    entry_network,
    entry_recipe,
    importance_table,
    table_cache_dir,
)
from methods.layerprune import BATCHES, LayerPruneConfig
from methods.relu_reduction import ReluReductionConfig, alpha_steps, holdout_images
from suite.core.budget import FIDELITIES
from suite.core.trace import trace
from suite.measure.profiles import load_profile
from suite.run.cell import plan_context
from suite.run.data import load_data, train_loader
from suite.run.train import FinetuneRecipe, evaluate, finetune
from tests.conftest import randomize_batchnorm

SHORT_MBV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s
RECIPE = FinetuneRecipe(steps=10, lr=0.05, batch_size=64)


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2)
    return trace(randomize_batchnorm(model), 32, "mbv2-short")


@pytest.fixture(scope="module")
def data():
    digits = load_data("digits", resolution=32)
    return replace(digits, holdout=Subset(digits.holdout, range(32)))


def context(traced, data, fidelity):
    profile = load_profile("cpu-onnxruntime")  # nothing is measured here
    return plan_context(traced, profile, data, RECIPE, fidelity=fidelity, seed=0)


def epoch_batches(data, batch_size: int) -> int:
    return len(train_loader(data.train, batch_size, 0))


def test_the_fidelities_are_smoke_quick_full_cheapest_first():
    assert FIDELITIES == ("smoke", "quick", "full")


def test_dp_depth_quick_fine_tunes_each_entry_for_fewer_images_than_full(data):
    smoke, quick, full = (entry_recipe(f, UPSTREAM_RECIPE) for f in FIDELITIES)

    assert smoke is None  # scored right after the change
    assert full == UPSTREAM_RECIPE
    assert (quick.steps, quick.batch_size) == (QUICK_STEPS, QUICK_BATCH)
    full_steps = epoch_batches(data, full.batch_size)  # one epoch of digits' training split
    assert 0 < quick.steps < full_steps
    assert 0 < quick.steps * quick.batch_size < full_steps * full.batch_size
    kept = ("lr", "momentum", "nesterov", "weight_decay", "kd_weight", "seed")
    assert {k: getattr(quick, k) for k in kept} == {k: getattr(full, k) for k in kept}


def test_quick_entries_are_reinitialised_fine_tuned_and_cached_apart(traced, data, tmp_path):
    entry = (6, 7, 1, 1)  # a single conv: re-initialised at quick and full, not at smoke
    table = importance_table(traced, data, [entry], UPSTREAM_RECIPE, "quick", tmp_path)

    # the same entry by hand: re-initialise, QUICK_STEPS steps of QUICK_BATCH images, score
    network = entry_network(traced, entry, reinitialise=True, seed=UPSTREAM_RECIPE.seed)
    recipe = UPSTREAM_RECIPE.model_copy(
        update={"epochs": None, "steps": QUICK_STEPS, "batch_size": QUICK_BATCH}
    )
    finetune(network, data, recipe)
    expected = evaluate(network, data.holdout).top1 - evaluate(traced.model, data.holdout).top1
    score = table.scores[entry]
    assert score.fidelity == "quick"
    assert score.top1_delta == pytest.approx(expected)
    smoke = importance_table(traced, data, [entry], UPSTREAM_RECIPE, "smoke", tmp_path)
    assert smoke.scores[entry].loss_delta == 0  # the unchanged base network
    assert score.loss_delta != 0
    keys = {table_cache_dir(tmp_path, traced, data, UPSTREAM_RECIPE, f) for f in FIDELITIES}
    assert len(keys) == 3
    other = UPSTREAM_RECIPE.model_copy(update={"lr": 0.05})  # the quick entries train with its lr
    assert table_cache_dir(tmp_path, traced, data, other, "quick") not in keys


def test_depthshrinker_quick_searches_at_least_one_epoch(traced, data):
    config = DepthShrinkerConfig()
    steps = {f: search_steps(context(traced, data, f), config) for f in FIDELITIES}

    assert steps["smoke"] == SMOKE_SEARCH_STEPS
    assert steps["smoke"] < steps["quick"] <= steps["full"]
    assert steps["quick"] >= epoch_batches(data, RECIPE.batch_size)
    longer = DepthShrinkerConfig(search_epochs=3)
    assert search_steps(context(traced, data, "full"), longer) == 3 * steps["quick"]


def test_relu_reduction_quick_scores_a_smaller_sample_and_trains_alpha_at_most_full():
    config = ReluReductionConfig()
    images = [holdout_images(f, config) for f in FIDELITIES]

    assert images[0] < images[1] < images[2] == config.holdout_images
    small = ReluReductionConfig(holdout_images=100)
    assert holdout_images("quick", small) == 100  # never more than the config asks for


def test_relu_reduction_alpha_steps_grow_with_fidelity(traced, data):
    config = ReluReductionConfig(alpha_epochs=2)
    steps = [alpha_steps(context(traced, data, f), config) for f in FIDELITIES]

    assert steps[0] < steps[1] < steps[2]


def test_layerprune_quick_accumulates_more_batches_than_smoke_and_fewer_than_full():
    assert 0 < BATCHES["smoke"] < BATCHES["quick"] < LayerPruneConfig().batches
    assert "full" not in BATCHES  # full reads the config's batches
