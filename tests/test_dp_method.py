"""The dp-depth method end to end (tables -> solver -> plan) and the ``plan``/``compress`` commands.

Latencies come from the cost-model profile cpu-costmodel (deterministic, so a budget decision is
the same on a busy machine as on a quiet one), or from the upstream RTX 2080 Ti table through the
replay profile; importance tables are real smoke tables on digits, except for
the full MobileNetV2-1.0, where a seeded synthetic table stands in (the solver's output structure
does not depend on the values).
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import typer
from torch.utils.data import Subset
from torchvision.models import MobileNetV2
from typer.testing import CliRunner

from methods.dp_depth.importance import importance_entries, importance_table, normalise
from methods.dp_depth.method import (
    DpDepthConfig,
    Tables,
    knapsack_precision,
    measure_importance,
    plan_at,
    plan_dp_depth,
)
from methods.dp_depth.solver import solve
from suite.cache import LATENCY_TABLES
from suite.cli import methods as cli_methods
from suite.core.budget import Budget
from suite.core.method import Infeasible, PlanContext
from suite.core.models import build_model
from suite.core.plan import Plan
from suite.core.realize import deploy_network, trainable_network
from suite.core.registry import get_method
from suite.core.trace import trace, trace_model
from suite.errors import DepthbenchError
from suite.measure.harness import measure
from suite.measure.profiles import PROJECT_PROFILE_DIR, load_profile
from suite.measure.tables import TableCache, build_table
from suite.run.cell import plan_context
from suite.run.data import load_data
from suite.run.train import FinetuneRecipe
from tests.conftest import randomize_batchnorm

SHORT_MBV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s
SMOKE = DpDepthConfig(importance_fidelity="smoke")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dp-method")


@pytest.fixture(scope="module")
def profile_path() -> Path:
    """The cost model, at batch 1 and the model's own resolution, as cpu-onnxruntime runs."""
    return PROJECT_PROFILE_DIR / "cpu-costmodel.yaml"


@pytest.fixture(scope="module")
def data():
    digits = load_data("digits", resolution=32)
    return replace(digits, holdout=Subset(digits.holdout, range(16)))


@pytest.fixture(scope="module")
def ctx(workdir, profile_path, data) -> PlanContext:
    """A short real MobileNetV2 (L = 14) under the test profile, caches in the module's tmp dir."""
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2)
    return plan_context(
        trace(randomize_batchnorm(model), 32, "mbv2-short"),
        load_profile(profile_path),
        data,
        FinetuneRecipe(steps=1),
        fidelity="smoke",
        cache_dir=workdir,
    )


def test_registered_as_dp_depth_with_the_alias_kim2023():
    spec = get_method("kim2023")
    assert spec.name == "dp-depth" and spec.plan is plan_dp_depth
    assert spec.make_config().prec is None and spec.make_config().alpha == 1.6
    with pytest.raises(DepthbenchError, match="invalid config"):
        spec.make_config({"precision": 20})


def test_a_table_budget_plan_equals_solve_on_the_same_tables(ctx, workdir):
    chain = ctx.chain
    latency = build_table(chain, ctx.profile, cache=TableCache(workdir / LATENCY_TABLES))
    singles = sum(latency[(p - 1, p)] for p in range(1, chain.L + 1))
    fastest = sum(latency[segment] for segment in [(0, 5), (5, 11), (11, 14)])  # all merged
    t0 = (singles + fastest) / 2
    result = plan_dp_depth(ctx, Budget(kind="table", value=t0), SMOKE)
    entries = importance_entries(chain.segments("upstream"), chain, True)
    importance = importance_table(
        ctx.traced, ctx.data, entries, SMOKE.importance_recipe, "smoke", workdir / "importance"
    )
    assert importance.cached == len(entries)  # plan_dp_depth stored every entry where we look
    h = importance.top1_delta
    h_singles = [value for (i, j, _, _), value in h.items() if j == i + 1]
    normalised = {
        entry: value - 1.6 * sum(h_singles) / len(h_singles) for entry, value in h.items()
    }
    prec = max(20, 673 / singles)  # this CPU table is far faster than upstream's 33.67 ms
    expected = solve(
        chain.L,
        set(latency.latency_ms),
        latency.latency_ms,
        normalised,
        t0,
        prec,
        chain.block_ends,
    )
    assert (result.plan.activations, result.plan.boundaries) == (
        expected.activations,
        expected.boundaries,
    )
    assert result.plan.meta == {
        "T0": t0,
        "prec": pytest.approx(prec),
        "objective": pytest.approx(expected.objective),
        "table_latency": pytest.approx(expected.table_latency),
        "discretized_latency": expected.discretized_latency,
        "importance_fidelity": "smoke",
    }
    result.plan.validate(chain)


def latency_of(ctx: PlanContext, plan: Plan) -> float:
    """The plan's deploy network under the cost model, built and computed afresh (not memoised)."""
    deploy = deploy_network(trainable_network(ctx.traced, plan))
    return measure(deploy, ctx.profile, (3, 32, 32)).median_ms


def test_a_measured_budget_stops_at_the_least_compressed_plan_within_it(ctx):
    """The search's answer is within the target, and the plan one knapsack unit less compressed
    (T0 + 1/prec) is over it: the bisection stopped at the boundary, not anywhere below it."""
    budget = Budget(kind="fraction", value=0.75)
    plan = plan_dp_depth(ctx, budget, SMOKE).plan
    target = 0.75 * latency_of(ctx, Plan.original(ctx.chain))
    assert plan.meta["target_ms"] == pytest.approx(target, rel=1e-12)
    assert plan.boundaries != Plan.original(ctx.chain).boundaries  # it had to merge something

    assert latency_of(ctx, plan) <= target
    prec = plan.meta["prec"]
    latency = ctx.latency_table().latency_ms
    importance = normalise(measure_importance(ctx, SMOKE).top1_delta, SMOKE.alpha)
    tables = Tables(ctx.chain, set(latency), latency, importance, "smoke")
    less_compressed = plan_at(tables, plan.meta["T0"] + 1 / prec, prec)
    assert latency_of(ctx, less_compressed) > target
    above = [(t0, ms) for t0, ms in plan.meta["T0_search"] if t0 > plan.meta["T0"]]
    assert min(above) == (
        pytest.approx(plan.meta["T0"] + 1 / prec),
        pytest.approx(latency_of(ctx, less_compressed)),
    )


def test_an_impossible_budget_is_infeasible_with_the_reason(ctx):
    with pytest.raises(Infeasible, match="no plan meets budget T0=0.001"):
        plan_dp_depth(ctx, Budget(kind="table", value=0.001), SMOKE)
    with pytest.raises(Infeasible, match="even the fastest fusion .* above the budget 1e-06 ms"):
        plan_dp_depth(ctx, Budget(kind="ms", value=1e-6), SMOKE)


def test_a_measured_budget_under_a_replay_profile_is_refused(ctx):
    replay = replace(ctx, profile=load_profile("rtx2080ti-replay-mbv2-1.0"))
    with pytest.raises(DepthbenchError, match="give a 'table' budget"):
        plan_dp_depth(replay, Budget(kind="fraction", value=0.8), SMOKE)


def test_the_replayed_mbv2_1_0_plan_at_t0_25_has_only_upstream_valid_segments():
    traced = trace_model("mobilenet_v2", width=1.0, num_classes=10, resolution=224)
    chain = traced.chain
    latency = build_table(chain, load_profile("rtx2080ti-replay-mbv2-1.0")).latency_ms
    rng = random.Random(0)
    importance = {
        entry: 0.5 - 0.3 * (entry[1] - entry[0]) + rng.gauss(0, 0.2)
        for entry in importance_entries(chain.segments("upstream"), chain, True)
    }
    assert len(importance) == 315
    tables = Tables(chain, set(latency), latency, importance, "smoke")
    assert knapsack_precision(tables) == 20  # upstream's own table keeps upstream's precision
    plan = plan_at(tables, 25.0, 20)
    plan.validate(chain)
    groups = plan.groups(chain)
    assert all(chain.is_valid_segment(i, j, "upstream") for i, j in groups)
    assert any(j - i > 1 for i, j in groups)
    assert plan.activations <= plan.boundaries
    assert plan.meta["table_latency"] <= 25.0 + len(groups) / 20  # per-step flooring slack
    assert plan.meta["T0"] == 25.0


@pytest.fixture(scope="module")
def cli(workdir, monkeypatch_module):
    """The plan/compress commands on their own app, caching under the module's tmp dir."""
    monkeypatch_module.setenv("XDG_CACHE_HOME", str(workdir / "cache"))
    app = typer.Typer()
    cli_methods.register(app)
    torch.manual_seed(0)
    checkpoint = workdir / "resnet18.pt"
    torch.save(randomize_batchnorm(build_model("resnet18", 10)).state_dict(), checkpoint)

    def invoke(*arguments: str):
        options = ["--checkpoint", str(checkpoint), "--resolution", "16"]  # 16 px: a fast test
        return CliRunner().invoke(app, [*arguments, *options])

    return invoke


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_cli_plan_writes_the_plan_and_prints_a_and_s(cli, profile_path, workdir):
    out = workdir / "plan.json"
    common = ["--profile", str(profile_path), "--fidelity", "smoke"]
    result = cli(
        "plan", "dp-depth", "resnet18", *common, "--budget", "1000", "--budget-kind", "table"
    )
    assert result.exit_code == 0, result.output
    result = cli(
        "plan", "kim2023", "resnet18", *common, "--budget", "1000", "--budget-kind", "table",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = Plan.load(out)
    assert plan.method == "dp-depth" and plan.meta["T0"] == 1000
    assert "A (activations)" in result.output and "S (merge boundaries)" in result.output
    assert f"{plan.meta['table_latency']:.4g}" in result.output
    assert json.loads(out.read_text())["boundaries"] == sorted(plan.boundaries)


def test_cli_plan_refuses_an_impossible_budget_with_exit_code_1(cli, profile_path):
    result = cli(
        "plan", "dp-depth", "resnet18", "--profile", str(profile_path), "--fidelity", "smoke",
        "--budget", "0.01", "--budget-kind", "table",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "no plan meets budget T0=0.01" in result.output


def test_cli_compress_runs_one_cell_and_prints_its_result(cli, profile_path):
    result = cli(
        "compress", "dp-depth", "resnet18", "--profile", str(profile_path), "--fidelity", "smoke",
        "--budget", "1000", "--budget-kind", "table", "--steps", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for row in ("latency median (ms)", "top-1 (%)", "MACs", "convolutions"):
        assert row in result.output


@pytest.mark.slow
def test_cli_plan_for_the_replayed_mbv2_1_0_at_t0_25(workdir, monkeypatch_module):
    """The README example: upstream latencies, a smoke importance table on digits (minutes)."""
    monkeypatch_module.setenv("XDG_CACHE_HOME", str(workdir / "cache"))
    app = typer.Typer()
    cli_methods.register(app)
    checkpoint = workdir / "mbv2.pt"
    torch.save(build_model("mobilenet_v2", 10).state_dict(), checkpoint)
    out = workdir / "replayed.json"
    result = CliRunner().invoke(
        app,
        [
            "plan", "dp-depth", "mobilenet_v2", "--profile", "rtx2080ti-replay-mbv2-1.0",
            "--budget", "25", "--budget-kind", "table", "--fidelity", "smoke",
            "--checkpoint", str(checkpoint), "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    chain = trace_model("mobilenet_v2", num_classes=10).chain
    assert all(chain.is_valid_segment(i, j, "upstream") for i, j in Plan.load(out).groups(chain))
