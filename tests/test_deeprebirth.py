"""DeepRebirth's ranking and its training schedule, on a small ResNet-18.

- ranking direction: with a cost model whose savings per operation are set by the test, the walk
  applies the operations of the largest saving first, in order;
- compute-matched: the optimiser steps of the whole cell (layer-wise stage plus the shared
  fine-tune, counted by a global optimiser hook) equal the shared recipe's; under ``paper`` they
  exceed it by the layer-wise steps, which the metadata reports as search steps.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import Subset
from torchvision.models import resnet18

from methods.deeprebirth import DeepRebirthConfig, operations, plan_deeprebirth
from suite.core.budget import Budget
from suite.core.method import PlanContext
from suite.core.trace import trace
from suite.measure.harness import LatencyResult
from suite.measure.profiles import read_profile
from suite.run.cell import run_cell
from suite.run.data import load_data
from suite.run.train import FinetuneRecipe
from tests.conftest import randomize_batchnorm
from tests.test_budget_confirmation import latency

PROFILE = Path(__file__).parent / "data" / "profiles" / "test-cpu-fast.yaml"
BASE_MS = 100.0
RECIPE = FinetuneRecipe(steps=16, lr=0.01, batch_size=32)  # 128 images: 4 steps an epoch


@pytest.fixture(scope="module")
def traced():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = randomize_batchnorm(resnet18(num_classes=10))
    return trace(model, read_profile(PROFILE).resolution)


@pytest.fixture(scope="module")
def data(traced):
    digits = load_data("digits", resolution=traced.chain.resolution)
    return replace(
        digits,
        train=Subset(digits.train, range(128)),
        holdout=Subset(digits.holdout, range(32)),
        test=Subset(digits.test, range(32)),
    )


def controlled_savings(traced) -> dict:
    """Saving k + 1 ms for the k-th operation in chain order (stem pool, then the 8 blocks): the
    largest savings are the last blocks'. The operations do not overlap."""
    return {op: float(k + 1) for k, op in enumerate(operations(traced.chain))}


def context(traced, data, fidelity="full") -> PlanContext:
    """Planning measures a cost model: the base latency less the saving of each new layer."""
    saving = controlled_savings(traced)

    def cost_model(deploy: nn.Module) -> LatencyResult:
        return latency(BASE_MS - sum(saving[r] for r in deploy.plan.replaced))

    return PlanContext(
        traced,
        read_profile(PROFILE),
        data,
        RECIPE,
        cost_model,
        tables=None,
        base_latency=lambda: BASE_MS,
        confirm=cost_model,  # deterministic: the full protocol agrees with the screen
        fidelity=fidelity,
    )


TWO_LARGEST = Budget(kind="ms", value=BASE_MS - 9 - 8)


def test_the_operations_of_the_largest_saving_are_applied_first(traced, data):
    ops = operations(traced.chain)

    result = plan_deeprebirth(context(traced, data, "smoke"), TWO_LARGEST, DeepRebirthConfig())

    last, before = ops[-1], ops[-2]  # the blocks (15, 17] and (13, 15]
    assert result.meta["applied"] == [
        [last.start, last.end, False],
        [before.start, before.end, False],
    ]
    assert set(result.plan.replaced) == {last, before}


@pytest.mark.parametrize(
    ("schedule", "layerwise", "total"),
    [
        ("compute-matched", 4, 16),  # a quarter of 16 steps, 2 per new layer, taken from the 16
        ("paper", 8, 16 + 8),  # one epoch (4 steps) per new layer, on top of the 16
    ],
)
def test_the_schedule_sets_the_cell_s_total_gradient_steps(
    traced, data, schedule, layerwise, total
):
    steps = []
    hook = register_optimizer_step_post_hook(lambda optimizer, args, kwargs: steps.append(1))
    try:
        outcome = run_cell(
            context(traced, data), "deeprebirth", {"schedule": schedule}, TWO_LARGEST
        )
    finally:
        hook.remove()

    meta = outcome.fields["plan"]["meta"]
    assert outcome.status == "ok" and len(outcome.plan.replaced) == 2
    assert len(steps) == total
    assert meta["layerwise_steps"] == layerwise
    assert meta["search_steps"] == total - RECIPE.steps
    assert meta["search_images"] == (total - RECIPE.steps) * RECIPE.batch_size
