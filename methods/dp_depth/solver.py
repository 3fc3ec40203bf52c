"""The two-stage dynamic program of Kim et al. (ICML 2023), on plain tables.

It follows upstream's solver (the official ECDC code; its function names are cited below). The
solver knows nothing about torch or the chain: positions are 0..L, a *segment* (i, j) is a run
of convs that may be fused into one, T(i, j) is its latency and h(i, j, a_i, a_j) the measured
importance of removing every activation strictly inside it, with activation states a_i, a_j at
its ends.

The algorithm box, one function each:

1. stage 1, ``optimal_merge_table``: T_opt, the fastest fusion of every activation-free span;
2. Algorithm 3, ``extended_importance``: I_ext, which lets a=0 boundaries sit at block ends;
3. stage 2, ``knapsack``: the best activation pattern under the discretised budget;
4. ``backtrack``: the chosen steps, hence A (kept activations) and S (merge boundaries);
5. check, ``fastest_merge``: the fastest S for the chosen A, recomputed on the raw T table.

Two switches. ``prec`` (knapsack time units per ms) discretises every step's time to
g = ⌊prec · T_opt⌋ and the budget to B = ⌊prec · T0⌋; upstream uses 20 for MobileNetV2 and 10 for
VGG19. ``solver`` picks one of two variants of the recurrences:

- ``"upstream"`` (default) reproduces upstream's solver exactly: stage 1 fills valid segments
  only, through valid prefixes; Algorithm 3 extends measured entries only; the knapsack starts
  from D(t, 0, 1) = 0 for t < B, so a plan of 0 discretised units is rejected; the final state is
  the argmax of the unrounded pair (D(B, L, 0), D(B, L, 1)), an exact tie going to a = 0.
- ``"exact"`` is self-consistent: stage 1 is the full shortest path over valid segments (so a
  residual block that is faster split than fused is split inside a longer span too); Algorithm 3
  also extends through chain-only prefixes; the knapsack starts from D(t, 0, 1) = 0 for t ≤ B;
  the final state is picked by the knapsack's own rule (value rounded to 7 decimals, then less
  discretised time).

Both round to 7 decimals inside the knapsack, as upstream does there.

The check step runs in both: upstream asserts that the DP's S is the fastest merge for its A;
here a faster S replaces the DP's with a warning, and the solution's objective and discretised
latency are recomputed for the S returned (the DP path's values are kept beside them).

Conventions: position 0 always keeps its activation (a_0 = 1, the stem's). ``activations`` (A)
and ``boundaries`` (S) exclude 0; S always includes L, and A includes L when a_L = 1, so A ⊆ S.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import numpy as np

from suite.errors import DepthbenchError

Segment = tuple[int, int]
Entry = tuple[int, int, int, int]
State = tuple[int, int]
Solver = Literal["upstream", "exact"]

START: State = (0, 1)
SOLVERS: tuple[Solver, ...] = ("upstream", "exact")
ROUND_DECIMALS = 7
LATENCY_TOLERANCE_MS = 1e-9


@dataclass(frozen=True)
class MergeTable:
    """Stage-1 result: every valid segment (``upstream``), or every span (i, j) that some chain of
    valid segments covers (``exact``).

    ``time[(i, j)]`` is T_opt(i, j); ``breaks[(i, j)]`` are the inner merge boundaries of the
    fusion that attains it (empty when the span is fused as one conv).
    """

    time: dict[Segment, float]
    breaks: dict[Segment, tuple[int, ...]]


@dataclass(frozen=True)
class Step:
    """One stage-2 step: the activation-free span (start, end) with activation states at its ends.

    ``cost`` is g = ⌊prec · T_opt(start, end)⌋, the step's time as the knapsack counts it.
    """

    start: int
    end: int
    start_act: int
    end_act: int
    cost: int
    importance: float


@dataclass(frozen=True)
class KnapsackTable:
    """Stage-2 tables over t = 0..B for every reachable state (position m, activation state a).

    ``value[s][t]`` is D(t, m, a) (-inf where no plan fits in t); ``used[s][t]`` the discretised
    time that plan actually uses (the tie-breaker); ``choice[s][t]`` the index of its last step.
    """

    value: dict[State, np.ndarray]
    used: dict[State, np.ndarray]
    choice: dict[State, np.ndarray]


@dataclass(frozen=True)
class Solution:
    """A solved activation and merge pattern: A ⊆ S, both without 0, S with L.

    All of ``objective``, ``table_latency`` and ``discretized_latency`` describe the returned
    (A, S). Its *steps* are the spans between consecutive step ends: 0, every point of A (a=1)
    and the points of S outside A that end an a=0 step; the other points of S are merge breaks inside a
    step. ``objective`` is Σ I_ext over the steps; ``table_latency`` is Σ T over the segments
    between consecutive points of {0} ∪ ``boundaries`` (ms, unrounded); ``discretized_latency`` is
    Σ over the steps of ⌊prec · (Σ T of the step's segments)⌋.

    When the check step kept the DP's S, the steps are the DP's, ``discretized_latency`` is what
    the knapsack counted (≤ ⌊prec · T0⌋) and the ``dp_*`` fields equal the others. When it found a
    faster S for the same A, the steps are the best-scoring ones that S allows, and
    ``discretized_latency`` may exceed ⌊prec · T0⌋ (flooring favoured the DP's split, which the
    float-exact merge drops); ``dp_boundaries``, ``dp_objective`` and ``dp_discretized_latency``
    keep the DP path's S and values.
    """

    activations: frozenset[int]
    boundaries: frozenset[int]
    objective: float
    table_latency: float
    discretized_latency: int
    dp_boundaries: frozenset[int]
    dp_objective: float
    dp_discretized_latency: int


def optimal_merge_table(
    L: int, segments: set[Segment], latency: dict[Segment, float], solver: Solver = "upstream"
) -> MergeTable:
    """Stage 1 (upstream ``generate_optimal_time_table``), O(L³).

    ``upstream``: for valid (i, j) only,
        T_opt(i, j) = min( T(i, j),  min_{i<k<j, (i,k) and (k,j) valid} T_opt(i, k) + T(k, j) ).
    ``exact``: the same with (i, k) any span that a chain of valid segments covers, filled for
    every such span; T_opt is then the shortest path over valid segments. The two differ when a
    residual block s→t is faster split at k than fused: for i < s, (i, k) is not valid, so upstream
    cannot split the block inside the span (i, t). ``exact`` also fills spans that are not valid
    segments (the activation-free span between two kept activations, or (0, L)).

    Ties keep the single conv, then the smallest k, as upstream's strict ``<`` does.
    """
    _check_solver(solver)
    missing = sorted(segment for segment in segments if segment not in latency)
    if missing:
        raise DepthbenchError(
            f"latency table has no time for valid segments {missing}; measure them or drop them"
            " from the segment set"
        )
    starts_by_end = _starts_by_end(segments)
    time: dict[Segment, float] = {}
    breaks: dict[Segment, tuple[int, ...]] = {}
    for i in range(L):
        for j in range(i + 1, L + 1):
            if solver == "upstream" and (i, j) not in segments:
                continue
            best = latency[(i, j)] if (i, j) in segments else math.inf
            best_breaks: tuple[int, ...] = ()
            for k in starts_by_end[j]:
                # upstream's table only has valid spans, so only they serve as prefixes there
                if k > i and (i, k) in time and time[(i, k)] + latency[(k, j)] < best:
                    best = time[(i, k)] + latency[(k, j)]
                    best_breaks = breaks[(i, k)] + (k,)
            if best < math.inf:
                time[(i, j)] = best
                breaks[(i, j)] = best_breaks
    return MergeTable(time, breaks)


def extended_importance(
    L: int,
    importance: dict[Entry, float],
    block_ends: frozenset[int],
    solver: Solver = "upstream",
) -> dict[Entry, float]:
    """Algorithm 3 (the paper's Appendix B; upstream ``generate_ext_imp_table``).

    I_ext(i, j, a_i, a_j) = max( h(i, j, a_i, a_j),
                                 max_{k block end} I_ext(i, k, a_i, 0) + h(k, j, 0, a_j) ).

    A chain point k is an a=0 boundary *inside* a fused span: it changes the importance estimate
    but neither A nor S. ``upstream`` computes I_ext for measured entries only, so every prefix
    (i, k, a_i, 0) is itself measured; ``exact`` also creates chain-only entries and extends
    through them. The two agree on the exclude-zeros tables of ``measured_entries``, which have
    no chain with two a=0 points; they can differ on partial tables.
    """
    _check_solver(solver)
    _check_zero_states(importance, block_ends)
    if solver == "upstream":
        return _measured_extended_importance(importance)
    measured_by_end: dict[int, dict[Entry, float]] = defaultdict(dict)
    zero_start_by_end: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for (i, j, a_i, a_j), h in importance.items():
        measured_by_end[j][(i, j, a_i, a_j)] = h
        if a_i == 0:
            zero_start_by_end[j].append((i, a_j, h))
    ext: dict[Entry, float] = {}
    zero_ending_at: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for j in range(1, L + 1):
        found = dict(measured_by_end[j])
        for k, a_j, h in zero_start_by_end[j]:
            for i, a_i in zero_ending_at[k]:
                key = (i, j, a_i, a_j)
                found[key] = max(found.get(key, -math.inf), ext[(i, k, a_i, 0)] + h)
        ext.update(found)
        zero_ending_at[j] = [(i, a_i) for i, _, a_i, a_j in found if a_j == 0]
    return ext


def _measured_extended_importance(importance: dict[Entry, float]) -> dict[Entry, float]:
    """Upstream's Algorithm 3: entries in (i, j) order, so each prefix (i, k) is done first."""
    ext: dict[Entry, float] = {}
    for i, j, a_i, a_j in sorted(importance):
        chains = [
            ext[(i, k, a_i, 0)] + importance[(k, j, 0, a_j)]
            for k in range(i + 1, j)
            if (i, k, a_i, 0) in ext and (k, j, 0, a_j) in importance
        ]
        ext[(i, j, a_i, a_j)] = max([importance[(i, j, a_i, a_j)], *chains])
    return ext


def knapsack_steps(
    segments: set[Segment],
    merge_table: MergeTable,
    ext_importance: dict[Entry, float],
    prec: float,
) -> list[Step]:
    """The stage-2 steps: valid segments where both T_opt and I_ext are defined.

    Sorted by end state, then by start state: the knapsack then finishes every state before a
    step leaves it, and its ties keep the smallest start, then a=0 before a=1, as upstream does.
    """
    steps = [
        Step(i, j, a_i, a_j, math.floor(prec * merge_table.time[(i, j)]), value)
        for (i, j, a_i, a_j), value in ext_importance.items()
        if (i, j) in segments
    ]
    return sorted(steps, key=lambda step: (step.end, step.end_act, step.start, step.start_act))


def knapsack(steps: list[Step], budget_units: int, solver: Solver = "upstream") -> KnapsackTable:
    """Stage 2 (upstream ``optimal_patterns``), vectorised over the time axis t = 0..B.

    D(t, 0, 1) = 0 for every t < B (``upstream``) or t ≤ B (``exact``), and

    D(t, m, a) = max_{i<m, b∈{0,1}} D(t − g(i, m), i, b) + I_ext(i, m, b, a),

    one shifted array per step. So D(t, ·) for t < B is the best plan using discretised time ≤ t;
    D(B, ·) under ``upstream`` only counts plans that use at least 1 unit, since a plan of 0 units
    would need D(B, 0, 1). Values are compared after rounding to 7 decimals (upstream's guard
    against float noise); ties go to the plan using less time, then to the earlier step.
    """
    _check_solver(solver)
    axis = budget_units + 1
    start = np.zeros(axis)
    if solver == "upstream":
        start[budget_units] = -np.inf  # upstream initialises t in range(0, B)
    value = {START: start}
    used = {START: np.zeros(axis, dtype=np.int64)}
    choice: dict[State, np.ndarray] = {}
    for index, step in enumerate(steps):
        source, target = (step.start, step.start_act), (step.end, step.end_act)
        if source not in value or step.cost > budget_units:
            continue
        if target not in value:
            value[target] = np.full(axis, -np.inf)
            used[target] = np.zeros(axis, dtype=np.int64)
            choice[target] = np.full(axis, -1)
        candidate = np.full(axis, -np.inf)
        candidate[step.cost :] = value[source][: axis - step.cost] + step.importance
        candidate_used = np.zeros(axis, dtype=np.int64)
        candidate_used[step.cost :] = used[source][: axis - step.cost] + step.cost
        better = improves(candidate, candidate_used, value[target], used[target])
        value[target][better] = candidate[better]
        used[target][better] = candidate_used[better]
        choice[target][better] = index
    return KnapsackTable(value, used, choice)


def backtrack(
    table: KnapsackTable,
    steps: list[Step],
    L: int,
    budget_units: int,
    solver: Solver = "upstream",
) -> list[Step] | None:
    """Follow the argmax from the better of D(B, L, 0) and D(B, L, 1) back to position 0.

    Returns the chosen steps in order, or None when no plan fits the budget.
    """
    state = _final_state(table, L, budget_units, solver)
    if state is None:
        return None
    path: list[Step] = []
    t = budget_units
    while state != START:
        step = steps[table.choice[state][t]]
        path.append(step)
        t -= step.cost
        state = (step.start, step.start_act)
    return path[::-1]


def _final_state(table: KnapsackTable, L: int, budget_units: int, solver: Solver) -> State | None:
    """The better of the end states (L, 0) and (L, 1) at t = B; None when neither is reached.

    ``upstream`` takes ``np.argmax`` over the unrounded pair, so an exact tie goes to a = 0 (the
    first index) and values closer than the knapsack's rounding are still told apart. ``exact``
    uses the knapsack's own rule: value rounded to 7 decimals, then less discretised time.
    """
    finals = [
        state
        for state in ((L, 0), (L, 1))
        if state in table.value and np.isfinite(table.value[state][budget_units])
    ]
    if not finals:
        return None
    if solver == "upstream":
        # max keeps the first maximum, and finals lists a = 0 first, as np.argmax would
        return max(finals, key=lambda final: table.value[final][budget_units])
    return max(
        finals,
        key=lambda final: (
            np.round(table.value[final][budget_units], ROUND_DECIMALS),
            -table.used[final][budget_units],
        ),
    )


def fastest_merge(
    L: int,
    segments: set[Segment],
    latency: dict[Segment, float],
    activations: frozenset[int],
) -> tuple[frozenset[int], float]:
    """Check step (upstream ``optimal_merge_pattern``): the fastest S ⊇ A on the raw T table.

    Stage 1 restricted to the activation-free spans: with c(m) the last point of {0} ∪ A below m,
    best(m) = min_{c(m) ≤ i < m, (i, m) valid} best(i) + T(i, m), best(0) = 0.
    Returns S (without 0, with L) and its table latency. Ties keep the smallest i, as upstream.
    """
    starts_by_end = _starts_by_end(segments)
    best = {0: 0.0}
    previous: dict[int, int] = {}
    for m in range(1, L + 1):
        last_activation = max(a for a in activations | {0} if a < m)
        options = [
            (best[i] + latency[(i, m)], i)
            for i in starts_by_end[m]
            if i >= last_activation and i in best
        ]
        if options:
            best[m], previous[m] = min(options)
    boundaries = {L}
    position = L
    while previous[position] != 0:
        position = previous[position]
        boundaries.add(position)
    return frozenset(boundaries), best[L]


def solve(
    L: int,
    segments: set[Segment],
    latency: dict[Segment, float],
    importance: dict[Entry, float],
    budget: float,
    prec: float,
    block_ends: frozenset[int] = frozenset(),
    solver: Solver = "upstream",
) -> Solution:
    """Maximise Σ I_ext over the chosen steps subject to Σ ⌊prec · T_opt⌋ ≤ ⌊prec · budget⌋.

    ``budget`` (T0) is in the latency table's units (summed per-segment ms); ``prec`` is the
    number of knapsack time units per ms (20 for MobileNetV2, 10 for VGG upstream).
    ``block_ends`` are the positions where an a=0 state may appear (MobileNetV2 block ends).
    ``solver`` is ``"upstream"`` (upstream's recurrences exactly) or ``"exact"`` (the
    self-consistent variant); the module docstring lists the differences.
    Raises DepthbenchError when no plan fits, naming what the fastest plan needs.
    """
    _check_solver(solver)
    if budget <= 0 or prec <= 0:
        raise DepthbenchError(
            f"budget T0 and prec must be positive, got T0={budget}, prec={prec}; pass e.g."
            " T0=25, prec=20 for MobileNetV2-1.0"
        )
    off_segments = sorted(entry for entry in importance if entry[:2] not in segments)
    if off_segments:
        raise DepthbenchError(
            f"importance entries {off_segments[:5]} are not on valid segments; measure"
            " importance only on the segments of the latency table"
        )
    merge_table = optimal_merge_table(L, segments, latency, solver)
    ext_importance = extended_importance(L, importance, block_ends, solver)
    steps = knapsack_steps(segments, merge_table, ext_importance, prec)
    budget_units = math.floor(prec * budget)
    path = backtrack(knapsack(steps, budget_units, solver), steps, L, budget_units, solver)
    if path is None:
        raise _no_plan_error(L, steps, budget, prec, budget_units)
    return _checked_solution(L, segments, latency, merge_table, steps, path, prec)


def measured_entries(segments: Iterable[Segment], block_ends: frozenset[int]) -> list[Entry]:
    """The importance entries upstream measures with ``--exclude-zeros True``.

    Every segment gets a_i = a_j = 1; a segment starting at a block end also gets a_i = 0; one
    ending at a block end, and not starting at one, also gets a_j = 0. Position 0 counts as a
    block end whose activation is fixed on, so segments from 0 get (1, 1) only: that gives the
    315 entries of MobileNetV2 (tested).
    """
    entries = []
    for i, j in sorted(segments):
        entries.append((i, j, 1, 1))
        if i in block_ends:
            entries.append((i, j, 0, 1))
        elif j in block_ends and i != 0:
            entries.append((i, j, 1, 0))
    return entries


def _checked_solution(
    L: int,
    segments: set[Segment],
    latency: dict[Segment, float],
    merge_table: MergeTable,
    steps: list[Step],
    path: list[Step],
    prec: float,
) -> Solution:
    """Build the solution from the chosen steps and apply the check step.

    Upstream asserts that the DP's S is the fastest merge for its A. That fails when flooring or
    a rounding tie made the knapsack keep an a=0 boundary that a float-exact merge would drop, or
    (``upstream`` stage 1) when a residual block inside a step is faster split. The network's
    activations are the same, so we keep the faster S, warn, and score it afresh: the DP path's
    objective and discretised time belong to its own S. A faster S that no chain of steps can
    score (a partial importance table lacks an entry that its steps need) is not used, with a
    warning: the surrogate has no value for it.
    """
    activations = frozenset(step.end for step in path if step.end_act == 1)
    dp_boundaries = frozenset(
        position
        for step in path
        for position in (*merge_table.breaks[(step.start, step.end)], step.end)
    )
    dp_latency = _table_latency(latency, dp_boundaries)
    dp_objective = sum(step.importance for step in path)
    dp_units = sum(step.cost for step in path)
    boundaries, check_latency = fastest_merge(L, segments, latency, activations)
    assert check_latency <= dp_latency + LATENCY_TOLERANCE_MS, "check step found a slower merge"
    score = None
    if check_latency < dp_latency - LATENCY_TOLERANCE_MS:
        score = _score_merge(steps, latency, activations, boundaries, prec)
        if score is None:
            warnings.warn(
                f"the fastest merge {sorted(boundaries)} ({check_latency:.6f} ms) for the DP's"
                f" activations has steps without importance entries; keeping the DP's merge"
                f" boundaries {sorted(dp_boundaries)} ({dp_latency:.6f} ms)",
                stacklevel=3,
            )
    if score is None:
        boundaries, check_latency, score = dp_boundaries, dp_latency, (dp_objective, dp_units)
    else:
        warnings.warn(
            f"the DP's merge boundaries {sorted(dp_boundaries)} ({dp_latency:.6f} ms) are slower"
            f" than the fastest merge {sorted(boundaries)} ({check_latency:.6f} ms) for the same"
            " activations (a flooring or rounding tie kept an a=0 boundary, or a split residual"
            " block is faster); using the faster one",
            stacklevel=3,
        )
    return Solution(
        activations=activations,
        boundaries=boundaries,
        objective=score[0],
        table_latency=check_latency,
        discretized_latency=score[1],
        dp_boundaries=dp_boundaries,
        dp_objective=dp_objective,
        dp_discretized_latency=dp_units,
    )


def _score_merge(
    steps: list[Step],
    latency: dict[Segment, float],
    activations: frozenset[int],
    boundaries: frozenset[int],
    prec: float,
) -> tuple[float, int] | None:
    """The best (Σ I_ext, Σ units) over the step chains that the plan (A, S) allows.

    Step ends are 0, every point of A (a=1) and any points of S outside A (a=0); a step is a
    stage-2 step (valid, with an I_ext entry) and costs ⌊prec · Σ T⌋ over its segments of S.
    Chains are compared as in the knapsack: value rounded to 7 decimals, then fewer units.
    None when no chain exists.
    """
    importance = {(s.start, s.end, s.start_act, s.end_act): s.importance for s in steps}
    points = [0, *sorted(boundaries)]
    state = [1 if point == 0 or point in activations else 0 for point in points]
    best: dict[int, tuple[float, int]] = {0: (0.0, 0)}
    for q in range(1, len(points)):
        options = []
        for p in range(q - 1, -1, -1):
            h = importance.get((points[p], points[q], state[p], state[q]))
            if p in best and h is not None:
                units = math.floor(
                    prec * _table_latency(latency, frozenset(points[p + 1 : q + 1]), points[p])
                )
                options.append((best[p][0] + h, best[p][1] + units))
            if state[p] == 1:
                break  # a kept activation ends every step that reaches it
        if options:
            best[q] = max(
                options, key=lambda option: (round(option[0], ROUND_DECIMALS), -option[1])
            )
    return best.get(len(points) - 1)


def improves(
    candidate: np.ndarray, candidate_used: np.ndarray, best: np.ndarray, best_used: np.ndarray
) -> np.ndarray:
    """Upstream's comparison: higher after rounding to 7 decimals; on a tie, less time used."""
    rounded_candidate = np.round(candidate, ROUND_DECIMALS)
    rounded_best = np.round(best, ROUND_DECIMALS)
    return np.isfinite(candidate) & (
        (rounded_candidate > rounded_best)
        | ((rounded_candidate == rounded_best) & (candidate_used < best_used))
    )


def _no_plan_error(
    L: int, steps: list[Step], budget: float, prec: float, budget_units: int
) -> DepthbenchError:
    """Name the budget and what the fastest plan needs (min Σ g over complete plans)."""
    fastest = {START: 0}
    for step in steps:
        source, target = (step.start, step.start_act), (step.end, step.end_act)
        if source in fastest:
            fastest[target] = min(fastest.get(target, math.inf), fastest[source] + step.cost)
    needed = [fastest[state] for state in ((L, 0), (L, 1)) if state in fastest]
    if not needed:
        return DepthbenchError(
            f"the importance table has no chain of entries from position 0 to L={L}; measure"
            " importance for every valid segment (see measured_entries)"
        )
    if min(needed) <= budget_units:  # only the upstream solver rejects a plan that fits
        return DepthbenchError(
            f"no plan meets budget T0={budget:g} ({budget_units} units at prec {prec:g}) under the"
            " upstream solver, which rejects plans of 0 discretised units and finds no other;"
            " raise prec or T0, or use solver='exact'"
        )
    return DepthbenchError(
        f"no plan meets budget T0={budget:g} ({budget_units} units at prec {prec:g}); the"
        f" fastest plan needs {min(needed) / prec:g} (table units, {min(needed)} units); raise T0"
        " to at least that"
    )


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise DepthbenchError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")


def _check_zero_states(importance: dict[Entry, float], block_ends: frozenset[int]) -> None:
    """a=0 states exist only at block ends; anything else is a mislabelled table."""
    misplaced = sorted(
        entry
        for entry in importance
        if (entry[2] == 0 and entry[0] not in block_ends)
        or (entry[3] == 0 and entry[1] not in block_ends)
    )
    if misplaced:
        raise DepthbenchError(
            f"importance entries {misplaced[:5]} have a=0 at a position that is not a block end"
            f" (block ends: {sorted(block_ends)}); pass the right block_ends or drop those entries"
        )


def _starts_by_end(segments: set[Segment]) -> dict[int, list[int]]:
    """For each end j, the starts i of valid segments (i, j), ascending."""
    starts: dict[int, list[int]] = defaultdict(list)
    for i, j in sorted(segments):
        starts[j].append(i)
    return starts


def _table_latency(
    latency: dict[Segment, float], boundaries: frozenset[int], start: int = 0
) -> float:
    """Σ T over the segments between consecutive points of {start} ∪ S, left to right (as stage 1
    sums them, so a step's T_opt and the Σ T of its breaks are the same float)."""
    return sum(latency[segment] for segment in pairwise([start, *sorted(boundaries)]))
