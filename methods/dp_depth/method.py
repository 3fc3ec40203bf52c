"""dp-depth: Kim et al., "Efficient Latency-Aware CNN Depth Compression via Two-Stage Dynamic
Programming", ICML 2023 (arXiv 2301.12187); documented in docs/methods/dp-depth.md.

The algorithm box, as ``plan_dp_depth`` runs it:

    input:  base network (a chain of L conv+BN units), latency budget, prec, α, solver
    1. tables    T(i, j)            latency of every valid segment fused into one conv
                                    (ctx.latency_table: measured under the profile, or replayed)
                 h(i, j, a_i, a_j)  importance of every entry (importance.py), normalised:
                                    h − α·mean(h over single-conv entries)
    2. stage 1   T_opt(i, j)        fastest fusion of each activation-free span, with its breaks
    3. stage 2   I_ext, knapsack    Algorithm 3, then the best activation states under ⌊prec·T0⌋
    4. plan      A = kept activations, S = merge boundaries (the breaks of the chosen spans)

Steps 2 and 3 are ``solver.solve``, with upstream's recurrences (``solver="upstream"``) unless the
config asks for the self-consistent ``"exact"`` variant. prec defaults per family as upstream:
10 units per ms for a plain chain (VGG), 20 otherwise (MobileNetV2, and ResNet, which upstream does
not solve), made finer when the table is so fast that those units could not tell its segments
apart (``knapsack_precision``). The budget T0 is in
table units (summed segment latencies): a ``table`` budget is T0 itself, as upstream. A measured
budget (``ms`` or ``fraction`` of the base network's latency) is met by the deploy network's
measured end-to-end latency, because sums of segment latencies are not end-to-end latency: T0 is
searched by bisection over the knapsack's integer time units, between the fastest fusion
T_opt(0, L) and the sum of the single-unit segments, for the largest T0 whose plan measures
within the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

from methods.dp_depth.importance import (
    UPSTREAM_RECIPE,
    ImportanceTable,
    entry_recipe,
    importance_entries,
    importance_table,
    normalise,
)
from methods.dp_depth.solver import (
    Entry,
    Segment,
    Solution,
    Solver,
    optimal_merge_table,
    solve,
)
from suite.cache import IMPORTANCE, cache_root
from suite.core.budget import Budget, Fidelity
from suite.core.chain import Chain, MergeRule
from suite.core.method import Infeasible, MethodResult, PlanContext, budget_missed
from suite.core.plan import Plan
from suite.core.registry import register_method
from suite.errors import DepthbenchError
from suite.measure.tables import LatencyTable, additivity, outside_chain_ms
from suite.run.train import FinetuneRecipe, finetune_steps

PAPER = "Kim et al., ICML 2023: Efficient Latency-Aware CNN Depth Compression via Two-Stage DP"
UPSTREAM_PREC = 20  # knapsack units per ms for MobileNetV2 (upstream's --prec 20)
UPSTREAM_PREC_PLAIN = 10  # for a plain chain: upstream solves VGG19 at --prec 10
MIN_BUDGET_UNITS = 673  # upstream MobileNetV2-1.0: 33.67 ms of single-unit segments at prec 20


class DpDepthConfig(BaseModel):
    """The method's knobs; defaults are upstream's settings (MobileNetV2-1.0 where they differ).

    ``prec`` (knapsack time units per table ms) defaults per family, as upstream: 10 for a plain
    chain without residual connections (VGG19), 20 otherwise (MobileNetV2; ResNet, which upstream
    does not solve, keeps 20); finer when the table is faster than upstream's MobileNetV2-1.0
    (see ``knapsack_precision``). A number overrides the rule.
    ``solver`` is ``upstream`` (upstream's recurrences exactly: valid-prefix stage 1, a knapsack
    that rejects plans of 0 discretised units, an exact final tie going to a=0) or ``exact`` (the
    self-consistent variant: shortest-path stage 1, plans of 0 units allowed, final ties by
    rounded value then less time); see ``methods.dp_depth.solver``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prec: float | None = Field(
        None,
        gt=0,
        description="knapsack time units per table ms; None: per family (10 VGG, 20 otherwise)",
    )
    solver: Solver = Field(
        "upstream",
        description="upstream: upstream's recurrences exactly; exact: the self-consistent variant",
    )
    alpha: float = Field(1.6, ge=0, description="normalisation α (1.2 MBV2-1.4, 1.4 VGG19)")
    rule: MergeRule = Field("upstream", description="segment rule: upstream adds the stride rule")
    importance_recipe: FinetuneRecipe = Field(
        UPSTREAM_RECIPE, description="the short fine-tune of each importance entry"
    )
    importance_fidelity: Fidelity | None = Field(
        None, description="fidelity of the importance table; None: the run's fidelity"
    )
    add_block_end_activations: bool = Field(
        True, description="the a=0 extension: block ends (MobileNetV2) may gain an activation"
    )


@dataclass(frozen=True)
class Tables:
    """Step 1's output: what the solver needs, for one chain under one profile."""

    chain: Chain
    segments: set[Segment]
    latency: dict[Segment, float]
    importance: dict[Entry, float]  # normalised h
    fidelity: Fidelity  # of the importance table


@register_method("dp-depth", config=DpDepthConfig, paper=PAPER, aliases=("kim2023",))
def plan_dp_depth(ctx: PlanContext, budget: Budget, config: DpDepthConfig) -> MethodResult:
    """Tables → stage 1 and stage 2 at T0 (searched for a measured budget) → plan (A, S)."""
    if ctx.profile.is_replay and budget.kind != "table":
        raise DepthbenchError(
            f"profile {ctx.profile.name!r} replays a latency table and measures nothing, so a "
            f"{budget.kind!r} budget cannot be checked; give a 'table' budget (T0 in table units)"
            " or use a measuring profile"
        )
    # 1. tables (latency first: it is quick, and fails early on a chain the profile does not fit)
    latency_table = ctx.latency_table(config.rule)
    latency = latency_table.latency_ms
    importance = measure_importance(ctx, config)
    tables = Tables(
        chain=ctx.chain,
        segments=set(latency),
        latency=latency,
        importance=normalise(importance.top1_delta, config.alpha),
        fidelity=importance.fidelity,
    )
    # 2-4. stage 1, stage 2 and the plan, at T0 = the budget or searched to meet it
    prec = config.prec or knapsack_precision(tables)
    if budget.kind == "table":
        plan = plan_at(tables, budget.value, prec, config.solver)
    else:
        plan = search_t0(ctx, tables, prec, ctx.target_ms(budget), config.solver)
    meta = {
        **importance_cost(importance, config.importance_recipe, ctx.data.train),
        "table_additivity": table_additivity(ctx, latency_table),
    }
    return MethodResult(plan, meta=meta)


def table_additivity(ctx: PlanContext, table: LatencyTable) -> dict | None:
    """How well the table predicts the base network (``suite.measure.tables.additivity``) against
    its screened latency, for the run's report; None for a replayed table (nothing to measure)."""
    if ctx.profile.is_replay:
        return None
    base = ctx.measure_plan(Plan.original(ctx.chain))
    check = additivity(table, ctx.chain, base, outside_chain_ms(ctx.traced, ctx.profile))
    return {
        "table_method": table.method,
        "segment_sum_ms": check.segment_sum_ms,
        "outside_ms": check.outside_ms,
        "base_latency_ms": check.end_to_end_ms,
        "relative_error": check.relative_error,
    }


def measure_importance(ctx: PlanContext, config: DpDepthConfig) -> ImportanceTable:
    """Step 1's h for the entries of the rule's segments, cached beside the latency tables."""
    entries = importance_entries(
        ctx.chain.segments(config.rule), ctx.chain, config.add_block_end_activations
    )
    return importance_table(
        ctx.traced,
        ctx.data,
        entries,
        config.importance_recipe,
        config.importance_fidelity or ctx.fidelity,
        importance_cache_dir(ctx),
        progress=lambda done, total: ctx.report("importance table", done, total),
        map_items=ctx.map_items,
    )


def importance_cost(table: ImportanceTable, recipe: FinetuneRecipe, train: Dataset) -> dict:
    """The importance table's share of the search cost: its entries computed now and read from
    the cache, and ``search_steps``, the gradient steps the whole table takes (every entry's
    fine-tune at the table's fidelity, cached or not, since the cache only spares a repeat), 0 at
    smoke fidelity."""
    entry = entry_recipe(table.fidelity, recipe)
    steps = finetune_steps(entry, train) if entry is not None else 0
    return {
        "importance_computed": table.computed,
        "importance_cached": table.cached,
        "search_steps": (table.computed + table.cached) * steps,
    }


def importance_cache_dir(ctx: PlanContext) -> Path:
    """Beside the run's latency-table cache when it has one, else in the user cache."""
    return (ctx.cache_dir or cache_root()) / IMPORTANCE


def knapsack_precision(tables: Tables) -> float:
    """Upstream's units per ms for the family, made finer for tables faster than upstream's.

    Upstream solves VGG19 at prec 10 and MobileNetV2 at 20. A plain chain (no residual
    connections, no linear bottlenecks) is VGG's family and gets 10; every other chain gets 20
    (``precision_for``). Upstream's own tables keep upstream's precision.
    """
    chain = tables.chain
    plain = not chain.residuals and not chain.block_ends
    family_prec = UPSTREAM_PREC_PLAIN if plain else UPSTREAM_PREC
    singles = sum(tables.latency[(p - 1, p)] for p in range(1, chain.L + 1))
    return precision_for(singles, family_prec, MIN_BUDGET_UNITS)


def precision_for(single_unit_ms: float, upstream_prec: float, min_units: int) -> float:
    """Upstream's ``upstream_prec`` units per ms, or finer so that the single-unit segments
    (``single_unit_ms`` in all) span at least ``min_units`` units, as upstream's MobileNetV2-1.0
    table does: at upstream's precision a CPU table of 0.01 ms segments would round every segment
    to 0 units and the budget would constrain nothing.
    """
    return max(upstream_prec, min_units / single_unit_ms)


def plan_at(tables: Tables, t0: float, prec: float, solver: Solver = "upstream") -> Plan:
    """Steps 2-4 at budget T0 (table units); no plan within T0 is Infeasible, with the reason."""
    try:
        solution = solve(
            tables.chain.L,
            tables.segments,
            tables.latency,
            tables.importance,
            t0,
            prec,
            tables.chain.block_ends,
            solver,  # validated by DpDepthConfig's pattern, and again by solve
        )
    except DepthbenchError as error:
        # the tables are complete by construction, so the solver's only complaint is the budget
        raise Infeasible(f"dp-depth: {error}") from error
    return to_plan(solution, t0, prec, tables.fidelity)


def to_plan(solution: Solution, t0: float, prec: float, fidelity: Fidelity) -> Plan:
    """Step 4: A and S, with what produced them in the plan's meta."""
    return Plan(
        activations=solution.activations,
        boundaries=solution.boundaries,
        method="dp-depth",
        meta={
            "T0": t0,
            "prec": prec,
            "objective": solution.objective,
            "table_latency": solution.table_latency,
            "discretized_latency": solution.discretized_latency,
            "importance_fidelity": fidelity,
        },
    )


def search_t0(
    ctx: PlanContext, tables: Tables, prec: float, target_ms: float, solver: Solver = "upstream"
) -> Plan:
    """The plan of the largest T0 whose deploy network screens and confirms within ``target_ms``
    (``bisect_t0``), searched between the fastest fusion T_opt(0, L) and the sum of the
    single-unit segments."""
    L = tables.chain.L
    # the fastest fusion of the whole chain is a shortest path, not a valid segment, so only the
    # exact stage 1 fills it; a plan of its segments fits this bound under either solver (the
    # upstream one also needs at least 1 unit, which only a table near 0 ms lacks)
    fastest = optimal_merge_table(L, tables.segments, tables.latency, "exact").time[(0, L)]
    singles = sum(tables.latency[(p - 1, p)] for p in range(1, L + 1))
    return bisect_t0(
        ctx,
        lambda t0: plan_at(tables, t0, prec, solver),
        (math.floor(prec * fastest), math.ceil(prec * singles)),
        prec,
        target_ms,
        what="dp-depth: even the fastest fusion",
    )


def bisect_t0(
    ctx: PlanContext,
    plan_at_t0: Callable[[float], Plan],
    units: tuple[int, int],
    prec: float,
    target_ms: float,
    what: str,
) -> Plan:
    """The plan of the largest T0 whose deploy network screens and confirms within ``target_ms``.

    Bisection over integer knapsack units B in ``units`` = (fastest plan, original network); unit
    B is solved at T0 = (B + ½) / prec, so that ⌊prec·T0⌋ = B whatever the float rounding. It
    finds the largest B whose plan *screens* within the target (``table_protocol``); that plan is
    then confirmed under the full protocol, and if the confirmation misses, B steps down one unit
    at a time until a plan screens and confirms (bisection settles right on the boundary, where a
    screen is as likely under the target as over). Measured latency need not be monotone in T0;
    bisection assumes it is, and the plan it returns was confirmed within the target. ``what``
    names the fastest plan when even it screens too slow.
    """
    low, high = units
    steps = math.ceil(math.log2(high - low + 1)) + 2
    tried: dict[int, tuple[Plan, float]] = {}

    def fits(units: int) -> bool:
        if units not in tried:
            plan = plan_at_t0((units + 0.5) / prec)
            tried[units] = (plan, ctx.measure_plan(plan).median_ms)
            ctx.report("T0 search", len(tried), max(steps, len(tried)))
        return tried[units][1] <= target_ms

    if fits(high):
        best = high
    elif not fits(low):
        raise Infeasible(
            f"{what} (T0 = {(low + 0.5) / prec:g} table units) measures {tried[low][1]:.4g} ms"
            f" under {ctx.profile.name} when screened, above the budget {target_ms:.4g} ms"
        )
    else:
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        best = low
    confirmations: dict[int, tuple[float, float]] = {}  # units -> (screened ms, confirmed ms)
    for candidate in range(best, units[0] - 1, -1):  # down from the bisection's answer
        if not fits(candidate):
            continue
        plan, screened = tried[candidate]
        confirmations[candidate] = (screened, ctx.confirm_plan(plan).median_ms)
        if confirmations[candidate][1] <= target_ms:
            search = search_meta(tried, confirmations)
            return replace(plan, meta={**plan.meta, "target_ms": target_ms, **search})
    raise Infeasible(budget_missed(what, ctx, target_ms, None, list(confirmations.values())))


def search_meta(
    tried: dict[int, tuple[Plan, float]], confirmations: dict[int, tuple[float, float]]
) -> dict:
    """What the T0 search did: every screened and every confirmed [T0, ms], and the chosen plan's
    (the last confirmed one's) screen and confirmation."""
    screened, confirmed = list(confirmations.values())[-1]
    return {
        "screened_ms": screened,
        "confirmed_ms": confirmed,
        "T0_search": [[plan.meta["T0"], ms] for _, (plan, ms) in sorted(tried.items())],
        "T0_confirmations": [
            [tried[units][0].meta["T0"], ms] for units, (_, ms) in sorted(confirmations.items())
        ],
    }
