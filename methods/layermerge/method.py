"""layermerge: Kim, El Halabi, Ji, Song, "LayerMerge: Neural Network Depth Compression through
Layer Pruning and Merging", ICML 2024 (arXiv 2406.12837); docs/methods/layermerge.md.

The algorithm box, as ``plan_layermerge`` runs it:

    input:  base network (a chain of L conv+BN units), latency budget, prec
    1. options   every valid segment (i, j] (upstream rule) and merged kernel option c, its kept
                 convs fixed by the L1 rule                               (options.py)
    2. tables    T(i, j, c)  latency of the option's merged conv at its real shape, under the
                             profile (shared harness and table cache)
                 I(i, j, c)  exp(Δ holdout top-1 / 100) of the network changed at (i, j] only
                                                                          (importance.py)
    3. DP        one knapsack over (position, ⌊prec·time⌋) with a max over options (solver.py)
    4. plan      S = segment ends; A = S's original activations plus the end of every segment of
                 two or more units; D = the units the chosen options prune

The budget T0 is in table units (Σ of entry latencies): a ``table`` budget is T0 itself, as
upstream. A measured budget (``ms`` or ``fraction``) is met by the deploy network's measured
latency: T0 is bisected over the knapsack's integer units as dp-depth does (``bisect_t0``), from
the fastest plan's Σ g to the original network's (the keep-all single-unit entries).

Replay profiles are refused: their upstream tables hold one row per segment, i.e. only the
keep-all options, and a DP over those alone is the 2023 method without its stage 1, not LayerMerge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from methods.dp_depth.method import bisect_t0, importance_cost, precision_for
from methods.layermerge.importance import CACHE_NAME, UPSTREAM_RECIPE, Key, importance, l1_norms
from methods.layermerge.importance import measure as measure_importance
from methods.layermerge.options import Option, table_options, unsupported
from methods.layermerge.solver import Entry, Solution, fastest_units, solve
from suite.cache import IMPORTANCE, LATENCY_TABLES, cache_root
from suite.core.budget import Budget, Fidelity
from suite.core.chain import Chain
from suite.core.method import Infeasible, MethodResult, PlanContext
from suite.core.plan import Plan
from suite.core.registry import register_method
from suite.errors import DepthbenchError
from suite.measure.tables import TableCache, measure_signatures, segment_signature
from suite.run.train import FinetuneRecipe

PAPER = (
    "Kim, El Halabi, Ji, Song, ICML 2024: LayerMerge: Neural Network Depth Compression through"
    " Layer Pruning and Merging"
)
UPSTREAM_PREC = 10  # knapsack units per table ms, every upstream run
MIN_BUDGET_UNITS = 405  # upstream MobileNetV2-1.0: T_orig ≈ 40.5 ms at prec 10


class LayerMergeConfig(BaseModel):
    """The method's knobs; defaults are upstream's (prec 10, the 1-epoch importance recipe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prec: float | None = Field(
        None, gt=0, description="knapsack units per table ms; None: 10, finer for fast tables"
    )
    importance_recipe: FinetuneRecipe = Field(
        UPSTREAM_RECIPE, description="the short fine-tune of each importance entry"
    )
    importance_fidelity: Fidelity | None = Field(
        None, description="fidelity of the importance table; None: the run's fidelity"
    )
    official: bool = Field(
        False,
        description="upstream's early abort when one position has no entry within the budget",
    )


@dataclass(frozen=True)
class Tables:
    """Steps 1-2: every option with its latency (ms) and importance, for one chain and profile."""

    chain: Chain
    options: list[Option]
    latency: dict[Key, float]
    importance: dict[Key, float]  # exp(Δ top-1 / 100)
    fidelity: Fidelity  # of the importance table

    def entries(self) -> list[Entry]:
        """The solver's input, joined by key (never by row order), in table order."""
        return [
            Entry(o.start, o.end, o.key[2:], self.latency[o.key], self.importance[o.key])
            for o in self.options
        ]

    def original_ms(self) -> float:
        """Σ T over the single-unit segments: the unchanged network in table units."""
        return math.fsum(self.latency[o.key] for o in self.options if o.end - o.start == 1)


@register_method(
    "layermerge", config=LayerMergeConfig, paper=PAPER, aliases=("kim2024",), supports=unsupported
)
def plan_layermerge(ctx: PlanContext, budget: Budget, config: LayerMergeConfig) -> MethodResult:
    """Options → tables → the DP at T0 (searched for a measured budget) → plan (A, S, D)."""
    reason = unsupported(ctx.chain)
    if reason:
        raise DepthbenchError(reason)
    if ctx.profile.is_replay:
        raise DepthbenchError(
            f"profile {ctx.profile.name!r} replays an upstream table with one row per segment (the"
            " keep-all options only), but LayerMerge needs the latency of every merged-kernel"
            " option; use a measuring profile (a 'table' budget is in its table units)"
        )
    # 1-2. options and tables (latency first: quick, and fails early on a profile that cannot run)
    options = table_options(ctx.chain, l1_norms(ctx.traced))
    latency = option_latencies(ctx, options)
    scores = measure_importance(
        ctx.traced,
        ctx.data,
        options,
        config.importance_fidelity or ctx.fidelity,
        importance_cache_dir(ctx),
        config.importance_recipe,
        progress=lambda done, total: ctx.report("importance table", done, total),
        map_items=ctx.map_items,
    )
    tables = Tables(ctx.chain, options, latency, importance(scores), scores.fidelity)
    # 3-4. the DP and the plan, at T0 = the budget or searched to meet it
    prec = config.prec or precision_for(tables.original_ms(), UPSTREAM_PREC, MIN_BUDGET_UNITS)
    if budget.kind == "table":
        plan = plan_at(tables, budget.value, prec, config.official)
    else:
        fastest = fastest_units(ctx.chain.L, tables.entries(), prec)
        plan = bisect_t0(
            ctx,
            lambda t0: plan_at(tables, t0, prec, config.official),
            (fastest, math.ceil(prec * tables.original_ms())),
            prec,
            ctx.target_ms(budget),
            what="layermerge: even the fastest plan",
        )
    return MethodResult(
        plan, meta=importance_cost(scores, config.importance_recipe, ctx.data.train)
    )


def option_latencies(ctx: PlanContext, options: list[Option]) -> dict[Key, float]:
    """T(i, j, c): each option's merged conv (its kept units) timed by the profile's table
    protocol, through the run's latency cache (one row per conv shape, shared with dp-depth)."""
    batch = ctx.profile.batch
    signatures = {
        o.key: segment_signature(ctx.chain, o.start, o.end, batch, o.kept) for o in options
    }
    cache = TableCache(ctx.cache_dir / LATENCY_TABLES) if ctx.cache_dir is not None else None
    measured = measure_signatures(
        signatures,
        ctx.profile,
        cache,
        progress=lambda done, total: ctx.report("latency table", done, total),
        map_items=ctx.map_items,
    )
    return {key: latency.median_ms for key, latency in measured.latency.items()}


def importance_cache_dir(ctx: PlanContext) -> Path:
    """Beside the run's latency-table cache when it has one, else the user cache directory."""
    root = ctx.cache_dir if ctx.cache_dir is not None else cache_root()
    return root / IMPORTANCE / CACHE_NAME


def plan_at(tables: Tables, t0: float, prec: float, official: bool = False) -> Plan:
    """Steps 3-4 at budget T0 (table units); no plan within T0 is Infeasible, with the reason."""
    try:
        solution = solve(tables.chain.L, tables.entries(), t0, prec, official)
    except DepthbenchError as error:
        raise Infeasible(f"layermerge: {error}") from error
    plan = to_plan(tables.chain, solution, {o.key: o for o in tables.options})
    meta = {
        "T0": t0,
        "prec": prec,
        "objective": solution.objective,
        "table_latency": solution.table_latency,
        "discretized_latency": solution.discretized_latency,
        "importance_fidelity": tables.fidelity,
        "official": official,
    }
    return Plan(plan.activations, plan.boundaries, plan.deleted, method=plan.method, meta=meta)


def to_plan(chain: Chain, solution: Solution, options: dict[Key, Option]) -> Plan:
    """Step 4 (upstream ``act_ind``/``conv_ind``): S = the segment ends; A = S's original
    activations plus the end of every segment spanning two or more units (a ReLU6 at an
    originally linear MobileNetV2 block end); D = the units the chosen options prune."""
    chosen = [options[(e.start, e.end, *e.option)] for e in solution.entries]
    boundaries = frozenset(o.end for o in chosen)
    multi = {o.end for o in chosen if o.end - o.start >= 2}
    return Plan(
        activations=(boundaries & chain.original_activations) | multi,
        boundaries=boundaries,
        deleted=frozenset().union(*(o.pruned() for o in chosen)),
        method="layermerge",
    )
