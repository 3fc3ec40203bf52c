"""One experiment cell, in the order of the flow (docs/architecture.md):

    plan -> realize -> fine-tune (the shared recipe) -> merge -> check -> measure -> evaluate

``run_cell`` returns the record fields of the cell; the runner adds the provenance (run id, hashes,
environment, code version) and stores it. A method that cannot meet the budget raises
``Infeasible`` and the cell becomes an infeasible record with the reason.

The final latency is measured under the profile's full protocol. Where the method confirmed its
plan under that protocol while meeting the budget (``PlanContext.confirm_plan``), that
confirmation *is* the final measurement: the deploy network has the same layers (fine-tuning
changes weights, not the architecture, and latency does not depend on weight values), so measuring
it again would double the cost, and an independent second measurement would land over a target the
plan was accepted under about half the time. Otherwise (``table`` budgets, ``original``, a plan
accepted without confirmation) the deploy network is measured. ``budget_met`` compares that final
median with the target.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from suite.cache import LATENCY_TABLES
from suite.core.budget import Budget, Fidelity
from suite.core.chain import Chain, MergeRule
from suite.core.items import MapItems, serial_map
from suite.core.method import Infeasible, MethodResult, PlanContext, Progress
from suite.core.plan import Plan
from suite.core.realize import DeployNetwork, deploy_network, trainable_network
from suite.core.registry import get_method
from suite.core.trace import TracedModel
from suite.errors import DepthbenchError
from suite.measure.harness import LatencyResult, measure
from suite.measure.profiles import Profile
from suite.measure.tables import LatencyTable, TableCache, build_table
from suite.run.baseline import measure_base
from suite.run.data import DataSplits
from suite.run.stats import pack_correct
from suite.run.train import FinetuneRecipe, evaluate, finetune, finetune_steps

# The deploy network must compute what the fine-tuned network computes; fp32 rounding of merged
# kernels stays well inside this (see tests/test_merge.py for the measured worst case).
MERGE_TOLERANCE = 1e-4


def plan_context(
    traced: TracedModel,
    profile: Profile,
    data: DataSplits,
    recipe: FinetuneRecipe,
    *,
    fidelity: Fidelity = "full",
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    base_latency_ms: float | None = None,
    map_items: MapItems = serial_map,
) -> PlanContext:
    """A method's planning context, its measuring wired to the harness under ``profile``.

    Candidates are screened under the profile's light ``table_protocol`` and confirmed under its
    full ``protocol``; latency tables are cached in ``cache_dir`` (none: not cached, as under a
    replay profile). ``base_latency_ms`` is the run's stored full-protocol measurement of the base
    network (``suite.run.baseline``); without one (a single cell, outside a run) the base network
    is measured under the full protocol the first time a budget needs it, once for this context. ``map_items`` runs
    the work items of the method's tables (importance entries, latency segments;
    ``suite.core.items``): the executor's (``Executor.item_map``), or here one after another.
    """
    shape = (3, traced.chain.resolution, traced.chain.resolution)
    cache = TableCache(cache_dir / LATENCY_TABLES) if cache_dir is not None else None

    @functools.cache
    def base_latency() -> float:
        if base_latency_ms is not None:
            return base_latency_ms
        return measure_base(traced, profile).median_ms

    def screen(network: nn.Module) -> LatencyResult:
        return measure(network, profile, shape, protocol=profile.table_protocol)

    def confirm(network: nn.Module) -> LatencyResult:
        return measure(network, profile, shape, protocol=profile.protocol)

    def tables(chain: Chain, rule: MergeRule, progress: Callable[[int, int], None]) -> LatencyTable:
        return build_table(chain, profile, rule, cache, progress, map_items)

    return PlanContext(
        traced=traced,
        profile=profile,
        data=data,
        recipe=recipe,
        screen=screen,
        tables=tables,
        base_latency=base_latency,
        confirm=confirm,
        fidelity=fidelity,
        seed=seed,
        cache_dir=cache_dir,
        progress=progress,
        map_items=map_items,
    )


@dataclass
class CellOutcome:
    status: str  # "ok" or "infeasible"
    reason: str | None = None
    plan: Plan | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    deploy: DeployNetwork | None = None


def run_cell(
    ctx: PlanContext, method: str, method_config: dict | None, budget: Budget
) -> CellOutcome:
    """Plan, fine-tune, merge, measure and evaluate one (method, budget) cell.

    Fine-tuning distils from the base network when the shared recipe says so, for every method.
    """
    spec = get_method(method)
    unsupported = spec.supports(ctx.chain)
    if unsupported:
        return CellOutcome(
            "infeasible", f"{spec.name} does not apply to {ctx.chain.name}: {unsupported}"
        )
    ctx.begin_search()
    started = time.perf_counter()
    try:
        ctx.report("plan", 0, 1)
        result = spec.plan(ctx, budget, spec.make_config(method_config))
    except Infeasible as err:
        search = {
            "search_wall_s": time.perf_counter() - started,
            "latency_measurements": ctx.latency_measurements,
        }
        return CellOutcome("infeasible", str(err), fields=search)
    search_wall_s = time.perf_counter() - started
    latency_measurements = ctx.latency_measurements
    plan = result.plan
    trainable = result.trainable or trainable_network(ctx.traced, plan)
    teacher = ctx.traced.model if ctx.recipe.kd_weight > 0 else None
    finetune(
        trainable,
        ctx.data,
        remaining_recipe(ctx, result.meta.get("recipe_steps_used", 0)),
        teacher=teacher,
        progress=lambda d, t: ctx.report("fine-tune", d, t),
    )
    deploy = deploy_network(trainable.to("cpu", torch.float32))  # merging: on the CPU, in fp32
    merge_error = check_merge(trainable, deploy, ctx.chain.resolution)
    ctx.report("measure", 0, 1)
    latency = final_latency(ctx, plan, deploy)
    ctx.report("evaluate", 0, 1)
    accuracy = evaluate(deploy, ctx.data.test, placement=ctx.recipe.placement)
    screened = ctx.screened(plan)
    fields = {
        **latency.as_record_fields(),
        "environment": latency.environment,
        "top1": accuracy.top1,
        "top5": accuracy.top5,
        "loss": accuracy.loss,
        "test_images": len(accuracy.correct),
        "test_correct": pack_correct(accuracy.correct),
        **model_stats(deploy, ctx.chain.resolution),
        "activations": len(plan.activations),
        "screened_ms": screened.median_ms if screened is not None else None,
        "budget_met": budget_met(ctx, budget, result, latency),
        "search_wall_s": search_wall_s,
        "search_steps": result.meta.get("search_steps", 0),
        "finetune_steps": finetune_steps(ctx.recipe, ctx.data.train),
        "latency_measurements": latency_measurements,
        "plan": {
            **plan.to_json(),
            "meta": {**plan.meta, **result.meta, "merge_error": merge_error},
        },
    }
    return CellOutcome("ok", None, plan, fields, deploy)


def final_latency(ctx: PlanContext, plan: Plan, deploy: DeployNetwork) -> LatencyResult:
    """The cell's latency under the full protocol: the method's confirmation of ``plan`` when it
    made one and the confirmed network has ``deploy``'s layers, else a new measurement."""
    confirmed = ctx.confirmation(plan)
    if confirmed is not None and same_layers(deploy, ctx.traced, plan):
        return confirmed
    return measure(deploy, ctx.profile, input_shape=(3, ctx.chain.resolution, ctx.chain.resolution))


def same_layers(deploy: nn.Module, traced: TracedModel, plan: Plan) -> bool:
    """Whether ``deploy`` has the layers of the plan's deploy network built from the base weights
    (the one a confirmation measured): the same modules, shapes and settings, in order."""
    return repr(deploy) == repr(deploy_network(trainable_network(traced, plan)))


def budget_met(
    ctx: PlanContext, budget: Budget, result: MethodResult, latency: LatencyResult
) -> bool | None:
    """Whether the final median is within the budget's target; None where there is no target in
    ms (a ``table`` budget) or the method ignores the budget (``original``)."""
    if budget.kind == "table" or result.meta.get("budget_ignored"):
        return None
    return latency.median_ms <= ctx.target_ms(budget)


def remaining_recipe(ctx: PlanContext, used: int) -> FinetuneRecipe:
    """The shared recipe less the ``used`` steps a method already spent of it on its trainable
    network (``meta["recipe_steps_used"]``, DeepRebirth's compute-matched layer-wise stage), so
    that every method trains for the same total number of steps."""
    if not used:
        return ctx.recipe
    steps = finetune_steps(ctx.recipe, ctx.data.train) - used
    return ctx.recipe.model_copy(update={"epochs": None, "steps": steps})


@torch.no_grad()
def check_merge(trainable: nn.Module, deploy: nn.Module, resolution: int, seed: int = 0) -> float:
    """Largest relative difference between the two networks' logits on random inputs."""
    images = torch.randn(
        4, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed)
    )
    expected, merged = trainable.eval()(images), deploy.eval()(images)
    error = ((merged - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
    if error > MERGE_TOLERANCE:
        raise DepthbenchError(
            f"the merged network differs from the trained one by {error:.2e} (relative), above "
            f"{MERGE_TOLERANCE:.0e}; this is a bug in merging, please report it with the plan"
        )
    return error


@torch.no_grad()
def model_stats(network: nn.Module, resolution: int) -> dict[str, int]:
    """Parameters, multiply-accumulates for one image, and the number of convolutions."""
    counter = FlopCounterMode(display=False)
    with counter:
        network.eval()(torch.zeros(1, 3, resolution, resolution))
    return {
        "params": sum(p.numel() for p in network.parameters()),
        "macs": counter.get_total_flops() // 2,
        "depth": sum(isinstance(m, nn.Conv2d) for m in network.modules()),
    }
