"""A plan meets a measured budget only when its full-protocol confirmation does.

Two latency sources, both deterministic:

- a ``PlanContext`` whose ``screen`` and ``confirm`` are two functions of the plan (the contract's
  own injection point), built to disagree on one plan: the walk and dp-depth's bisection must
  step past the plan the screen accepts and the confirmation rejects;
- the cost-model profile cpu-costmodel, wired by ``plan_context`` to the real harness, for whole
  cells: the record's final latency is the confirmation (no second full-protocol measurement),
  ``screened_ms`` is the chosen plan's screen and ``budget_met`` compares the final median with
  the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset
from torchvision.models import MobileNetV2

import suite.run.cell as cell_module
from methods.dp_depth.method import bisect_t0
from suite.core.budget import Budget
from suite.core.method import Infeasible, MethodResult, PlanContext, walk_ranking
from suite.core.plan import Plan
from suite.core.trace import TracedModel, trace
from suite.measure.harness import LatencyResult, summarize
from suite.measure.profiles import load_profile
from suite.run.cell import plan_context, run_cell
from suite.run.data import load_data
from suite.run.train import FinetuneRecipe
from tests.conftest import randomize_batchnorm

SHORT_MBV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s: L = 14
RESOLUTION = 32


@pytest.fixture(scope="module")
def traced() -> TracedModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MobileNetV2(num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2)
        return trace(randomize_batchnorm(model), RESOLUTION, "mbv2-short")


@pytest.fixture(scope="module")
def profile():
    return load_profile("cpu-costmodel")


@pytest.fixture(scope="module")
def data():
    digits = load_data("digits", resolution=RESOLUTION)
    return replace(
        digits,
        train=Subset(digits.train, range(64)),
        holdout=Subset(digits.holdout, range(16)),
        test=Subset(digits.test, range(32)),
    )


def latency(ms: float) -> LatencyResult:
    """A latency result whose every sample is ``ms``."""
    samples = np.full(4, ms)
    return LatencyResult(
        **vars(summarize([samples])),
        samples=samples,
        stable=True,
        attempts=1,
        environment={},
        profile_hash="0" * 16,
    )


def disagreeing_context(
    traced: TracedModel,
    profile,
    screen_ms: Callable[[Plan], float],
    confirm_ms: Callable[[Plan], float],
) -> PlanContext:
    """A context that times a deploy network by its plan: ``screen_ms`` and ``confirm_ms``."""

    def timed(of_plan: Callable[[Plan], float]) -> Callable[[nn.Module], LatencyResult]:
        return lambda deploy: latency(of_plan(deploy.plan))

    def no_tables(*_):
        raise AssertionError("the walk needs no latency table")

    return PlanContext(
        traced=traced,
        profile=profile,
        data=None,  # planning by a given ranking reads no data
        recipe=FinetuneRecipe(steps=1),
        screen=timed(screen_ms),
        tables=no_tables,
        base_latency=lambda: confirm_ms(Plan.original(traced.chain)),  # the full protocol's
        confirm=timed(confirm_ms),
    )


def removed(traced: TracedModel, plan: Plan) -> int:
    return len(traced.chain.original_activations - plan.activations)


def without(traced: TracedModel, count: int) -> Plan:
    """The original plan without its first ``count`` activations."""
    dropped = sorted(traced.chain.original_activations)[:count]
    original = Plan.original(traced.chain)
    return replace(original, activations=original.activations - set(dropped))


# ---- the ranking walk ------------------------------------------------------------------------


def test_the_walk_steps_past_a_plan_that_screens_within_but_does_not_confirm(traced, profile):
    """Screen: 10 − k ms with k activations removed; the confirmation adds 1 ms at k = 3 only.
    At 7.5 ms, k = 3 screens within (7) but confirms over (8): the walk returns k = 4."""
    ctx = disagreeing_context(
        traced,
        profile,
        screen_ms=lambda plan: 10.0 - removed(traced, plan),
        confirm_ms=lambda plan: 10.0 - removed(traced, plan) + (removed(traced, plan) == 3),
    )
    ranking = sorted(traced.chain.original_activations)
    ctx.begin_search()

    plan, prefix = walk_ranking(
        ranking,
        lambda some: without(traced, len(some)),
        ctx,
        Budget(kind="ms", value=7.5),
        "test walk",
    )

    assert len(prefix) == 4 and removed(traced, plan) == 4
    assert ctx.screened(plan).median_ms == 6.0 and ctx.confirmation(plan).median_ms == 6.0
    assert ctx.confirmation(without(traced, 3)).median_ms == 8.0
    assert ctx.latency_measurements == 5 + 2  # screens of k = 0..4, confirmations of k = 3, 4


def test_a_walk_whose_plans_never_confirm_is_infeasible_naming_both_numbers(traced, profile):
    ctx = disagreeing_context(
        traced,
        profile,
        screen_ms=lambda plan: 10.0 - removed(traced, plan),
        confirm_ms=lambda plan: 100.0,
    )
    ranking = sorted(traced.chain.original_activations)[:5]

    with pytest.raises(Infeasible) as raised:
        walk_ranking(
            ranking, lambda some: without(traced, len(some)), ctx, Budget(kind="ms", value=7.5), "w"
        )

    message = str(raised.value)
    assert "3 plan(s) screened within the budget 7.5 ms" in message  # k = 3, 4, 5
    assert "none confirmed under the full protocol" in message
    assert "fastest confirmed 100 ms (screened 7 ms)" in message


# ---- dp-depth's T0 bisection -----------------------------------------------------------------


def test_the_bisection_steps_down_a_unit_until_a_plan_confirms(traced, profile):
    """Unit B keeps B activations (screen: B + 1 ms); B = 5 is the boundary of a 6.5 ms target,
    and its confirmation misses (7 ms): the search steps down to B = 4."""
    activations = sorted(traced.chain.original_activations)

    def plan_at_t0(t0: float) -> Plan:
        kept = activations[: int(t0)]  # prec 1: unit B solved at T0 = B + 0.5
        return replace(Plan.original(traced.chain), activations=frozenset(kept), meta={"T0": t0})

    def kept(plan: Plan) -> float:
        return len(plan.activations) + 1.0

    ctx = disagreeing_context(
        traced,
        profile,
        screen_ms=kept,
        confirm_ms=lambda plan: kept(plan) + (len(plan.activations) == 5),
    )

    plan = bisect_t0(ctx, plan_at_t0, (0, len(activations)), 1.0, 6.5, what="test fastest")

    assert len(plan.activations) == 4 and plan.meta["T0"] == 4.5
    assert plan.meta["screened_ms"] == 5.0 and plan.meta["confirmed_ms"] == 5.0
    assert plan.meta["T0_confirmations"] == [[4.5, 5.0], [5.5, 7.0]]
    assert [5.5, 6.0] in plan.meta["T0_search"] and [6.5, 7.0] in plan.meta["T0_search"]

    never = disagreeing_context(traced, profile, screen_ms=kept, confirm_ms=lambda p: 2.0)
    with pytest.raises(Infeasible, match=r"none confirmed .* fastest confirmed 2 ms \(screened 1"):
        bisect_t0(never, plan_at_t0, (0, len(activations)), 1.0, 1.5, what="test fastest")


# ---- whole cells on the cost model -----------------------------------------------------------


@pytest.fixture
def full_protocol_measurements(monkeypatch, profile) -> list[str]:
    """Every full-protocol measurement a cell makes through the harness, by the network's kind
    (the real harness is called; this only counts)."""
    made: list[str] = []
    real = cell_module.measure

    def counting(network, measured_profile, input_shape=None, protocol=None):
        if protocol is not measured_profile.table_protocol:  # a screen passes that object
            made.append(type(network).__name__)
        return real(network, measured_profile, input_shape, protocol=protocol)

    monkeypatch.setattr(cell_module, "measure", counting)
    return made


def cell_context(traced, profile, data) -> PlanContext:
    return plan_context(traced, profile, data, FinetuneRecipe(steps=2, batch_size=16))


def test_a_measured_budget_cell_reuses_its_confirmation_as_the_final_latency(
    traced, profile, data, full_protocol_measurements
):
    ctx = cell_context(traced, profile, data)
    budget = Budget(kind="fraction", value=0.9)

    outcome = run_cell(ctx, "layerprune", {"batches": 2}, budget)

    assert outcome.status == "ok", outcome.reason
    fields = outcome.fields
    assert full_protocol_measurements == ["DeployNetwork"]  # the confirmation, nothing after it
    assert fields["latency_ms_median"] == ctx.confirmation(outcome.plan).median_ms
    assert fields["screened_ms"] == ctx.screened(outcome.plan).median_ms
    assert fields["budget_met"] is True
    assert fields["latency_ms_median"] <= ctx.target_ms(budget)


def test_a_cell_without_a_confirmation_is_measured_once(
    traced, profile, data, full_protocol_measurements
):
    ctx = cell_context(traced, profile, data)

    outcome = run_cell(ctx, "original", None, Budget(kind="fraction", value=1.0))

    assert outcome.status == "ok", outcome.reason
    assert ctx.confirmation(outcome.plan) is None
    assert full_protocol_measurements == ["DeployNetwork"]  # the final measurement
    assert outcome.fields["budget_met"] is None  # the original network ignores its budget
    assert outcome.fields["screened_ms"] is None


def test_budget_met_compares_the_final_median_with_the_target(traced, profile):
    ctx = disagreeing_context(traced, profile, lambda plan: 2.0, lambda plan: 2.0)
    compressed = MethodResult(Plan.original(traced.chain))
    reference = MethodResult(Plan.original(traced.chain), meta={"budget_ignored": True})

    def verdict(budget: Budget, result: MethodResult = compressed) -> bool | None:
        return cell_module.budget_met(ctx, budget, result, latency(2.0))

    assert verdict(Budget(kind="ms", value=2.0)) is True
    assert verdict(Budget(kind="ms", value=1.99)) is False
    assert verdict(Budget(kind="fraction", value=0.99)) is False  # of the base network's 2 ms
    assert verdict(Budget(kind="table", value=5.0)) is None
    assert verdict(Budget(kind="fraction", value=1.0), reference) is None
