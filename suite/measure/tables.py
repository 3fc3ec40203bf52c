"""Latency tables T(i, j): the latency of every valid segment's merged conv under a profile.

Each segment (i, j] of a chain merges into one conv (``chain.merged_spec``). Its latency is that
conv, followed by the chain's activation, measured as a standalone model at its real input shape
(the feature map at position i, with the profile's batch) under the profile's light
``table_protocol``. The sum of T over a plan's segments is what the DP method minimises.

Caching: numbers go into an SQLite file keyed by (profile hash, segment signature). The signature
is the conv's shape, input shape, batch and activation, nothing about the model, so a segment is
measured once across models, methods and runs. Every row carries a checksum of its content; a row
that fails it is reported (a warning naming the row), measured again and replaced. A cache file
that is not an SQLite database at all is moved aside (``<name>.corrupt-<time>``, with a warning
naming both paths) and a new cache is started, so a damaged cache costs measurements, never
results.

Distribution: the missing segments are work items (``suite.core.items``): each measures one
segment where it runs and returns the number; the caller writes the cache as results arrive. Under
Ray each holds the profile's measuring slot (``measurement_resources``), so only the nodes that
stand for the profile measure, one segment at a time per node. A table interrupted anywhere
resumes from the rows already written.

Replay profiles answer from an upstream table instead of measuring, after checking that the
table's rows are exactly the chain's valid segments and that the chain is the network the table
was measured on (``replay.model`` at ``replay.width``; the profile fixes resolution and batch).

Additivity: the sum of the single-unit segments T(p-1, p) against the original network's measured
end-to-end latency. Tables assume it; ``additivity`` measures how far it holds (the difference
also includes the stem and the classifier head, which no segment covers).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import tempfile
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from torch import nn

from suite.core.chain import MERGE_RULES, Chain, ConvSpec, MergeRule
from suite.core.export import write_conv_onnx
from suite.core.items import MapItems, serial_map
from suite.core.trace import model_label
from suite.errors import DepthbenchError
from suite.measure.backends import get_backend
from suite.measure.harness import LatencyResult, UnstableMeasurementWarning, measure
from suite.measure.profiles import REFERENCE_DIR, Profile, measurement_resources

Segment = tuple[int, int]
Progress = Callable[[int, int], None]


class CorruptCacheFileWarning(UserWarning):
    """The cache file was not an SQLite database; it was moved aside and a new one started."""


class CorruptCacheRowWarning(UserWarning):
    """A cached latency failed its checksum; it is measured again and replaced."""


@dataclass(frozen=True)
class SegmentSignature(ConvSpec):
    """Everything a standalone segment's latency depends on besides the profile: its merged conv
    (the fields of ``ConvSpec``), its input, the batch and the activation after it."""

    input_shape: tuple[int, int, int]
    batch: int
    activation: str | None

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def conv(self) -> ConvSpec:
        return ConvSpec(
            self.in_channels, self.out_channels, self.kernel, self.stride, self.padding, self.groups
        )


def segment_signature(
    chain: Chain, i: int, j: int, batch: int, kept: Iterable[int] | None = None
) -> SegmentSignature:
    """The segment's merged conv; with ``kept``, only those units merged (a LayerMerge option,
    the other units pruned). The signature is the conv's shape, so a cached row serves both."""
    spec = chain.merged_spec(i, j, kept)
    return SegmentSignature(
        **asdict(spec), input_shape=chain.shapes[i], batch=batch, activation=chain.act_kind
    )


@dataclass(frozen=True)
class SegmentLatency:
    median_ms: float
    cov: float
    n: int
    stable: bool


class TableCache:
    """The SQLite file of measured segment latencies, shared by every model and run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._move_aside_if_foreign()
        with self._database() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS segment_latency ("
                " profile_hash TEXT NOT NULL, signature TEXT NOT NULL,"
                " median_ms REAL, cov REAL, n INTEGER, stable INTEGER, measured_at TEXT,"
                " checksum TEXT, PRIMARY KEY (profile_hash, signature))"
            )

    def read(
        self, profile_hash: str, keys: list[str]
    ) -> tuple[dict[str, SegmentLatency], list[str]]:
        """The intact cached latencies among ``keys``, and the keys whose rows are corrupt."""
        with self._database() as db:
            rows = db.execute(
                "SELECT signature, median_ms, cov, n, stable, measured_at, checksum"
                " FROM segment_latency WHERE profile_hash = ?",
                (profile_hash,),
            ).fetchall()
        wanted = set(keys)
        found, corrupt = {}, []
        for signature, median_ms, cov, n, stable, measured_at, checksum in rows:
            if signature not in wanted:
                continue
            content = (profile_hash, signature, median_ms, cov, n, stable, measured_at)
            if checksum != _checksum(*content):
                corrupt.append(signature)
                continue
            found[signature] = SegmentLatency(median_ms, cov, n, bool(stable))
        return found, corrupt

    def write(self, profile_hash: str, key: str, latency: SegmentLatency) -> None:
        measured_at = datetime.now(UTC).isoformat()
        content = (
            profile_hash,
            key,
            latency.median_ms,
            latency.cov,
            latency.n,
            int(latency.stable),
            measured_at,
        )
        with self._database() as db:
            db.execute(
                "INSERT OR REPLACE INTO segment_latency VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*content, _checksum(*content)),
            )

    def _move_aside_if_foreign(self) -> None:
        """Move a file that is not an SQLite database out of the way (an empty file is one)."""
        try:
            with self.path.open("rb") as file:
                header = file.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        if not header or header == _SQLITE_HEADER:
            return
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        os.replace(self.path, aside)
        warnings.warn(
            f"latency cache {self.path} was not an SQLite database; moved it to {aside} (kept for "
            "inspection) and started a new cache: its segments are measured again",
            CorruptCacheFileWarning,
            stacklevel=3,
        )

    @contextmanager
    def _database(self) -> Iterator[sqlite3.Connection]:
        """A connection that commits on success and is always closed."""
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:
                yield db
        except sqlite3.DatabaseError as err:
            raise DepthbenchError(
                f"latency cache {self.path} cannot be used as an SQLite database ({err}); move it "
                "aside (it is left untouched) or pass another cache file"
            ) from err
        finally:
            db.close()


_SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database


def _checksum(*content: object) -> str:
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


@dataclass(frozen=True)
class LatencyTable:
    """T(i, j) in ms for every valid segment of one chain under one profile."""

    chain_name: str
    profile_name: str
    profile_hash: str
    rule: MergeRule
    latency_ms: dict[Segment, float]
    unstable: tuple[Segment, ...] = ()
    measured: int = 0
    cached: int = 0
    remeasured: int = 0
    replayed: bool = False

    def __getitem__(self, segment: Segment) -> float:
        if segment not in self.latency_ms:
            raise DepthbenchError(
                f"segment {segment} is not in the {self.rule} table of {self.chain_name}"
            )
        return self.latency_ms[segment]

    def to_frame(self) -> pd.DataFrame:
        """One row per segment: st, end, time_ms, stable (the upstream CSV's first columns)."""
        unstable = set(self.unstable)
        return pd.DataFrame(
            [(i, j, ms, (i, j) not in unstable) for (i, j), ms in sorted(self.latency_ms.items())],
            columns=["st", "end", "time_ms", "stable"],
        )


def build_table(
    chain: Chain,
    profile: Profile,
    rule: MergeRule = "upstream",
    cache: TableCache | None = None,
    progress: Progress | None = None,
    map_items: MapItems = serial_map,
) -> LatencyTable:
    """Measure (or replay, or read from ``cache``) T(i, j) for every valid segment of ``chain``.

    ``progress(done, total)`` is called as distinct segment signatures are resolved. The missing
    ones are measured as work items through ``map_items`` (default: here, one after another).
    """
    if rule not in MERGE_RULES:
        raise DepthbenchError(f"unknown merge rule {rule!r}: use one of {', '.join(MERGE_RULES)}")
    if profile.resolution is not None and chain.resolution != profile.resolution:
        raise DepthbenchError(
            f"profile {profile.name!r} fixes the resolution {profile.resolution}, but chain "
            f"{chain.name!r} was traced at {chain.resolution}; trace it at {profile.resolution}"
        )
    segments = chain.segments(rule)
    if profile.is_replay:
        table = _replay(chain, profile, rule, segments)
        if progress:
            progress(len(segments), len(segments))
        return table
    get_backend(profile.backend).check_available(profile)
    signatures = {s: segment_signature(chain, *s, profile.batch) for s in segments}
    found, cached, measured, corrupt = _resolve(signatures, profile, cache, progress, map_items)
    unstable = tuple(s for s, sig in signatures.items() if not found[sig.key].stable)
    if unstable:
        warnings.warn(
            f"{len(unstable)} of {len(segments)} segments of {chain.name} stayed above the "
            f"table protocol's CoV threshold under {profile.name!r}; they are listed as unstable",
            UnstableMeasurementWarning,
            stacklevel=2,
        )
    return LatencyTable(
        chain_name=chain.name,
        profile_name=profile.name,
        profile_hash=profile.hash,
        rule=rule,
        latency_ms={s: found[sig.key].median_ms for s, sig in signatures.items()},
        unstable=unstable,
        measured=measured,
        cached=cached,
        remeasured=corrupt,
    )


def measure_signatures(
    signatures: Mapping[Hashable, SegmentSignature],
    profile: Profile,
    cache: TableCache | None = None,
    progress: Progress | None = None,
    map_items: MapItems = serial_map,
) -> dict[Hashable, SegmentLatency]:
    """The latency of each signature's standalone conv under ``profile`` (measuring profiles only),
    read from ``cache`` when it holds an intact row, else measured and cached; ``progress(done,
    total)`` counts distinct signatures. For tables keyed by more than a segment (LayerMerge's
    options); corrupt rows are measured again with a ``CorruptCacheRowWarning``. Missing
    signatures are measured as work items through ``map_items``, like ``build_table``'s."""
    if profile.is_replay:
        raise DepthbenchError(
            f"profile {profile.name!r} replays a table of whole segments and measures nothing;"
            " use a measuring profile"
        )
    get_backend(profile.backend).check_available(profile)
    found, *_ = _resolve(signatures, profile, cache, progress, map_items)
    return {name: found[sig.key] for name, sig in signatures.items()}


def _resolve(
    signatures: Mapping[Hashable, SegmentSignature],
    profile: Profile,
    cache: TableCache | None,
    progress: Progress | None,
    map_items: MapItems,
) -> tuple[dict[str, SegmentLatency], int, int, int]:
    """The latency of every distinct signature: cached intact rows, the rest measured as items
    (``map_items``, each holding the profile's measuring slot) and cached here as they arrive.
    Returns them by signature key, with how many were cached, measured and corrupt."""
    distinct = {sig.key: sig for sig in signatures.values()}
    found, corrupt = cache.read(profile.hash, list(distinct)) if cache else ({}, [])
    for key in corrupt:
        warnings.warn(
            f"latency cache {cache.path}: the row for profile {profile.hash}, segment {key} failed "
            "its checksum; measuring it again",
            CorruptCacheRowWarning,
            stacklevel=3,
        )
    cached = len(found)
    missing = [(key, sig) for key, sig in distinct.items() if key not in found]
    if progress:
        progress(cached, len(distinct))
    measured = map_items(SegmentMeasurer(profile), missing, measurement_resources(profile))
    for key, latency in measured:
        found[key] = latency
        if cache:
            cache.write(profile.hash, key, latency)
        if progress:
            progress(len(found), len(distinct))
    return found, cached, len(missing), len(corrupt)


@dataclass(frozen=True)
class SegmentMeasurer:
    """One work item of a table: ``(key, signature)`` -> ``(key, latency)``, measured wherever it
    runs (on a node holding the profile's slot under Ray); the caller caches the result."""

    profile: Profile

    def __call__(self, item: tuple[str, SegmentSignature]) -> tuple[str, SegmentLatency]:
        key, signature = item
        with tempfile.TemporaryDirectory(prefix="depthbench-segment-") as workdir:
            return key, _measure_segment(signature, self.profile, Path(workdir))


def _measure_segment(
    signature: SegmentSignature, profile: Profile, workdir: Path
) -> SegmentLatency:
    """One merged conv + activation as a standalone model, under the table protocol."""
    if get_backend(profile.backend).model_kind == "onnx":
        shape = (signature.batch, *signature.input_shape)
        model = write_conv_onnx(
            signature.conv, shape, signature.activation, workdir / "segment.onnx"
        )
    else:
        model = conv_module(signature.conv, signature.activation)
    with warnings.catch_warnings():
        # the table reports unstable segments together, not one warning each
        warnings.simplefilter("ignore", UnstableMeasurementWarning)
        result = measure(model, profile, signature.input_shape, protocol=profile.table_protocol)
    return SegmentLatency(result.median_ms, result.cov, result.n, result.stable)


def conv_module(spec: ConvSpec, activation: str | None) -> nn.Module:
    """The torch twin of ``write_conv_onnx``: one conv with bias and the activation."""
    conv = nn.Conv2d(
        spec.in_channels,
        spec.out_channels,
        spec.kernel,
        spec.stride,
        spec.padding,
        groups=spec.groups,
    )
    activations = {"relu": nn.ReLU(), "relu6": nn.ReLU6(), None: nn.Identity()}
    return nn.Sequential(conv, activations[activation]).eval()


def _replay(
    chain: Chain, profile: Profile, rule: MergeRule, segments: list[Segment]
) -> LatencyTable:
    """The upstream table behind a replay profile, checked against the chain's valid segments."""
    path = REFERENCE_DIR / profile.replay.table
    frame = pd.read_csv(path)
    rows = {
        (int(st), int(end)): float(ms)
        for st, end, ms in zip(frame.st, frame.end, frame.time, strict=True)
    }
    extra, missing = sorted(set(rows) - set(segments)), sorted(set(segments) - set(rows))
    if extra or missing:
        raise DepthbenchError(
            f"profile {profile.name!r} replays {path.name}, measured for {profile.replay.model} "
            f"width {profile.replay.width:g}, but its {len(rows)} segments are not the "
            f"{len(segments)} valid {rule} segments of chain {chain.name!r} ({len(missing)} "
            f"missing from the table, e.g. {missing[:3]}; {len(extra)} not valid in the chain, "
            f"e.g. {extra[:3]}); use that network and rule, or a measuring profile"
        )
    # MobileNetV2's widths share one set of segments: only the chain's name tells them apart
    measured_on = model_label(profile.replay.model, profile.replay.width)
    if chain.name != measured_on:
        raise DepthbenchError(
            f"profile {profile.name!r} replays latencies measured on {measured_on} (width "
            f"{profile.replay.width:g}), but the chain is {chain.name!r}: its segments have the "
            f"same positions, not the same convs. Use width {profile.replay.width:g} "
            f"(--width {profile.replay.width:g}), or a measuring profile"
        )
    return LatencyTable(
        chain_name=chain.name,
        profile_name=profile.name,
        profile_hash=profile.hash,
        rule=rule,
        latency_ms={s: rows[s] for s in segments},
        replayed=True,
    )


@dataclass(frozen=True)
class Additivity:
    """Sum of the single-unit segments T(p-1, p) against the network's end-to-end latency."""

    segment_sum_ms: float
    end_to_end_ms: float

    @property
    def relative_error(self) -> float:
        return (self.segment_sum_ms - self.end_to_end_ms) / self.end_to_end_ms


def additivity(table: LatencyTable, chain: Chain, end_to_end: LatencyResult) -> Additivity:
    """How well T adds up: the network's units, one segment each, vs its measured median."""
    if table.chain_name != chain.name:
        raise DepthbenchError(f"the table is for chain {table.chain_name!r}, not {chain.name!r}")
    if table.profile_hash != end_to_end.profile_hash:
        raise DepthbenchError(
            f"the table was built under profile hash {table.profile_hash}, the end-to-end latency "
            f"under {end_to_end.profile_hash}; measure both under the same profile"
        )
    total = math.fsum(table[(p - 1, p)] for p in range(1, chain.L + 1))
    return Additivity(segment_sum_ms=total, end_to_end_ms=end_to_end.median_ms)
