"""Every record carries its method's search cost, counted where the work happens.

- ``finetune_steps``: the steps ``finetune`` really takes (counted by its progress callback);
- ``latency_measurements``: the distinct plans a cell's search screened plus those it confirmed
  (counted against the calls the context's wired ``screen`` and ``confirm`` receive);
- ``search_steps``: from the method's metadata; dp-depth's is its importance entries (computed
  and cached) times the steps of one entry's fine-tune, 0 at smoke fidelity;
- ``search_wall_s``: the planning call's wall time;

and the report's results table shows them, averaged over seeds.

Latencies come from the cost-model profile cpu-costmodel (deterministic).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import Subset
from torchvision.models import MobileNetV2

from methods.dp_depth.importance import QUICK_STEPS, ImportanceTable
from methods.dp_depth.method import importance_cost
from suite.core.budget import Budget
from suite.core.trace import trace
from suite.measure.profiles import load_profile
from suite.provenance import config_hash
from suite.run.cell import plan_context, run_cell
from suite.run.data import load_data
from suite.run.report import results_table
from suite.run.store import CellRecord, records_frame
from suite.run.train import FinetuneRecipe, finetune, finetune_steps
from tests.conftest import randomize_batchnorm

SHORT_MBV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s: L = 14
RESOLUTION = 32
RECIPE = FinetuneRecipe(steps=3, batch_size=16)


@pytest.fixture(scope="module")
def data():
    digits = load_data("digits", resolution=RESOLUTION)
    return replace(
        digits,
        train=Subset(digits.train, range(70)),  # 4 full batches of 16 and a partial one
        holdout=Subset(digits.holdout, range(16)),
        test=Subset(digits.test, range(32)),
    )


@pytest.fixture
def counted_context(data, tmp_path):
    """A fresh cost-model context whose wired ``screen`` and ``confirm`` count their calls."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MobileNetV2(num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2)
    traced = trace(randomize_batchnorm(model), RESOLUTION, "mbv2-short")
    ctx = plan_context(traced, load_profile("cpu-costmodel"), data, RECIPE, cache_dir=tmp_path)
    calls = {"screen": 0, "confirm": 0}

    def counting(kind: str):
        wired = getattr(ctx, kind)

        def call(network: nn.Module):
            calls[kind] += 1
            return wired(network)

        return call

    ctx.screen, ctx.confirm = counting("screen"), counting("confirm")
    return ctx, calls


@pytest.mark.parametrize(
    "recipe",
    [FinetuneRecipe(steps=5, batch_size=16), FinetuneRecipe(epochs=1.5, batch_size=16)],
    ids=["steps", "epochs"],
)
def test_finetune_steps_are_the_steps_finetune_takes(data, recipe):
    taken: list[int] = []
    network = nn.Sequential(nn.Flatten(), nn.Linear(3 * RESOLUTION * RESOLUTION, 10))

    finetune(network, data, recipe, progress=lambda done, total: taken.append(done))

    assert finetune_steps(recipe, data.train) == len(taken)
    if recipe.epochs is not None:
        assert len(taken) == 6  # 1.5 epochs of 4 full batches (the partial one dropped)


def test_a_cell_records_its_search_cost(counted_context):
    ctx, calls = counted_context

    outcome = run_cell(ctx, "layerprune", {"batches": 2}, Budget(kind="fraction", value=0.85))

    assert outcome.status == "ok", outcome.reason
    fields = outcome.fields
    assert calls["screen"] >= 2 and calls["confirm"] == 1  # the base, candidates; the chosen plan
    assert fields["latency_measurements"] == calls["screen"] + calls["confirm"]
    assert fields["finetune_steps"] == RECIPE.steps
    assert fields["search_steps"] == outcome.plan.meta.get("search_steps", 0)
    assert fields["search_wall_s"] > 0


def test_a_cell_counts_what_its_search_asked_for_even_when_memoised(counted_context):
    """A second cell of the context finds its plans measured: it still counts them, and only its
    own (``begin_search`` starts each cell's count afresh)."""
    ctx, calls = counted_context
    tight, loose = Budget(kind="fraction", value=0.85), Budget(kind="fraction", value=0.99)
    first = run_cell(ctx, "layerprune", {"batches": 2}, tight).fields["latency_measurements"]
    measured = dict(calls)

    again = run_cell(ctx, "layerprune", {"batches": 2}, tight).fields["latency_measurements"]
    fewer = run_cell(ctx, "layerprune", {"batches": 2}, loose).fields["latency_measurements"]

    assert calls["screen"] == measured["screen"]  # nothing new was screened ...
    assert again == first  # ... and the repeat counts what its search needed
    assert fewer < first


def test_an_infeasible_cell_records_its_search_cost(counted_context):
    ctx, calls = counted_context

    outcome = run_cell(ctx, "layerprune", {"batches": 2}, Budget(kind="fraction", value=0.01))

    assert outcome.status == "infeasible"
    assert outcome.fields["latency_measurements"] == calls["screen"] + calls["confirm"] > 0
    assert outcome.fields["search_wall_s"] > 0


def test_dp_depth_search_steps_are_entries_times_steps_per_entry(data):
    recipe = FinetuneRecipe(epochs=1, batch_size=16)  # 4 steps on the 70 training images
    full = ImportanceTable({}, "full", computed=3, cached=2)
    quick = ImportanceTable({}, "quick", computed=3, cached=2)
    smoke = ImportanceTable({}, "smoke", computed=3, cached=2)

    assert importance_cost(full, recipe, data.train) == {
        "importance_computed": 3,
        "importance_cached": 2,
        "search_steps": (3 + 2) * 4,
    }
    assert importance_cost(quick, recipe, data.train)["search_steps"] == (3 + 2) * QUICK_STEPS
    assert importance_cost(smoke, recipe, data.train)["search_steps"] == 0


def test_a_dp_depth_cell_carries_its_importance_cost(counted_context):
    """At full fidelity with a one-step importance fine-tune: one search step per entry."""
    ctx, _ = counted_context
    config = {"importance_fidelity": "full", "importance_recipe": {"steps": 1, "batch_size": 16}}

    outcome = run_cell(ctx, "dp-depth", config, Budget(kind="fraction", value=0.9))

    assert outcome.status == "ok", outcome.reason
    meta = outcome.fields["plan"]["meta"]
    entries = meta["importance_computed"] + meta["importance_cached"]
    assert entries > 0
    assert outcome.fields["search_steps"] == meta["search_steps"] == entries


def test_a_context_reports_its_latency_table_progress(counted_context):
    """dp-depth's table is built through the context's ``tables``: minutes on a real profile, so
    it must show progress like every other step (to whatever ``progress`` the runner set)."""
    ctx, _ = counted_context
    steps = []
    ctx.progress = lambda what, done, total: steps.append((what, done, total))

    ctx.latency_table()

    assert steps[-1][0] == "latency table"
    assert steps[-1][1] == steps[-1][2] > 0


def stored(method: str, seed: int, **fields) -> CellRecord:
    return CellRecord(
        run_id="run",
        cell_hash=config_hash([method, seed])[:16],
        model="mobilenet_v2-0.5",
        dataset="digits",
        method=method,
        budget=Budget(kind="fraction", value=1.0 if method == "original" else 0.8),
        seed=seed,
        profile_name="cpu-costmodel",
        profile_hash="c" * 64,
        status="ok",
        fidelity="smoke",
        code_version="test",
        top1=90.0,
        latency_ms_median=1.0 if method == "original" else 0.8,
        **fields,
    )


def test_the_results_table_shows_the_search_cost_averaged_over_seeds():
    cost = {"finetune_steps": 100, "latency_measurements": 4}
    records = records_frame(
        [
            stored("original", 0),  # a record without the fields, as older runs stored
            stored("layerprune", 0, search_wall_s=1.0, search_steps=10, **cost),
            stored("layerprune", 1, search_wall_s=3.0, search_steps=30, **cost),
        ]
    )

    table = results_table(records).set_index("method")

    assert table.loc["layerprune", "search_wall_s"] == 2.0
    assert table.loc["layerprune", "search_steps"] == 20.0
    assert table.loc["layerprune", "finetune_steps"] == 100.0
    assert table.loc["layerprune", "latency_measurements"] == 4.0
    assert table.loc["original", ["search_wall_s", "search_steps"]].isna().all()
