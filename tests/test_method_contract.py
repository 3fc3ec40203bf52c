"""Every registered method keeps the method contract, on small real networks (as timm's
``test_models.py`` loops over ``list_models()``).

For each method of ``suite.core.registry.list_methods()`` and each network it applies to, at smoke
fidelity with a tiny recipe and each method's default config:

- an unreachable budget (a millionth of the base latency) raises ``Infeasible``, or the method
  says that it ignores budgets (``meta["budget_ignored"]``, the uncompressed reference);
- at a budget the method can reach, its plan validates against the chain, meets the budget by the
  context's screened and confirmed latency, and its deploy network computes what its trainable
  network computes within the suite's merge tolerance.

Nothing here depends on how fast the machine is: the reachable budget is the larger of the screen
and the confirmation of the last plan the unreachable walk measured (the method's most compressed
plan), and the context memoises both, so the method finds that plan within the budget again.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset
from torchvision.models import MobileNetV2, resnet18

from suite.core.budget import Budget
from suite.core.method import Infeasible, MethodResult, PlanContext
from suite.core.plan import Plan
from suite.core.realize import deploy_network, trainable_network
from suite.core.registry import get_method, list_methods
from suite.core.trace import trace
from suite.measure.profiles import read_profile
from suite.run.cell import MERGE_TOLERANCE, plan_context
from suite.run.data import load_data
from suite.run.train import FinetuneRecipe
from tests.conftest import randomize_batchnorm

PROFILE = Path(__file__).parent / "data" / "profiles" / "test-cpu-fast.yaml"
SHORT_MBV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s: 5 blocks, 2 with a skip
NETWORKS = {
    "mobilenet_v2": lambda: MobileNetV2(
        num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2
    ),
    "resnet18": lambda: resnet18(num_classes=10),
}
METHODS = [spec.name for spec in list_methods()]
UNREACHABLE = Budget(kind="fraction", value=1e-6)


@dataclass
class Walk:
    """What a method did at the unreachable budget."""

    outcome: MethodResult | Infeasible
    last_measured: Plan | None  # the last plan it measured


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    """One smoke-fidelity context per network, shared by every method so that plans measured
    once are not measured again; ``measured`` records every plan a method screens."""
    profile = read_profile(PROFILE)
    digits = load_data("digits", resolution=profile.resolution)
    data = replace(
        digits,
        train=Subset(digits.train, range(128)),
        holdout=Subset(digits.holdout, range(32)),
        test=Subset(digits.test, range(32)),
    )
    recipe = FinetuneRecipe(steps=2, lr=0.01, batch_size=32)
    cache = tmp_path_factory.mktemp("cache")

    @functools.cache
    def context(network: str) -> tuple[PlanContext, list[float]]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = randomize_batchnorm(NETWORKS[network]())
        traced = trace(model, profile.resolution, network)
        ctx = plan_context(traced, profile, data, recipe, fidelity="smoke", cache_dir=cache)
        measured: list[Plan] = []
        measure_plan = ctx.measure_plan

        def recording(plan: Plan):
            measured.append(plan)
            return measure_plan(plan)

        ctx.measure_plan = recording
        return ctx, measured

    return context


@pytest.fixture(scope="module")
def walks(contexts):
    """Each (method, network) planned once at the unreachable budget."""

    @functools.cache
    def walk(method: str, network: str) -> Walk:
        ctx, measured = contexts(network)
        reason = get_method(method).supports(ctx.chain)
        if reason is not None:
            pytest.skip(f"{method} does not apply to {network}: {reason}")
        measured.clear()
        try:
            outcome = plan_with(ctx, method, UNREACHABLE)
        except Infeasible as infeasible:
            outcome = infeasible
        return Walk(outcome, measured[-1] if measured else None)

    return walk


def plan_with(ctx: PlanContext, method: str, budget: Budget) -> MethodResult:
    spec = get_method(method)
    return spec.plan(ctx, budget, spec.make_config())


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("method", METHODS)
def test_an_unreachable_budget_is_infeasible(walks, method, network):
    outcome = walks(method, network).outcome

    if isinstance(outcome, MethodResult):
        assert outcome.meta.get("budget_ignored"), f"{method} met a budget of a millionth"
    else:
        assert str(outcome)  # the reason the cell stores


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("method", METHODS)
def test_the_plan_validates_and_deploys_exactly(contexts, walks, method, network):
    ctx, _ = contexts(network)
    walk = walks(method, network)
    last = walk.last_measured
    reachable = (
        max(ctx.measure_plan(last).median_ms, ctx.confirm_plan(last).median_ms) if last else 1e9
    )
    budget = Budget(kind="ms", value=reachable)

    result = plan_with(ctx, method, budget)

    result.plan.validate(ctx.chain)
    if not result.meta.get("budget_ignored"):
        assert ctx.measure_plan(result.plan).median_ms <= budget.value
        assert ctx.confirm_plan(result.plan).median_ms <= budget.value
    trainable = (result.trainable or trainable_network(ctx.traced, result.plan)).eval()
    size = ctx.chain.resolution
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trainable(images)
        merged = deploy_network(trainable)(images)
    assert (merged - expected).abs().max() <= MERGE_TOLERANCE * expected.abs().max()
