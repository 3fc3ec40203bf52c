"""The layermerge method end to end (options -> tables -> DP -> plan) on a short real MobileNetV2.

Latencies are real measurements of every option's merged conv under a short torch-CPU test
profile; importance is a real smoke table on digits (scored right after the change).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset
from torchvision.models import MobileNetV2, vgg11_bn

from methods.layermerge.importance import l1_norms
from methods.layermerge.importance import measure as measure_importance
from methods.layermerge.method import (
    LayerMergeConfig,
    Tables,
    importance_cache_dir,
    option_latencies,
    plan_at,
    plan_layermerge,
)
from methods.layermerge.options import table_options
from methods.layermerge.solver import Entry, solve
from suite.core.budget import Budget
from suite.core.method import Infeasible, PlanContext
from suite.core.registry import get_method
from suite.core.trace import trace
from suite.errors import DepthbenchError
from suite.measure.profiles import load_profile
from suite.run.cell import plan_context
from suite.run.data import load_data
from suite.run.train import FinetuneRecipe
from tests.conftest import randomize_batchnorm

PROFILES = Path(__file__).parent / "data" / "profiles"
SHORT_MBV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s
SMOKE = LayerMergeConfig(importance_fidelity="smoke")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("layermerge-method")


@pytest.fixture(scope="module")
def ctx(workdir) -> PlanContext:
    """A short real MobileNetV2 (L = 14) under the deterministic cost-model profile: a budget
    decision never depends on the machine's load."""
    digits = load_data("digits", resolution=32)
    data = replace(digits, holdout=Subset(digits.holdout, range(16)))
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2)
    return plan_context(
        trace(randomize_batchnorm(model), 32, "mbv2-short"),
        load_profile("cpu-costmodel"),
        data,
        FinetuneRecipe(steps=1),
        fidelity="smoke",
        cache_dir=workdir,
    )


def test_registered_as_layermerge_with_the_alias_kim2024_and_not_on_vgg():
    spec = get_method("kim2024")
    assert spec.name == "layermerge" and spec.plan is plan_layermerge
    assert spec.make_config().prec is None and spec.make_config().official is False
    assert "no residual blocks" in spec.supports(trace(vgg11_bn(num_classes=10), 32).chain)
    with pytest.raises(DepthbenchError, match="invalid config"):
        spec.make_config({"precision": 10})


def test_a_table_budget_plan_equals_solve_on_the_same_tables(ctx, workdir):
    chain = ctx.chain
    options = table_options(chain, l1_norms(ctx.traced))
    t0 = 0.8 * math.fsum(
        ms
        for key, ms in option_latencies(ctx, options).items()
        if key[1] - key[0] == 1  # the original network in table units
    )
    result = plan_layermerge(ctx, Budget(kind="table", value=t0), SMOKE)
    # the same tables, read back from the caches the method filled
    latency = option_latencies(ctx, options)
    scores = measure_importance(ctx.traced, ctx.data, options, "smoke", importance_cache_dir(ctx))
    assert scores.cached == len(options) == len(latency)
    entries = [
        Entry(o.start, o.end, o.key[2:], latency[o.key], math.exp(scores.top1_delta[o.key] / 100))
        for o in options
    ]
    singles = math.fsum(latency[o.key] for o in options if o.end - o.start == 1)
    prec = max(10, 405 / singles)
    expected = solve(chain.L, entries, t0, prec)
    assert result.plan.boundaries == expected.boundaries
    assert result.plan.meta["objective"] == expected.objective
    assert result.plan.meta["discretized_latency"] == expected.discretized_latency
    assert result.plan.meta["table_latency"] <= t0 + len(expected.entries) / prec
    result.plan.validate(chain)


def test_a_measured_budget_is_met_by_the_measured_latency(ctx):
    budget = Budget(kind="fraction", value=0.8)
    plan = plan_layermerge(ctx, budget, SMOKE).plan
    assert plan.meta["screened_ms"] == ctx.measure_plan(plan).median_ms <= ctx.target_ms(budget)
    assert plan.meta["confirmed_ms"] == ctx.confirm_plan(plan).median_ms <= ctx.target_ms(budget)
    assert plan.method == "layermerge" and plan.meta["T0_search"]


def test_an_impossible_budget_is_infeasible_with_the_reason(ctx):
    with pytest.raises(Infeasible, match="no plan meets budget T0=1e-05"):
        plan_layermerge(ctx, Budget(kind="table", value=1e-5), SMOKE)
    with pytest.raises(Infeasible, match="even the fastest plan .* above the budget 1e-06 ms"):
        plan_layermerge(ctx, Budget(kind="ms", value=1e-6), SMOKE)


def test_a_replay_profile_is_refused_naming_the_missing_options(ctx):
    replay = replace(ctx, profile=load_profile("rtx2080ti-replay-mbv2-1.0"))
    with pytest.raises(DepthbenchError, match="keep-all options only"):
        plan_layermerge(replay, Budget(kind="table", value=20), SMOKE)


def test_plan_at_carries_the_pruned_units_into_d():
    """A synthetic table in which pruning pays: the DP's D is the options' pruned units."""
    model = MobileNetV2(num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2)
    traced = trace(model, 32, "mbv2-short")
    options = table_options(traced.chain, l1_norms(traced))
    latency = {o.key: 0.1 * o.kernel + 0.2 * len(o.kept) for o in options}
    importance = {o.key: float(o.end - o.start) for o in options}  # Σ = L: the least time wins
    tables = Tables(traced.chain, options, latency, importance, "smoke")
    plan = plan_at(tables, 100.0, 10)
    assert plan.deleted and plan.deleted <= {1, 7, 13}
    plan.validate(traced.chain)
