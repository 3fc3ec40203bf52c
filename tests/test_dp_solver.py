"""The dp-depth solver against references that share no code with the DP.

- Stage 1 on the three upstream latency tables: scipy shortest paths and upstream's own recursion.
- Small random instances: every choice the surrogate allows, enumerated explicitly.
- MobileNetV2-1.0 with a synthetic importance table: the plan's structure and the check step.
- The upstream ``--exclude-zeros`` entry count (315).
"""

from __future__ import annotations

import importlib.resources
import math
import random
from dataclasses import dataclass
from functools import cache
from itertools import combinations, pairwise, product

import numpy as np
import pandas as pd
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path

from methods.dp_depth.solver import (
    Entry,
    Segment,
    extended_importance,
    measured_entries,
    optimal_merge_table,
    solve,
)
from suite.errors import DepthbenchError

REFERENCE = importlib.resources.files("suite") / "reference"
MBV2_10 = "ecdc__utils_table_mbv2_1.0_time_fish_gpu1_1228.csv"
MBV2_14 = "ecdc__utils_table_mbv2_1.4_time_fish_gpu1_0103.csv"
VGG19 = "ecdc__utils_table_vgg19_no_trt_time_fish_gpu1_0317.csv"
MBV2_STRIDE_BOUNDARIES = {5, 11, 20, 41}
MBV2_RESIDUAL_BLOCKS = [
    (5, 8), (11, 14), (14, 17), (20, 23), (23, 26), (26, 29), (32, 35), (35, 38), (41, 44), (44, 47)
]  # fmt: skip


def load_latency_table(name: str) -> tuple[int, set[Segment], dict[Segment, float]]:
    """An upstream T table: its rows are the valid segments, L is the largest end."""
    with (REFERENCE / name).open() as file:
        table = pd.read_csv(file)
    latency = {
        (int(start), int(end)): float(time)
        for start, end, time in zip(table.st, table.end, table.time, strict=True)
    }
    return int(table.end.max()), set(latency), latency


def mbv2_block_ends(width: float) -> frozenset[int]:
    """Block-end positions of MobileNetV2 from the derived position map."""
    with (REFERENCE / "derived_mbv2_position_map.csv").open() as file:
        positions = pd.read_csv(file)
    rows = positions[(positions.width == width) & (positions.block_end == 1)]
    return frozenset(int(position) for position in rows.position)


def shortest_paths(L: int, latency: dict[Segment, float]) -> np.ndarray:
    """All-pairs shortest paths over the DAG of valid segments (scipy Dijkstra)."""
    starts, ends = zip(*latency, strict=True)
    graph = csr_matrix((list(latency.values()), (starts, ends)), shape=(L + 1, L + 1))
    return shortest_path(graph, method="D", directed=True)


def is_valid_segment(
    i: int, j: int, stride_boundaries: set[int], residual_blocks: list[tuple[int, int]]
) -> bool:
    """The notes' stride and residual rules (§1 a, b)."""
    if any(i < b < j for b in stride_boundaries):
        return False
    return all(not (i < s < j < t) and not (s < i < t < j) for s, t in residual_blocks)


def test_segment_rule_reproduces_the_upstream_mbv2_table():
    L, segments, _ = load_latency_table(MBV2_10)
    rule = {
        (i, j)
        for i in range(L)
        for j in range(i + 1, L + 1)
        if is_valid_segment(i, j, MBV2_STRIDE_BOUNDARIES, MBV2_RESIDUAL_BLOCKS)
    }
    assert rule == segments


@pytest.mark.parametrize("table_name", [MBV2_10, MBV2_14, VGG19])
def test_stage1_equals_shortest_paths(table_name):
    L, segments, latency = load_latency_table(table_name)
    table = optimal_merge_table(L, segments, latency)
    distances = shortest_paths(L, latency)
    covered = {
        (i, j) for i in range(L) for j in range(i + 1, L + 1) if np.isfinite(distances[i, j])
    }
    assert set(table.time) == covered
    for i, j in covered:
        assert table.time[(i, j)] == pytest.approx(distances[i, j], abs=1e-12)
        pieces = list(pairwise((i, *table.breaks[(i, j)], j)))
        assert all(piece in segments for piece in pieces)
        assert sum(latency[piece] for piece in pieces) == pytest.approx(
            table.time[(i, j)], abs=1e-12
        )


@pytest.mark.parametrize("table_name", [MBV2_10, MBV2_14, VGG19])
def test_stage1_equals_upstream_recursion_on_valid_segments(table_name):
    """Upstream fills valid spans only, through valid prefixes (i, k)."""
    L, segments, latency = load_latency_table(table_name)
    upstream: dict[Segment, float] = {}
    for i, j in sorted(segments):
        upstream[(i, j)] = min(
            [latency[(i, j)]]
            + [
                upstream[(i, k)] + latency[(k, j)]
                for k in range(i + 1, j)
                if (i, k) in segments and (k, j) in segments
            ]
        )
    table = optimal_merge_table(L, segments, latency)
    assert {segment: table.time[segment] for segment in segments} == upstream


def test_stage1_mbv2_example_spans():
    L, segments, latency = load_latency_table(MBV2_10)
    table = optimal_merge_table(L, segments, latency)
    distances = shortest_paths(L, latency)
    for span in [(0, 5), (20, 40)]:
        print(f"MBV2-1.0 T_opt{span} = {table.time[span]!r} ms, breaks {table.breaks[span]}")
        assert table.time[span] == pytest.approx(distances[span], abs=1e-12)
    assert table.breaks[(0, 5)] == (1,)
    assert table.breaks[(20, 40)] == (38,)


@dataclass(frozen=True)
class Instance:
    """One solver input."""

    L: int
    segments: frozenset[Segment]
    latency: dict[Segment, float]
    importance: dict[Entry, float]
    block_ends: frozenset[int]
    budget: float
    prec: float

    def solve(self):
        return solve(
            self.L,
            set(self.segments),
            self.latency,
            self.importance,
            self.budget,
            self.prec,
            self.block_ends,
        )


def random_instance(seed: int) -> Instance:
    """A small chain with random stride boundaries, chained residual blocks, T, h and budget."""
    rng = random.Random(seed)
    L = rng.randint(1, 8)
    stride_boundaries = {b for b in range(1, L) if rng.random() < 0.2}
    residual_blocks = []
    position = 0
    while position + 2 <= L:
        if rng.random() < 0.4:
            end = rng.randint(position + 2, min(position + 3, L))
            residual_blocks.append((position, end))
            position = end
        else:
            position += 1
    segments = frozenset(
        (i, j)
        for i in range(L)
        for j in range(i + 1, L + 1)
        if is_valid_segment(i, j, stride_boundaries, residual_blocks)
    )
    block_ends = frozenset(p for p in range(1, L + 1) if rng.random() < 0.5)
    latency = {segment: rng.uniform(0.05, 2.0) for segment in sorted(segments)}
    importance = {}
    for i, j in sorted(segments):
        start_states = (1, 0) if i in block_ends else (1,)
        end_states = (1, 0) if j in block_ends else (1,)
        for a_i, a_j in product(start_states, end_states):
            if (a_i, a_j) == (1, 1) or rng.random() < 0.7:
                importance[(i, j, a_i, a_j)] = rng.uniform(-1.0, 0.5)
    all_single = sum(latency[(p, p + 1)] for p in range(L))
    return Instance(
        L=L,
        segments=segments,
        latency=latency,
        importance=importance,
        block_ends=block_ends,
        budget=rng.uniform(0.3, 1.0) * all_single,
        prec=rng.choice((1, 2, 5, 10)),
    )


def brute_force(instance: Instance) -> tuple[float, set[frozenset[int]]] | None:
    """Enumerate every plan the surrogate allows; return the best objective and its A sets.

    A plan: boundaries 0 < b_1 < ... < L with states (a_0 = 1; a=0 only at block ends), each
    step a valid segment; per step, every set of inner a=0 chain points whose pieces are all
    measured (importance: the best), and every set of inner merge boundaries whose pieces are
    all valid (latency: the fastest). Feasible when Σ ⌊prec · latency⌋ ≤ ⌊prec · T0⌋.
    """
    fusion, importance = _brute_force_tables(instance)
    budget_units = math.floor(instance.prec * instance.budget)
    plans = []
    inner_states = [
        (None, 1, 0) if p in instance.block_ends else (None, 1) for p in range(1, instance.L)
    ]
    final_states = (1, 0) if instance.L in instance.block_ends else (1,)
    for labels in product(*inner_states, final_states):
        points = [(0, 1)] + [(p, a) for p, a in enumerate(labels, start=1) if a is not None]
        value, cost = 0.0, 0
        for (i, a_i), (j, a_j) in pairwise(points):
            h = importance(i, j, a_i, a_j)
            if (i, j) not in instance.segments or h is None:
                break
            value += h
            cost += math.floor(instance.prec * fusion(i, j))
        else:
            if cost <= budget_units:
                plans.append((value, frozenset(p for p, a in points[1:] if a == 1)))
    if not plans:
        return None
    best = max(value for value, _ in plans)
    return best, {activations for value, activations in plans if value >= best - 1e-9}


def _brute_force_tables(instance: Instance):
    """Per-span fastest fusion and best importance chain, by enumerating inner point sets."""

    @cache
    def fusion(i: int, j: int) -> float | None:
        times = [
            sum(instance.latency[piece] for piece in pairwise((i, *cut, j)))
            for size in range(j - i)
            for cut in combinations(range(i + 1, j), size)
            if all(piece in instance.segments for piece in pairwise((i, *cut, j)))
        ]
        return min(times, default=None)

    @cache
    def importance(i: int, j: int, a_i: int, a_j: int) -> float | None:
        chain_points = sorted(p for p in instance.block_ends if i < p < j)
        values = []
        for size in range(len(chain_points) + 1):
            for cut in combinations(chain_points, size):
                states = (a_i, *([0] * size), a_j)
                pieces = [
                    (s, e, a_s, a_e)
                    for (s, e), (a_s, a_e) in zip(
                        pairwise((i, *cut, j)), pairwise(states), strict=True
                    )
                ]
                if all(piece in instance.importance for piece in pieces):
                    values.append(sum(instance.importance[piece] for piece in pieces))
        return max(values, default=None)

    return fusion, importance


@pytest.mark.filterwarnings("ignore:the DP's merge boundaries")
@pytest.mark.parametrize("seed", range(300))
def test_solve_equals_brute_force(seed):
    instance = random_instance(seed)
    optimum = brute_force(instance)
    if optimum is None:
        with pytest.raises(DepthbenchError, match="no plan meets budget"):
            instance.solve()
        return
    best_value, best_activation_sets = optimum
    solution = instance.solve()
    assert solution.objective == pytest.approx(best_value, abs=1e-9)
    assert solution.activations in best_activation_sets
    assert solution.discretized_latency <= math.floor(instance.prec * instance.budget)
    assert solution.activations <= solution.boundaries
    assert instance.L in solution.boundaries and 0 not in solution.boundaries
    pieces = list(pairwise([0, *sorted(solution.boundaries)]))
    assert all(piece in instance.segments for piece in pieces)
    assert solution.table_latency == pytest.approx(
        sum(instance.latency[piece] for piece in pieces), abs=1e-9
    )
    fusion, _ = _brute_force_tables(instance)
    activation_free_spans = pairwise([0, *sorted(solution.activations | {instance.L})])
    assert solution.table_latency == pytest.approx(
        sum(fusion(i, j) for i, j in activation_free_spans), abs=1e-9
    )


def test_brute_force_instances_cover_both_outcomes():
    outcomes = [brute_force(random_instance(seed)) is None for seed in range(300)]
    assert 10 <= sum(outcomes) <= 150


def test_no_feasible_plan_names_budget_and_fastest_plan():
    L, segments, latency = load_latency_table(MBV2_10)
    importance = synthetic_importance(segments, mbv2_block_ends(1.0))
    with pytest.raises(DepthbenchError, match=r"no plan meets budget T0=5 .*fastest plan needs"):
        solve(L, segments, latency, importance, 5.0, 20, mbv2_block_ends(1.0))


def test_check_step_drops_an_a0_boundary_that_flooring_favoured():
    """T(0,1) = T(1,2) = 0.04 floor to 0 units each, T(0,2) = 0.07 to 1 unit: the DP splits at the
    a=0 boundary 1 (equal importance, less discretised time), the fastest merge for A = {2} does
    not."""
    segments = {(0, 1), (1, 2), (0, 2)}
    latency = {(0, 1): 0.04, (1, 2): 0.04, (0, 2): 0.07}
    importance = {
        (0, 1, 1, 1): -5.0,
        (0, 1, 1, 0): 0.5,
        (1, 2, 1, 1): -5.0,
        (1, 2, 0, 1): 0.5,
        (0, 2, 1, 1): 1.0,
    }
    with pytest.warns(UserWarning, match="using the faster one"):
        solution = solve(2, segments, latency, importance, 1.0, 20, frozenset({1}))
    assert solution.activations == {2}
    assert solution.boundaries == {2}
    assert solution.table_latency == pytest.approx(0.07)
    assert solution.discretized_latency == 0


def test_extended_importance_rejects_a0_off_block_ends():
    with pytest.raises(DepthbenchError, match="not a block end"):
        extended_importance(2, {(0, 1, 1, 0): 0.1, (1, 2, 0, 1): 0.1}, frozenset({2}))


def test_solve_rejects_importance_off_valid_segments():
    with pytest.raises(DepthbenchError, match="not on valid segments"):
        solve(2, {(0, 1), (1, 2)}, {(0, 1): 1.0, (1, 2): 1.0}, {(0, 2, 1, 1): 0.1}, 5.0, 10)


def test_stage1_rejects_segments_without_latency():
    with pytest.raises(DepthbenchError, match=r"no time for valid segments \[\(1, 2\)\]"):
        optimal_merge_table(2, {(0, 1), (1, 2)}, {(0, 1): 1.0})


def synthetic_importance(
    segments: set[Segment], block_ends: frozenset[int], seed: int = 0
) -> dict[Entry, float]:
    """A seeded stand-in for the unavailable upstream table: longer segments cost more accuracy."""
    rng = np.random.default_rng(seed)
    return {
        (i, j, a_i, a_j): float(0.5 - 0.3 * (j - i) + rng.normal(scale=0.2))
        for i, j, a_i, a_j in measured_entries(segments, block_ends)
    }


def test_mbv2_synthetic_plan_is_consistent():
    L, segments, latency = load_latency_table(MBV2_10)
    block_ends = mbv2_block_ends(1.0)
    budget, prec = 25.0, 20
    solution = solve(
        L, segments, latency, synthetic_importance(segments, block_ends), budget, prec, block_ends
    )
    print(solution)
    assert solution.activations <= solution.boundaries
    pieces = list(pairwise([0, *sorted(solution.boundaries)]))
    assert all(piece in segments for piece in pieces)
    assert solution.discretized_latency <= budget * prec
    assert solution.table_latency <= budget + len(pieces) / prec
    distances = shortest_paths(L, latency)
    fastest_for_activations = sum(
        distances[i, j] for i, j in pairwise([0, *sorted(solution.activations | {L})])
    )
    assert solution.table_latency == pytest.approx(fastest_for_activations, abs=1e-9)


@pytest.mark.parametrize("table_name", [MBV2_10, MBV2_14])
def test_measured_entries_match_upstream_count(table_name):
    _, segments, _ = load_latency_table(table_name)
    block_ends = mbv2_block_ends(1.0 if table_name == MBV2_10 else 1.4)
    entries = measured_entries(segments, block_ends)
    assert len(set(entries)) == len(entries) == 315
    without_exclude_zeros = sum(
        (1 + (i in block_ends)) * (1 + (j in block_ends)) for i, j in segments
    )
    assert without_exclude_zeros == 405
