"""Work items without a cluster: the serial default, how a method hands its tables' items to
``PlanContext.map_items``, and the caches as the record of what is done.

The network is a short real MobileNetV2 (L = 14) on real digits; latencies come from the
deterministic cost-model profile. The Ray side is in tests/test_ray_cluster.py.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import pytest
import torch
from torch.utils.data import Subset
from torchvision.models import MobileNetV2

from methods.dp_depth.importance import importance_entries, importance_table
from methods.dp_depth.method import DpDepthConfig, measure_importance
from suite.console import Steps
from suite.core.items import serial_map
from suite.core.trace import trace
from suite.measure.profiles import PROJECT_PROFILE_DIR, load_profile
from suite.run.cell import plan_context
from suite.run.data import load_data
from suite.run.executors import CoreItems, InProcessExecutor, RayItems, usable_cores
from suite.run.train import FinetuneRecipe
from tests.conftest import randomize_batchnorm

SHORT_MBV2 = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]]  # t, c, n, s
SMOKE = DpDepthConfig(importance_fidelity="smoke")
SLOT = {"profile:cpu-costmodel": 1}


def where(item: int) -> tuple[int, int]:
    return item, os.getpid()


class Recorder:
    """A ``MapItems`` that runs items serially and records each call: (resources, items)."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, list]] = []

    def __call__(self, fn, items, resources=None):
        self.calls.append((resources, list(items)))
        yield from serial_map(fn, items, resources)


@pytest.fixture(scope="module")
def traced():
    torch.manual_seed(0)
    model = MobileNetV2(num_classes=10, width_mult=0.35, inverted_residual_setting=SHORT_MBV2)
    return trace(randomize_batchnorm(model), 32, "mbv2-short")


@pytest.fixture(scope="module")
def data():
    digits = load_data("digits", resolution=32)
    return replace(digits, holdout=Subset(digits.holdout, range(16)))


def context(traced, data, cache_dir, map_items):
    return plan_context(
        traced,
        load_profile(PROJECT_PROFILE_DIR / "cpu-costmodel.yaml"),
        data,
        FinetuneRecipe(steps=1),
        fidelity="smoke",
        cache_dir=cache_dir,
        map_items=map_items,
    )


def test_the_serial_default_runs_every_item_here_in_order():
    assert list(serial_map(where, [3, 1, 2], {"CPU": 1})) == [(i, os.getpid()) for i in (3, 1, 2)]


@pytest.mark.skipif(usable_cores() < 2, reason="a pool of worker processes needs 2 cores")
def test_the_in_process_executor_runs_cpu_items_in_worker_processes_and_the_rest_here():
    core_items = InProcessExecutor().item_map(SLOT)
    here = os.getpid()

    on_cores = list(core_items(where, list(range(6)), {"CPU": 1}))
    measured = list(core_items(where, [1, 2], SLOT))
    on_gpu = list(core_items(where, [1, 2], {"GPU": 1}))

    assert sorted(item for item, _ in on_cores) == list(range(6))
    workers = {pid for _, pid in on_cores}  # how many of them got items depends on timing
    assert here not in workers and len(workers) <= usable_cores()
    assert measured == on_gpu == [(1, here), (2, here)]  # the measuring slot stays here


@pytest.mark.skipif(usable_cores() < 2, reason="a pool of worker processes needs 2 cores")
def test_an_importance_table_from_worker_processes_equals_the_serial_one(traced, data, tmp_path):
    """Quick fidelity (each entry re-initialised and fine-tuned): every entry seeds itself, so
    where it runs does not change its score."""
    entries = importance_entries(traced.chain.segments("upstream"), traced.chain, False)[::8]

    def table(map_items, folder):
        recipe = FinetuneRecipe(steps=1, batch_size=16)
        return importance_table(traced, data, entries, recipe, "quick", folder, map_items=map_items)

    serial = table(serial_map, tmp_path / "serial")
    pooled = table(CoreItems(), tmp_path / "pooled")

    assert pooled.scores == serial.scores and pooled.computed == len(entries) >= 4


def test_items_needing_only_what_the_caller_holds_run_in_the_caller_without_ray():
    # a lane holding its node's profile slot measures its segments itself: no task could get
    # another unit of the slot while every unit is held by a lane
    results = list(RayItems(held=dict(SLOT))(where, [1, 2], SLOT))
    assert results == [(1, os.getpid()), (2, os.getpid())]


def test_a_method_hands_its_segments_and_entries_to_map_items_with_their_resources(
    traced, data, tmp_path
):
    recorder = Recorder()
    ctx = context(traced, data, tmp_path, recorder)

    table = ctx.latency_table()
    importance = measure_importance(ctx, SMOKE)

    (segment_resources, segments), (entry_resources, entries) = recorder.calls
    assert segment_resources == SLOT  # only nodes standing for the profile measure
    distinct = {key for key, _ in segments}
    assert len(distinct) == len(segments) == table.measured > 0
    assert entry_resources == {"CPU": 1}  # the network is on the CPU
    assert sorted(entries) == sorted(importance.scores) and importance.computed == len(entries)


def test_a_second_context_on_the_same_caches_hands_out_no_item_again(traced, data, tmp_path):
    first = context(traced, data, tmp_path, serial_map)
    expected = measure_importance(first, SMOKE).scores, first.latency_table().latency_ms
    recorder = Recorder()
    again = context(traced, data, tmp_path, recorder)

    scores, latency = measure_importance(again, SMOKE).scores, again.latency_table().latency_ms

    assert (scores, latency) == expected
    assert recorder.calls == [(SLOT, [])]  # nothing missing: no segment, and no entry call


def test_an_interrupted_importance_table_resumes_with_only_the_missing_entries(
    traced, data, tmp_path
):
    def stop_after_five(fn, items, resources=None):
        for done, result in enumerate(serial_map(fn, items, resources), 1):
            yield result
            if done == 5:
                raise KeyboardInterrupt("the driver was killed")

    with pytest.raises(KeyboardInterrupt):
        measure_importance(context(traced, data, tmp_path, stop_after_five), SMOKE)
    recorder = Recorder()

    table = measure_importance(context(traced, data, tmp_path, recorder), SMOKE)

    [(_, handed)] = recorder.calls
    assert table.cached == 5 and len(set(handed)) == len(table.scores) - 5 == table.computed


def test_steps_without_a_terminal_log_an_eta_once_the_step_has_a_rate(caplog):
    steps = Steps(None)
    with caplog.at_level(logging.INFO, logger="depthbench"):
        steps("importance table", 10, 100)  # 10 were cached: the rate starts here
        steps("importance table", 55, 100)
    first, second = (record.getMessage() for record in caplog.records)
    assert first == "importance table: 10/100 (10%)"
    assert second.startswith("importance table: 55/100 (55%), ETA ")
