"""The LayerMerge DP against references that share no code with it.

- Brute force: every chain of segments and every option per segment, enumerated explicitly, on
  random small instances (also quantised, so that values tie and the minimum time decides).
- The 2023 method's stage 2 (``methods.dp_depth.solver``) when every segment has only its keep-all
  option and T is its own stage-1 optimum (T_opt = T), with a ≡ 1.
- The discretisation (truncation) and upstream's early abort (``official``).
"""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from methods.dp_depth.solver import optimal_merge_table
from methods.dp_depth.solver import solve as solve_2023
from methods.layermerge.solver import Entry, solve
from suite.errors import DepthbenchError

ROUND = 7


def random_instance(rng: random.Random, quantised: bool) -> tuple[int, list[Entry]]:
    """L ≤ 8, a random set of segments (single units mostly present, so most instances are
    solvable, some positions unreachable), 1-3 options each."""
    L = rng.randint(1, 8)
    entries = []
    for i in range(L):
        for j in range(i + 1, L + 1):
            if rng.random() > (0.9 if j == i + 1 else 0.45):
                continue
            for option in range(rng.randint(1, 3)):
                if quantised:
                    latency = rng.choice([0.1, 0.2, 0.3, 0.5, 1.0])
                    importance = rng.choice([0.5, 0.75, 1.0])
                else:
                    latency = rng.uniform(0.05, 3)
                    importance = rng.uniform(0.3, 1.05)
                entries.append(Entry(i, j, option, latency, importance))
    rng.shuffle(entries)  # the solver joins by key and orders by itself
    entries.sort(key=lambda e: (e.start, e.end, e.option))  # keep table order within a segment
    return L, entries


def all_plans(L: int, entries: list[Entry]):
    """Every chain of entries from 0 to L (depth-first, no DP)."""
    starting = {}
    for entry in entries:
        starting.setdefault(entry.start, []).append(entry)

    def walk(position, path):
        if position == L:
            yield list(path)
            return
        for entry in starting.get(position, []):
            path.append(entry)
            yield from walk(entry.end, path)
            path.pop()

    yield from walk(0, [])


def brute_force(L: int, entries: list[Entry], t0: float, prec: float):
    """(best rounded value, least Σ g among the plans with it) over plans with 1 ≤ Σ g ≤ B."""
    budget = int(t0 * prec)
    feasible = []
    for plan in all_plans(L, entries):
        used = sum(int(entry.latency * prec) for entry in plan)
        if 1 <= used <= budget:
            feasible.append((round(sum(entry.importance for entry in plan), ROUND), used))
    if not feasible:
        return None
    best = max(value for value, _ in feasible)
    return best, min(used for value, used in feasible if value == best)


@pytest.mark.parametrize("quantised", [False, True])
def test_the_dp_equals_brute_force_on_random_small_instances(quantised):
    rng = random.Random(2024 + quantised)
    solved = infeasible = ties_decided = 0
    for _ in range(250):
        L, entries = random_instance(rng, quantised)
        prec = rng.choice([10, 4, 2.5])
        t0 = rng.uniform(0.05, 2.0 * L)
        expected = brute_force(L, entries, t0, prec)
        if expected is None:
            with pytest.raises(DepthbenchError, match="no plan meets budget|no chain of entries"):
                solve(L, entries, t0, prec)
            infeasible += 1
            continue
        solution = solve(L, entries, t0, prec)
        assert (round(solution.objective, ROUND), solution.discretized_latency) == expected
        assert [e.end for e in solution.entries][-1] == L
        assert all(a.end == b.start for a, b in pairwise(solution.entries))
        assert solution.entries[0].start == 0
        assert solution.discretized_latency == sum(int(e.latency * prec) for e in solution.entries)
        solved += 1
        plans = [p for p in all_plans(L, entries)]
        values = {round(sum(e.importance for e in p), ROUND) for p in plans}
        ties_decided += len(values) < len(plans)
    assert solved >= 150 and infeasible >= 10  # both branches are really exercised
    if quantised:
        assert ties_decided >= 100


def test_discretisation_truncates_the_float_products():
    # 0.29 * 100 = 28.999999999999996 -> 28 units; a budget of T0 = 0.29 is 28 units too
    assert Entry(0, 1, "a", 0.29, 1.0).cost(100) == 28
    entries = [Entry(0, 1, "a", 0.29, 1.0), Entry(0, 1, "b", 0.3, 2.0)]
    assert solve(1, entries, 0.29, 100).entries[0].option == "a"  # 0.3 costs 30 > 28
    assert solve(1, entries, 0.30, 100).entries[0].option == "b"


def test_a_plan_of_zero_units_is_rejected_as_upstream():
    # every entry floors to 0 units: M(0, B) is undefined, so no plan has Σ g = 0
    with pytest.raises(DepthbenchError, match="no plan meets budget"):
        solve(1, [Entry(0, 1, "a", 0.01, 1.0)], 1.0, 10)


def test_equal_values_go_to_the_faster_plan_then_the_first_entry():
    entries = [
        Entry(0, 2, "slow", 0.5, 1.0),
        Entry(0, 2, "fast", 0.3, 1.0),
        Entry(0, 2, "fast-too", 0.3, 1.0),
    ]
    assert solve(2, entries, 1.0, 10).entries[0].option == "fast"
    # a full tie (value and time) between (0, 2] and (0, 1] + (1, 2]: the smallest start wins
    split = [Entry(1, 2, "a", 0.1, 0.5), Entry(0, 1, "a", 0.1, 0.5), Entry(0, 2, "a", 0.2, 1.0)]
    assert [e.end for e in solve(2, split, 1.0, 10).entries] == [2]


def test_the_official_switch_aborts_where_the_paper_dp_jumps_over():
    entries = [Entry(0, 1, "a", 5.0, 1.0), Entry(1, 2, "a", 0.1, 1.0), Entry(0, 2, "a", 0.2, 0.5)]
    assert [e.end for e in solve(2, entries, 1.0, 10).entries] == [2]
    with pytest.raises(DepthbenchError, match="Impossible time limit.*position 1"):
        solve(2, entries, 1.0, 10, official=True)


def test_the_official_switch_changes_nothing_where_it_does_not_abort():
    rng = random.Random(7)
    agreed = 0
    for _ in range(200):
        L, entries = random_instance(rng, quantised=False)
        t0 = rng.uniform(0.05, 2.0 * L)
        try:
            official = solve(L, entries, t0, 10, official=True)
        except DepthbenchError:
            continue
        assert official == solve(L, entries, t0, 10)
        agreed += 1
    assert agreed >= 50


def test_entries_are_joined_by_key_and_checked():
    with pytest.raises(DepthbenchError, match="appears twice"):
        solve(1, [Entry(0, 1, "a", 0.2, 1.0), Entry(0, 1, "a", 0.3, 1.0)], 1.0, 10)
    with pytest.raises(DepthbenchError, match="not a segment"):
        solve(1, [Entry(0, 2, "a", 0.2, 1.0)], 1.0, 10)


def test_keep_all_options_only_reduce_to_the_2023_stage_2():
    """T = T_opt (stage 1 changes nothing), h(i, j, 1, 1) = I, no block ends: the 2023 method's
    plan is LayerMerge's (its S = A is the chosen segment ends). Every T ≥ 0.15 ms, so every entry
    costs at least one unit at prec ≥ 10 and the two initialisations (t < B, t ≤ B) agree."""
    rng = random.Random(2023)
    compared = 0
    for _ in range(200):
        L = rng.randint(1, 8)
        segments = {(p - 1, p) for p in range(1, L + 1)}
        segments |= {(i, j) for i in range(L) for j in range(i + 2, L + 1) if rng.random() < 0.5}
        raw = {segment: rng.uniform(0.15, 3) for segment in segments}
        latency = {s: optimal_merge_table(L, segments, raw).time[s] for s in segments}
        importance = {(i, j): rng.choice([rng.uniform(0.3, 1.05), 0.5, 1.0]) for i, j in segments}
        prec = rng.choice([10, 20])
        t0 = rng.uniform(0.1, 1.5 * L)
        entries = [Entry(i, j, "all", latency[(i, j)], importance[(i, j)]) for i, j in segments]
        h = {(i, j, 1, 1): value for (i, j), value in importance.items()}
        try:
            expected = solve_2023(L, segments, latency, h, t0, prec)
        except DepthbenchError:
            with pytest.raises(DepthbenchError, match="no plan meets budget"):
                solve(L, entries, t0, prec)
            continue
        solution = solve(L, entries, t0, prec)
        assert solution.boundaries == expected.activations
        assert round(solution.objective, ROUND) == round(expected.objective, ROUND)
        assert solution.discretized_latency == expected.discretized_latency
        compared += 1
    assert compared >= 100
