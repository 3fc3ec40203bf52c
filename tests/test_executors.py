"""Executors: in-process, and Ray against a real local cluster (skipped when Ray is missing)."""

import importlib.util
import itertools
import os
import time

import pytest

from suite.errors import DepthbenchError
from suite.run.executors import InProcessExecutor, RayExecutor

HAS_RAY = importlib.util.find_spec("ray") is not None
LANE = "profile:test-lane"


def square(x: int) -> int:
    return x * x


def timed_nap(item: int) -> tuple[int, float, float, int]:
    """(item, start, end, pid): when and where the item ran."""
    start = time.time()
    time.sleep(0.3)
    return item, start, time.time(), os.getpid()


class Counter:
    """A function with state: how many items this copy of it has seen."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, item: int) -> int:
        self.seen += 1
        return self.seen


def overlaps(spans: list[tuple[int, float, float, int]]) -> bool:
    ordered = sorted(spans, key=lambda span: span[1])
    return any(later[1] < earlier[2] for earlier, later in itertools.pairwise(ordered))


def test_in_process_executor_calls_fn_here_in_order():
    with InProcessExecutor() as executor:
        results = list(executor.map(timed_nap, [1, 2, 3], {LANE: 1}))

    assert [item for item, *_ in results] == [1, 2, 3]
    assert {pid for *_, pid in results} == {os.getpid()}
    assert not overlaps(results)


def test_in_process_executor_keeps_fn_state_across_items():
    counter = Counter()

    assert list(InProcessExecutor().map(counter, range(4))) == [1, 2, 3, 4]


NO_RAY = "ray is not installed (pip install 'depthbench[ray]')"
needs_ray = pytest.mark.skipif(not HAS_RAY, reason=NO_RAY)


@needs_ray
@pytest.mark.slow
def test_ray_executor_starts_a_local_cluster_advertising_the_lane_and_stops_it():
    import ray

    with RayExecutor(node_resources={LANE: 1}) as executor:
        assert ray.cluster_resources()[LANE] == 1
        results = list(executor.map(timed_nap, [0, 1], {LANE: 1}))

    assert not overlaps(results)
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster of 2 CPUs, one node advertising one unit of the lane resource."""
    if not HAS_RAY:
        pytest.skip(NO_RAY)
    import ray

    ray.init(num_cpus=2, resources={LANE: 1}, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_ray_executor_maps_every_item_in_other_processes(ray_cluster):
    with RayExecutor() as executor:
        results = list(executor.map(timed_nap, list(range(4))))

    assert sorted(item for item, *_ in results) == [0, 1, 2, 3]
    assert os.getpid() not in {pid for *_, pid in results}
    assert overlaps(results), "two CPUs and no resource request: lanes run side by side"


def test_ray_lanes_holding_a_one_unit_resource_never_overlap(ray_cluster):
    with RayExecutor() as executor:
        results = list(executor.map(timed_nap, list(range(4)), {LANE: 1}))

    assert sorted(item for item, *_ in results) == [0, 1, 2, 3]
    assert not overlaps(results)
    assert len({pid for *_, pid in results}) == 1  # one lane: one node, one unit


def test_a_ray_lane_keeps_its_state_across_items(ray_cluster):
    with RayExecutor() as executor:
        assert sorted(executor.map(Counter(), list(range(3)), {LANE: 1})) == [1, 2, 3]


def test_ray_executor_joins_a_running_cluster_and_leaves_it_running(ray_cluster):
    with RayExecutor() as executor:
        assert sorted(executor.map(square, [2, 3])) == [4, 9]

    assert ray_cluster.is_initialized()


def test_ray_executor_refuses_a_resource_no_node_offers(ray_cluster):
    with RayExecutor() as executor:
        with pytest.raises(DepthbenchError, match="no node of the Ray cluster offers 'profile:x'"):
            list(executor.map(square, [1], {"profile:x": 1}))
