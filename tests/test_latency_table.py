"""Latency tables: real ONNX Runtime runs, a real SQLite cache file, real upstream tables."""

import math
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from suite.core.chain import Chain, ConvSpec, Unit
from suite.core.trace import trace_model
from suite.errors import DepthbenchError
from suite.measure.harness import measure
from suite.measure.profiles import REFERENCE_DIR, load_profile, read_profile
from suite.measure.tables import (
    CorruptCacheFileWarning,
    CorruptCacheRowWarning,
    TableCache,
    additivity,
    build_table,
    segment_signature,
)

PROFILES = Path(__file__).parent / "data" / "profiles"


@pytest.fixture(scope="module")
def profile():
    return read_profile(PROFILES / "test-cpu-fast.yaml")


@pytest.fixture(scope="module")
def resnet18():
    return trace_model("resnet18", num_classes=10, resolution=16)


@pytest.fixture(scope="module")
def resnet34():
    return trace_model("resnet34", num_classes=10, resolution=16)


@pytest.fixture(scope="module")
def strided_chain() -> Chain:
    """Three convs, the first strided: the upstream rule forbids merging a 3x3 after it."""
    specs = [ConvSpec(3, 8, 3, 2, 1, 1), ConvSpec(8, 8, 3, 1, 1, 8), ConvSpec(8, 16, 1, 1, 0, 1)]
    units = tuple(Unit(p, spec, "relu") for p, spec in enumerate(specs, start=1))
    shapes = ((3, 16, 16), (8, 8, 8), (8, 8, 8), (16, 8, 8))
    return Chain("strided", units, (), (), "relu", 16, shapes)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("upstream", {(0, 1), (1, 2), (2, 3), (1, 3)}),
        ("general", {(0, 1), (1, 2), (2, 3), (1, 3), (0, 2), (0, 3)}),
    ],
)
def test_table_has_a_positive_latency_for_every_valid_segment(
    profile, strided_chain, rule, expected
):
    table = build_table(strided_chain, profile, rule=rule)

    assert set(table.latency_ms) == expected
    assert all(ms > 0 for ms in table.latency_ms.values())
    assert table.measured == len(expected) and table.rule == rule


def test_distinct_signatures_are_measured_once(profile, resnet18):
    table = build_table(resnet18.chain, profile)

    assert set(table.latency_ms) == set(resnet18.chain.segments("upstream"))
    distinct = {segment_signature(resnet18.chain, *s, profile.batch).key for s in table.latency_ms}
    assert table.measured == len(distinct) < len(table.latency_ms)


def test_segments_with_one_signature_share_one_number(profile, resnet18):
    table = build_table(resnet18.chain, profile)
    by_signature = {}
    for segment, ms in table.latency_ms.items():
        key = segment_signature(resnet18.chain, *segment, profile.batch).key
        by_signature.setdefault(key, set()).add(ms)

    assert all(len(values) == 1 for values in by_signature.values())


def test_cached_table_is_read_back_unchanged(profile, resnet18, tmp_path):
    cache = TableCache(tmp_path / "cache.sqlite")
    cold = build_table(resnet18.chain, profile, cache=cache)
    warm = build_table(resnet18.chain, profile, cache=TableCache(tmp_path / "cache.sqlite"))

    assert warm.latency_ms == cold.latency_ms
    assert (warm.measured, warm.cached) == (0, cold.measured)
    rows = sqlite3.connect(tmp_path / "cache.sqlite").execute(
        "SELECT count(*) FROM segment_latency"
    )
    assert rows.fetchone()[0] == cold.measured


def test_cache_is_shared_across_models(profile, resnet18, resnet34, tmp_path):
    cache = TableCache(tmp_path / "cache.sqlite")
    build_table(resnet18.chain, profile, cache=cache)

    table = build_table(resnet34.chain, profile, cache=cache)

    shared = {
        segment_signature(resnet18.chain, *s, 2).key for s in resnet18.chain.segments("upstream")
    }
    own = {
        segment_signature(resnet34.chain, *s, 2).key for s in resnet34.chain.segments("upstream")
    }
    assert table.cached == len(shared & own) > 0
    assert table.measured == len(own - shared)


def test_another_profile_never_reads_these_numbers(profile, resnet18, tmp_path):
    cache = TableCache(tmp_path / "cache.sqlite")
    build_table(resnet18.chain, profile, cache=cache)
    torch_profile = read_profile(PROFILES / "test-torch-fast.yaml")

    table = build_table(resnet18.chain, torch_profile, cache=cache)

    assert table.cached == 0 and table.measured > 0
    assert table.profile_hash == torch_profile.hash != profile.hash


def test_a_corrupt_row_is_reported_measured_again_and_repaired(profile, resnet18, tmp_path):
    path = tmp_path / "cache.sqlite"
    first = build_table(resnet18.chain, profile, cache=TableCache(path))
    with sqlite3.connect(path) as db:
        (signature,) = db.execute("SELECT signature FROM segment_latency LIMIT 1").fetchone()
        db.execute(
            "UPDATE segment_latency SET median_ms = median_ms * 10 WHERE signature = ?",
            (signature,),
        )

    with pytest.warns(CorruptCacheRowWarning, match="failed its checksum") as caught:
        repaired = build_table(resnet18.chain, profile, cache=TableCache(path))
    again = build_table(resnet18.chain, profile, cache=TableCache(path))

    assert signature in str(caught[0].message)
    assert (repaired.remeasured, repaired.measured, repaired.cached) == (1, 1, first.measured - 1)
    assert (again.remeasured, again.measured) == (0, 0)


def test_a_file_that_is_not_sqlite_is_moved_aside_and_a_new_cache_started(
    profile, resnet18, tmp_path
):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"precious results, not a database" * 100)

    with pytest.warns(CorruptCacheFileWarning, match="was not an SQLite database; moved it to"):
        cache = TableCache(path)
    table = build_table(resnet18.chain, profile, cache=cache)

    [aside] = tmp_path.glob("cache.sqlite.corrupt-*")
    assert aside.read_bytes() == b"precious results, not a database" * 100  # kept as it was
    assert path.read_bytes().startswith(b"SQLite format 3\x00") and table.measured > 0
    assert build_table(resnet18.chain, profile, cache=TableCache(path)).measured == 0


def test_an_sqlite_file_that_is_damaged_inside_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "cache.sqlite"
    TableCache(path)
    damaged = path.read_bytes()[:16] + b"\xff" * 4000
    path.write_bytes(damaged)

    with pytest.raises(DepthbenchError, match=f"latency cache {path} cannot be used as an SQLite"):
        TableCache(path)
    assert path.read_bytes() == damaged


def test_progress_counts_up_to_the_distinct_segments(profile, resnet18, tmp_path):
    calls = []
    table = build_table(
        resnet18.chain, profile, progress=lambda done, total: calls.append((done, total))
    )

    assert calls[-1] == (table.measured, table.measured)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_rule_and_resolution_are_checked(profile, resnet18):
    with pytest.raises(DepthbenchError, match="unknown merge rule 'loose'"):
        build_table(resnet18.chain, profile, rule="loose")
    with pytest.raises(
        DepthbenchError, match="fixes the resolution 224, but chain 'resnet18' was traced at 16"
    ):
        build_table(resnet18.chain, load_profile("rtx2080ti-replay-mbv2-1.0"))


def test_replay_answers_from_the_upstream_table():
    vgg = trace_model("vgg19_bn", resolution=224)
    upstream = pd.read_csv(REFERENCE_DIR / "ecdc__utils_table_vgg19_no_trt_time_fish_gpu1_0317.csv")

    table = build_table(vgg.chain, load_profile("rtx2080ti-replay-vgg19"))

    assert table.replayed and len(table.latency_ms) == len(upstream) == 36
    for row in upstream.itertuples():
        assert table[(row.st, row.end)] == row.time


def test_replay_mobilenet_v2_has_the_171_upstream_segments():
    mbv2 = trace_model("mobilenet_v2", width=1.0, resolution=224)

    table = build_table(mbv2.chain, load_profile("rtx2080ti-replay-mbv2-1.0"))

    assert len(table.latency_ms) == 171
    assert table[(0, 1)] == pytest.approx(1.1677890269160272)


def test_replay_of_another_network_is_refused():
    resnet = trace_model("resnet18", resolution=224)

    with pytest.raises(
        DepthbenchError, match=r"replays ecdc__utils_table_mbv2_1.0.*are not the \d+ valid upstream"
    ):
        build_table(resnet.chain, load_profile("rtx2080ti-replay-mbv2-1.0"))


def test_additivity_sums_single_unit_segments_against_end_to_end(profile, resnet18):
    table = build_table(resnet18.chain, profile)
    end_to_end = measure(resnet18.model, profile)

    check = additivity(table, resnet18.chain, end_to_end)

    expected = math.fsum(table[(p - 1, p)] for p in range(1, resnet18.chain.L + 1))
    assert check.segment_sum_ms == pytest.approx(expected)
    assert check.end_to_end_ms == end_to_end.median_ms
    assert check.relative_error == pytest.approx(
        (expected - end_to_end.median_ms) / end_to_end.median_ms
    )


def test_additivity_needs_one_chain_and_one_profile(profile, resnet18, resnet34):
    table = build_table(resnet18.chain, profile)
    torch_profile = read_profile(PROFILES / "test-torch-fast.yaml")
    other = measure(resnet18.model, torch_profile)

    with pytest.raises(DepthbenchError, match="not 'resnet34'"):
        additivity(table, resnet34.chain, other)
    with pytest.raises(DepthbenchError, match="measure both under the same profile"):
        additivity(table, resnet18.chain, other)
