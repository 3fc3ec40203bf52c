"""The two-stage dynamic program of Kim et al. (ICML 2023), on plain tables.

The specification is ``docs/method-dp-depth-notes.md`` §1 (cited below as "notes"). The solver
knows nothing about torch or the chain: positions are 0..L, a *segment* (i, j) is a run of convs
that may be fused into one, T(i, j) is its latency and h(i, j, a_i, a_j) the measured importance of
removing every activation strictly inside it, with activation states a_i, a_j at its ends.

The algorithm box, one function each:

1. stage 1, ``optimal_merge_table``: T_opt, the fastest fusion of every activation-free span;
2. Algorithm 3, ``extended_importance``: I_ext, which lets a=0 boundaries sit at block ends;
3. stage 2, ``knapsack``: the best activation pattern under the discretised budget;
4. ``backtrack``: the chosen steps, hence A (kept activations) and S (merge boundaries);
5. check, ``fastest_merge``: the fastest S for the chosen A, recomputed on the raw T table.

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

import numpy as np

from suite.errors import DepthbenchError

Segment = tuple[int, int]
Entry = tuple[int, int, int, int]
State = tuple[int, int]

START: State = (0, 1)
ROUND_DECIMALS = 7
LATENCY_TOLERANCE_MS = 1e-9


@dataclass(frozen=True)
class MergeTable:
    """Stage-1 result, for every span (i, j) that some chain of valid segments covers.

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

    ``objective`` is Σ I_ext over the chosen steps; ``table_latency`` is Σ T over the segments
    between consecutive points of {0} ∪ ``boundaries`` (ms, unrounded); ``discretized_latency`` is
    Σ ⌊prec · T_opt⌋ over the chosen steps, as the knapsack saw it (≤ ⌊prec · T0⌋).
    """

    activations: frozenset[int]
    boundaries: frozenset[int]
    objective: float
    table_latency: float
    discretized_latency: int


def optimal_merge_table(
    L: int, segments: set[Segment], latency: dict[Segment, float]
) -> MergeTable:
    """Stage 1 (notes §1, ``generate_optimal_time_table``), O(L³).

    T_opt(i, j) = min( T(i, j),  min_{i<k<j, (k, j) valid} T_opt(i, k) + T(k, j) ).

    Upstream fills only valid spans, through valid prefixes (i, k); this fills every span that a
    chain of valid segments covers, e.g. the activation-free span between two kept activations.
    Both agree on valid spans of the three upstream tables (tested). Ties keep the single conv,
    then the smallest k, as upstream's strict ``<`` does.
    """
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
            best = latency[(i, j)] if (i, j) in segments else math.inf
            best_breaks: tuple[int, ...] = ()
            for k in starts_by_end[j]:
                if k > i and (i, k) in time and time[(i, k)] + latency[(k, j)] < best:
                    best = time[(i, k)] + latency[(k, j)]
                    best_breaks = breaks[(i, k)] + (k,)
            if best < math.inf:
                time[(i, j)] = best
                breaks[(i, j)] = best_breaks
    return MergeTable(time, breaks)


def extended_importance(
    L: int, importance: dict[Entry, float], block_ends: frozenset[int]
) -> dict[Entry, float]:
    """Algorithm 3 (notes §1, Appendix B, ``generate_ext_imp_table``).

    I_ext(i, j, a_i, a_j) = max( h(i, j, a_i, a_j),
                                 max_{k block end} I_ext(i, k, a_i, 0) + h(k, j, 0, a_j) ).

    A chain point k is an a=0 boundary *inside* a fused span: it changes the importance estimate
    but neither A nor S. Upstream also requires every prefix (i, k) to be a valid segment; that
    only matters for chains with two or more a=0 points, which the exclude-zeros table of
    ``measured_entries`` never has.
    """
    _check_zero_states(importance, block_ends)
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


def knapsack_steps(
    segments: set[Segment],
    merge_table: MergeTable,
    ext_importance: dict[Entry, float],
    prec: float,
) -> list[Step]:
    """The stage-2 steps: valid segments where both T_opt and I_ext are defined (notes §1).

    Sorted by end state, then by start state: the knapsack then finishes every state before a
    step leaves it, and its ties keep the smallest start, then a=0 before a=1, as upstream does.
    """
    steps = [
        Step(i, j, a_i, a_j, math.floor(prec * merge_table.time[(i, j)]), value)
        for (i, j, a_i, a_j), value in ext_importance.items()
        if (i, j) in segments
    ]
    return sorted(steps, key=lambda step: (step.end, step.end_act, step.start, step.start_act))


def knapsack(steps: list[Step], budget_units: int) -> KnapsackTable:
    """Stage 2 (notes §1, ``optimal_patterns``), vectorised over the time axis t = 0..B.

    D(t, 0, 1) = 0 for every t ≤ B, so D(t, ·) is the best plan using discretised time ≤ t, and

    D(t, m, a) = max_{i<m, b∈{0,1}} D(t − g(i, m), i, b) + I_ext(i, m, b, a),

    one shifted array per step. Values are compared after rounding to 7 decimals; ties go to the
    plan using less time. Upstream starts from D(t, 0, 1) = 0 for t < B only, which additionally
    rejects plans whose discretised time is exactly 0.
    """
    axis = budget_units + 1
    value = {START: np.zeros(axis)}
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
    table: KnapsackTable, steps: list[Step], L: int, budget_units: int
) -> list[Step] | None:
    """Follow the argmax from the better of D(B, L, 0) and D(B, L, 1) back to position 0.

    The end state is picked with the same rule as inside the knapsack. Returns the chosen steps
    in order, or None when no plan fits the budget.
    """
    finals = [
        state
        for state in ((L, 0), (L, 1))
        if state in table.value and np.isfinite(table.value[state][budget_units])
    ]
    if not finals:
        return None
    state = max(
        finals,
        key=lambda final: (
            np.round(table.value[final][budget_units], ROUND_DECIMALS),
            -table.used[final][budget_units],
        ),
    )
    path: list[Step] = []
    t = budget_units
    while state != START:
        step = steps[table.choice[state][t]]
        path.append(step)
        t -= step.cost
        state = (step.start, step.start_act)
    return path[::-1]


def fastest_merge(
    L: int,
    segments: set[Segment],
    latency: dict[Segment, float],
    activations: frozenset[int],
) -> tuple[frozenset[int], float]:
    """Check step (notes §1, ``optimal_merge_pattern``): the fastest S ⊇ A on the raw T table.

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
) -> Solution:
    """Maximise Σ I_ext over the chosen steps subject to Σ ⌊prec · T_opt⌋ ≤ ⌊prec · budget⌋.

    ``budget`` (T0) is in the latency table's units (summed per-segment ms); ``prec`` is the
    number of knapsack time units per ms (20 for MobileNetV2, 10 for VGG upstream).
    ``block_ends`` are the positions where an a=0 state may appear (MobileNetV2 block ends).
    Raises DepthbenchError when no plan fits, naming what the fastest plan needs.
    """
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
    merge_table = optimal_merge_table(L, segments, latency)
    steps = knapsack_steps(
        segments, merge_table, extended_importance(L, importance, block_ends), prec
    )
    budget_units = math.floor(prec * budget)
    path = backtrack(knapsack(steps, budget_units), steps, L, budget_units)
    if path is None:
        raise _no_plan_error(L, steps, budget, prec, budget_units)
    return _checked_solution(L, segments, latency, merge_table, path)


def measured_entries(segments: Iterable[Segment], block_ends: frozenset[int]) -> list[Entry]:
    """The importance entries upstream measures with ``--exclude-zeros True`` (notes §1).

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
    path: list[Step],
) -> Solution:
    """Build the solution from the chosen steps and apply the check step.

    Upstream asserts that the DP's S is the fastest merge for its A. That fails when flooring or
    a rounding tie made the knapsack keep an a=0 boundary that a float-exact merge would drop; the
    network is the same (same A), so we keep the faster S and warn.
    """
    activations = frozenset(step.end for step in path if step.end_act == 1)
    dp_boundaries = frozenset(
        position
        for step in path
        for position in (*merge_table.breaks[(step.start, step.end)], step.end)
    )
    dp_latency = _table_latency(latency, dp_boundaries)
    boundaries, check_latency = fastest_merge(L, segments, latency, activations)
    assert check_latency <= dp_latency + LATENCY_TOLERANCE_MS, "check step found a slower merge"
    if check_latency < dp_latency - LATENCY_TOLERANCE_MS:
        warnings.warn(
            f"the DP's merge boundaries {sorted(dp_boundaries)} ({dp_latency:.6f} ms) are slower"
            f" than the fastest merge {sorted(boundaries)} ({check_latency:.6f} ms) for the same"
            " activations (a flooring or rounding tie kept an a=0 boundary); using the faster one",
            stacklevel=3,
        )
    else:
        boundaries, check_latency = dp_boundaries, dp_latency
    return Solution(
        activations=activations,
        boundaries=boundaries,
        objective=sum(step.importance for step in path),
        table_latency=check_latency,
        discretized_latency=sum(step.cost for step in path),
    )


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
    return DepthbenchError(
        f"no plan meets budget T0={budget:g} ({budget_units} units at prec {prec:g}); the"
        f" fastest plan needs {min(needed) / prec:g} (table units, {min(needed)} units); raise T0"
        " to at least that"
    )


def _check_zero_states(importance: dict[Entry, float], block_ends: frozenset[int]) -> None:
    """a=0 states exist only at block ends (notes §1); anything else is a mislabelled table."""
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


def _table_latency(latency: dict[Segment, float], boundaries: frozenset[int]) -> float:
    """Σ T over the segments between consecutive points of {0} ∪ S."""
    return sum(latency[segment] for segment in pairwise([0, *sorted(boundaries)]))
