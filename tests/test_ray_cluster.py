"""Work items on a real local Ray cluster: a head that runs nothing and two worker nodes of one
CPU each, one of them standing for a profile (``{"profile:<name>": 1}``), the other not.

Entries spread over both nodes; a profile's segments run only on its node; a worker killed in the
middle of a table costs nothing (its item is retried, every segment lands in the cache once);
progress reported in a lane reaches the driver. Each result records the node that computed it.
The profile is the deterministic cost model under a name of its own, so its custom resource is
this test's. A short real MobileNetV2 (L = 14) on real digits at smoke fidelity keeps it quick.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset
from torchvision.models import MobileNetV2

from methods.dp_depth.importance import importance_entries, importance_table
from suite.core.trace import trace
from suite.measure.profiles import PROJECT_PROFILE_DIR, load_profile, measurement_resources
from suite.measure.tables import TableCache, build_table
from suite.run.data import load_data
from suite.run.executors import RayExecutor
from suite.run.train import FinetuneRecipe
from tests.conftest import randomize_batchnorm

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed"),
]

SHORT_MBV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s
PROFILE_NAME = "cluster-test-costmodel"


@dataclass(frozen=True)
class OnNode:
    """Runs ``fn`` and says on which node, and (optionally) sleeps first and logs its pid, so
    that the test can kill the worker while the item runs."""

    fn: object
    log: Path | None = None
    nap_s: float = 0.0

    def __call__(self, item):
        import ray

        if self.log is not None:
            with self.log.open("a") as file:
                file.write(f"{os.getpid()}\n")
        time.sleep(self.nap_s)
        return ray.get_runtime_context().get_node_id(), self.fn(item)


def recording(executor: RayExecutor, nodes: list[str], **on_node):
    """The executor's item map from the driver, wrapped to record the node of every result."""
    map_items = executor.item_map()

    def map_and_record(fn, items, resources=None):
        for node, result in map_items(OnNode(fn, **on_node), items, resources):
            nodes.append(node)
            yield result

    return map_and_record


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    measuring = cluster.add_node(num_cpus=1, resources={f"profile:{PROFILE_NAME}": 1})
    computing = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, include_dashboard=False)
    cluster.wait_for_nodes()
    yield measuring.node_id, computing.node_id
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """cpu-costmodel under this test's own name (and so its own custom resource)."""
    text = (PROJECT_PROFILE_DIR / "cpu-costmodel.yaml").read_text()
    path = tmp_path_factory.mktemp("profile") / f"{PROFILE_NAME}.yaml"
    path.write_text(text.replace("name: cpu-costmodel", f"name: {PROFILE_NAME}"))
    loaded = load_profile(path)
    assert measurement_resources(loaded) == {f"profile:{PROFILE_NAME}": 1}
    return loaded


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2)
    return trace(randomize_batchnorm(model), 32, "mbv2-short")


@pytest.fixture(scope="module")
def data():
    digits = load_data("digits", resolution=32)
    return replace(digits, holdout=Subset(digits.holdout, range(16)))


def cached_rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT signature FROM segment_latency")]


def test_entries_spread_over_both_nodes_and_score_as_they_do_here(cluster, traced, data, tmp_path):
    entries = importance_entries(traced.chain.segments("upstream"), traced.chain, True)
    here = importance_table(traced, data, entries, FinetuneRecipe(steps=1), "smoke", tmp_path / "a")
    nodes: list[str] = []

    with RayExecutor() as executor:
        table = importance_table(
            traced, data, entries, FinetuneRecipe(steps=1), "smoke", tmp_path / "b",
            map_items=recording(executor, nodes),
        )  # fmt: skip

    assert table.scores == here.scores and table.computed == len(entries)
    assert len(nodes) == len(entries)
    assert set(nodes) == set(cluster), "one CPU each: both nodes score entries"
    assert len(list((tmp_path / "b").rglob("*.json"))) == len(entries)  # cached by the driver


def test_a_profiles_segments_run_only_on_the_node_standing_for_it(
    cluster, profile, traced, tmp_path
):
    measuring, _ = cluster
    here = build_table(traced.chain, profile)
    nodes: list[str] = []

    with RayExecutor() as executor:
        table = build_table(
            traced.chain,
            profile,
            cache=TableCache(tmp_path / "latency.sqlite"),
            map_items=recording(executor, nodes),
        )

    assert table.latency_ms == here.latency_ms
    assert len(nodes) == table.measured > 0 and set(nodes) == {measuring}
    assert len(cached_rows(tmp_path / "latency.sqlite")) == table.measured


def test_a_worker_killed_mid_table_loses_nothing(cluster, profile, traced, tmp_path):
    log = tmp_path / "started.log"
    log.touch()
    killed: list[int] = []

    def kill_the_first_worker() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            pids = log.read_text().split()
            if pids:
                killed.append(int(pids[0]))
                os.kill(killed[0], signal.SIGKILL)  # mid-item: it naps after logging its pid
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_worker)
    killer.start()
    nodes: list[str] = []
    with RayExecutor() as executor:
        table = build_table(
            traced.chain,
            profile,
            cache=TableCache(tmp_path / "latency.sqlite"),
            map_items=recording(executor, nodes, log=log, nap_s=0.5),
        )
    killer.join()

    assert killed, "the test killed no worker"
    started = log.read_text().split()
    assert len(started) > table.measured, "the killed item ran again"
    rows = cached_rows(tmp_path / "latency.sqlite")
    assert len(rows) == len(set(rows)) == table.measured == len(nodes)
    assert table.latency_ms == build_table(traced.chain, profile).latency_ms


@dataclass(frozen=True)
class Reports:
    """A cell stand-in that reports progress through the relay and returns its item."""

    progress: object

    def __call__(self, item: int) -> int:
        self.progress("segments", item, 3)
        return item


def test_progress_reported_in_a_lane_reaches_the_driver(cluster):
    received: list[tuple] = []

    with RayExecutor() as executor:
        relay = executor.relay(lambda *report: received.append(report))
        lane = {f"profile:{PROFILE_NAME}": 1}
        assert sorted(executor.map(Reports(relay), [1, 2, 3], lane)) == [1, 2, 3]

    assert sorted(received) == [("segments", 1, 3), ("segments", 2, 3), ("segments", 3, 3)]
