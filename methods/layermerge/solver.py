"""LayerMerge's one-stage dynamic program (Kim, El Halabi, Ji, Song, ICML 2024, Algorithm 1), on
plain tables.

The solver knows nothing about torch or the chain: positions are 0..L, an *entry* is one option c
of a valid segment (i, j] with its latency T(i, j, c) (table ms) and importance I(i, j, c). A plan
is a chain of entries 0 = b_0 < b_1 < … < b_m = L, one option per segment, and the problem is

    maximise Σ_r I(b_{r−1}, b_r, c_r)   subject to   Σ_r g(b_{r−1}, b_r, c_r) ≤ B,

with g = int(T · prec) and B = int(T0 · prec) (truncation of the float products, as upstream).

The recurrence, over positions j and discretised times t (``knapsack``):

    M(0, t) = 0                                        for 0 ≤ t < B   (upstream: t = B excluded)
    M(j, t) = max_{entries (i, j, c), M(i, t − g) defined} M(i, t − g) + I(i, j, c)
    answer  = M(L, B)

so the optimum is over the plans with 1 ≤ Σ g ≤ B (a plan with Σ g = 0 is unreachable, upstream's
init; harmless unless every entry floors to 0). Ties: a candidate replaces the incumbent if its
value rounded to 7 decimals is larger, or equal with a smaller accumulated Σ g; on a full tie the
first candidate wins (smallest i, then the option's place in the table). The same comparison as
the 2023 method (``methods.dp_depth.solver.improves``).

Upstream aborts ("Impossible time limit") as soon as one position j has every incoming entry above
B, even when the optimum jumps over j. ``official=True`` reproduces that abort; by default such a
position is just unreachable and the DP goes on (the paper's DP).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from methods.dp_depth.solver import improves
from suite.errors import DepthbenchError


@dataclass(frozen=True)
class Entry:
    """Option ``option`` of segment (start, end]: table latency (ms) and importance."""

    start: int
    end: int
    option: Hashable
    latency: float
    importance: float

    def cost(self, prec: float) -> int:
        """g = int(T · prec): truncation of the float product, as upstream."""
        return int(self.latency * prec)


@dataclass(frozen=True)
class Solution:
    """The chosen entries in order; ``objective`` = Σ I, ``table_latency`` = Σ T (ms, unrounded),
    ``discretized_latency`` = Σ g ≤ B. The float sum may exceed T0 by < (#entries)/prec."""

    entries: tuple[Entry, ...]
    objective: float
    table_latency: float
    discretized_latency: int

    @property
    def boundaries(self) -> frozenset[int]:
        """S: the end of every chosen segment (without 0, with L)."""
        return frozenset(entry.end for entry in self.entries)


@dataclass(frozen=True)
class DPTable:
    """M over t = 0..B for every position reached: ``value`` (−inf where undefined), ``used`` (the
    accumulated Σ g, the tie-breaker) and ``choice`` (index of the last entry)."""

    value: dict[int, np.ndarray]
    used: dict[int, np.ndarray]
    choice: dict[int, np.ndarray]


def ordered(entries: Sequence[Entry]) -> list[Entry]:
    """Entries by end, then start; within a segment the given (table) order is kept."""
    return sorted(entries, key=lambda entry: (entry.end, entry.start))


def knapsack(
    L: int, entries: list[Entry], budget_units: int, prec: float, official: bool
) -> DPTable:
    """The recurrence above, vectorised over t; ``entries`` as ``ordered`` returns them."""
    axis = budget_units + 1
    value = {0: np.where(np.arange(axis) < budget_units, 0.0, -np.inf)}
    used = {0: np.zeros(axis, dtype=np.int64)}
    choice: dict[int, np.ndarray] = {}
    by_end: dict[int, list[int]] = {}
    for index, entry in enumerate(entries):
        by_end.setdefault(entry.end, []).append(index)
    for j in range(1, L + 1):
        incoming = by_end.get(j, [])
        if not incoming:
            continue
        if official and min(entries[k].cost(prec) for k in incoming) > budget_units:
            raise DepthbenchError(
                f"Impossible time limit: every entry ending at position {j} costs more than the "
                f"budget B = {budget_units} units (official early abort; the default DP would skip"
                " the position)"
            )
        best = np.full(axis, -np.inf)
        best_used = np.zeros(axis, dtype=np.int64)
        best_choice = np.full(axis, -1)
        for index in incoming:
            entry = entries[index]
            g = entry.cost(prec)
            if entry.start not in value or g > budget_units:
                continue
            candidate = np.full(axis, -np.inf)
            candidate[g:] = value[entry.start][: axis - g] + entry.importance
            candidate_used = np.zeros(axis, dtype=np.int64)
            candidate_used[g:] = used[entry.start][: axis - g] + g
            better = improves(candidate, candidate_used, best, best_used)
            best[better] = candidate[better]
            best_used[better] = candidate_used[better]
            best_choice[better] = index
        if np.isfinite(best).any():
            value[j], used[j], choice[j] = best, best_used, best_choice
    return DPTable(value, used, choice)


def backtrack(table: DPTable, entries: list[Entry], L: int, budget_units: int, prec: float):
    """The chosen entries from M(L, B) back to position 0, in order; None when M(L, B) is
    undefined (no plan fits)."""
    if L not in table.value or not np.isfinite(table.value[L][budget_units]):
        return None
    path: list[Entry] = []
    position, t = L, budget_units
    while position != 0:
        entry = entries[table.choice[position][t]]
        path.append(entry)
        t -= entry.cost(prec)
        position = entry.start
    return path[::-1]


def solve(
    L: int, entries: Sequence[Entry], budget: float, prec: float, official: bool = False
) -> Solution:
    """Maximise Σ I subject to Σ int(T · prec) ≤ int(T0 · prec), T0 = ``budget`` (table ms).

    Raises DepthbenchError when no plan fits, naming what the fastest plan needs.
    """
    if budget <= 0 or prec <= 0:
        raise DepthbenchError(
            f"budget T0 and prec must be positive, got T0={budget}, prec={prec}; pass e.g."
            " T0=13.4, prec=10 for MobileNetV2-1.0"
        )
    _check_entries(L, entries)
    chain = ordered(entries)
    budget_units = int(budget * prec)
    table = knapsack(L, chain, budget_units, prec, official)
    path = backtrack(table, chain, L, budget_units, prec)
    if path is None:
        raise _no_plan_error(L, chain, budget, prec, budget_units)
    objective = 0.0
    for entry in path:  # the DP's own summation order, so objective == M(L, B) exactly
        objective += entry.importance
    return Solution(
        entries=tuple(path),
        objective=objective,
        table_latency=math.fsum(entry.latency for entry in path),
        discretized_latency=sum(entry.cost(prec) for entry in path),
    )


def _check_entries(L: int, entries: Sequence[Entry]) -> None:
    """Entries are joined by key: each (start, end, option) once, on a segment of 0..L."""
    seen: set[tuple[int, int, Hashable]] = set()
    for entry in entries:
        key = (entry.start, entry.end, entry.option)
        if not 0 <= entry.start < entry.end <= L:
            raise DepthbenchError(f"entry {key} is not a segment of the chain 0..{L}")
        if key in seen:
            raise DepthbenchError(
                f"entry {key} appears twice; give each (segment, option) one latency and one"
                " importance"
            )
        if entry.latency < 0 or not math.isfinite(entry.importance):
            raise DepthbenchError(
                f"entry {key} has latency {entry.latency} and importance {entry.importance};"
                " both must be finite and the latency non-negative"
            )
        seen.add(key)


def fastest_units(L: int, entries: Sequence[Entry], prec: float) -> int | None:
    """min Σ g over the complete plans (None when no chain of entries reaches L)."""
    fastest = {0: 0}
    for entry in ordered(entries):
        if entry.start in fastest:
            reach = fastest[entry.start] + entry.cost(prec)
            fastest[entry.end] = min(fastest.get(entry.end, reach), reach)
    return fastest.get(L)


def _no_plan_error(
    L: int, entries: list[Entry], budget: float, prec: float, budget_units: int
) -> DepthbenchError:
    """Name the budget and what the fastest plan needs."""
    fastest = fastest_units(L, entries, prec)
    if fastest is None:
        return DepthbenchError(
            f"the tables have no chain of entries from position 0 to L={L}; give every valid"
            " segment its options"
        )
    needed = max(fastest, 1)  # upstream's init also rejects Σ g = 0
    return DepthbenchError(
        f"no plan meets budget T0={budget:g} ({budget_units} units at prec {prec:g}); the"
        f" fastest plan needs {needed / prec:g} (table units, {needed} units); raise T0 to at"
        " least that"
    )
