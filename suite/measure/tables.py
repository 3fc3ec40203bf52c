"""Latency tables T(i, j): the latency of every valid segment's merged conv under a profile.

Each segment (i, j] of a chain merges into one conv (``chain.merged_spec``). Its latency is that
conv, followed by the chain's activation, measured as its own model at its real input shape (the
feature map at position i, with the profile's batch) under the profile's light ``table_protocol``.
The sum of T over a plan's segments is what the DP method minimises, so it must predict the
network: the profile's ``table_method`` says how a segment is measured.

- ``standalone``: the segment model's median. Every call of a model also pays the runtime's fixed
  per-call cost (ONNX Runtime: about 5 us on one CPU thread), which a network pays once but a sum
  of L standalone segments pays L times; and a model timed in a loop keeps its weights in cache,
  which a network of many layers does not. Right where both are negligible (TensorRT at batch
  128).
- ``slope``: N copies of the segment side by side in one model (``SLOPE_COPIES``; each with its
  own weights, all reading the one input), timed for each N; T is the least-squares slope of
  latency against N, the cost of one more copy. The intercept, stored as ``overhead_ms``, is the
  per-call cost, which drops out; the copies' weights compete for the cache as a network's
  layers do. At batch 1 on a CPU only this makes sums predict networks, compressed ones included
  (docs/measurement.md gives the measured additivity of both, and of the rejected alternative,
  subtracting an identity model's latency).

Caching: numbers go into an SQLite file keyed by (profile hash, segment key). The key is the
segment's signature (the conv's shape, input shape, batch and activation, nothing about the model)
together with the table method (``cache_key``; a standalone key is the bare signature, as in caches
written before table methods existed), so a segment is measured once across models, methods and
runs, and numbers of two table methods never mix. Slope rows also store the fitted intercept.
Every row carries a checksum of its content; a row that fails it is reported (a warning naming
the row), measured again and replaced. A cache file that is not an SQLite database at all is moved
aside (``<name>.corrupt-<time>``, with a warning naming both paths) and a new cache is started, so
a damaged cache costs measurements, never results.

Distribution: the missing segments are work items (``suite.core.items``): each measures one
segment where it runs and returns the number; the caller writes the cache as results arrive. Under
Ray each holds the profile's measuring slot (``measurement_resources``), so only the nodes that
stand for the profile measure, one segment at a time per node. A table interrupted anywhere
resumes from the rows already written.

Replay profiles answer from an upstream table instead of measuring, after checking that the
table's rows are exactly the chain's valid segments and that the chain is the network the table
was measured on (``replay.model`` at ``replay.width``; the profile fixes resolution and batch).

Additivity: the table's prediction of the original network, the sum of its single-unit segments
T(p-1, p) plus what no segment covers (the stem and the classifier head, measured with the same
method, and for ``slope`` one call's fixed cost: ``outside_chain_ms``), against the
network's measured end-to-end latency. Tables assume it; ``additivity`` measures how far it holds
for one table, ``measure_additivity`` repeats the whole check with fresh measurements to give the
error an interval. Residual additions are not covered: they remain in the difference.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sqlite3
import tempfile
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from suite.core.chain import MERGE_RULES, Chain, ConvSpec, MergeRule
from suite.core.export import write_conv_onnx
from suite.core.items import MapItems, serial_map
from suite.core.trace import TracedModel, model_label
from suite.errors import DepthbenchError
from suite.measure.backends import get_backend
from suite.measure.harness import (
    LatencyResult,
    UnstableMeasurementWarning,
    measure,
    session_interval,
)
from suite.measure.profiles import REFERENCE_DIR, Profile, TableMethod, measurement_resources

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


def cache_key(signature: SegmentSignature, method: TableMethod) -> str:
    """The cache row key of a segment measured with ``method``.

    A standalone key is the bare signature, so caches written before table methods existed keep
    serving standalone tables; any other method's key names the method.
    """
    if method == "standalone":
        return signature.key
    return json.dumps({"segment": json.loads(signature.key), "table_method": method})


@dataclass(frozen=True)
class SegmentLatency:
    """A segment's latency in ms; ``overhead_ms`` is the slope fit's intercept, the per-call
    cost it leaves out (None: standalone)."""

    median_ms: float
    cov: float
    n: int
    stable: bool
    overhead_ms: float | None = None


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
                " checksum TEXT, overhead_ms REAL, PRIMARY KEY (profile_hash, signature))"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(segment_latency)")}
            if "overhead_ms" not in columns:  # a cache written before table methods existed
                db.execute("ALTER TABLE segment_latency ADD COLUMN overhead_ms REAL")

    def read(
        self, profile_hash: str, keys: list[str]
    ) -> tuple[dict[str, SegmentLatency], list[str]]:
        """The intact cached latencies among ``keys``, and the keys whose rows are corrupt."""
        with self._database() as db:
            rows = db.execute(
                "SELECT signature, median_ms, cov, n, stable, measured_at, checksum, overhead_ms"
                " FROM segment_latency WHERE profile_hash = ?",
                (profile_hash,),
            ).fetchall()
        wanted = set(keys)
        found, corrupt = {}, []
        for signature, median_ms, cov, n, stable, measured_at, checksum, overhead_ms in rows:
            if signature not in wanted:
                continue
            content = _row_content(
                profile_hash, signature, median_ms, cov, n, stable, measured_at, overhead_ms
            )
            if checksum != _checksum(*content):
                corrupt.append(signature)
                continue
            found[signature] = SegmentLatency(median_ms, cov, n, bool(stable), overhead_ms)
        return found, corrupt

    def write(self, profile_hash: str, key: str, latency: SegmentLatency) -> None:
        content = _row_content(
            profile_hash,
            key,
            latency.median_ms,
            latency.cov,
            latency.n,
            int(latency.stable),
            datetime.now(UTC).isoformat(),
            latency.overhead_ms,
        )
        with self._database() as db:
            db.execute(
                "INSERT OR REPLACE INTO segment_latency (profile_hash, signature, median_ms, cov,"
                " n, stable, measured_at, overhead_ms, checksum)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*content[:7], latency.overhead_ms, _checksum(*content)),
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


def _row_content(*fields: object) -> tuple[object, ...]:
    """A row's checksummed content; a standalone row (overhead None, the last field) leaves the
    overhead out, so rows written before the overhead column existed still pass."""
    *content, overhead_ms = fields
    return tuple(content) if overhead_ms is None else (*content, overhead_ms)


def _checksum(*content: object) -> str:
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


@dataclass(frozen=True)
class LatencyTable:
    """T(i, j) in ms for every valid segment of one chain under one profile.

    ``method`` is the profile's table method (``replay`` for a replayed table); ``overhead_ms``
    the median of its segments' fitted intercepts, the per-call cost left out (None unless
    ``slope``).
    """

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
    method: TableMethod | Literal["replay"] = "standalone"
    overhead_ms: float | None = None

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
    signatures = {s: segment_signature(chain, *s, profile.batch) for s in segments}
    measured = measure_signatures(signatures, profile, cache, progress, map_items)
    unstable = tuple(s for s, latency in measured.latency.items() if not latency.stable)
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
        latency_ms={s: latency.median_ms for s, latency in measured.latency.items()},
        unstable=unstable,
        measured=measured.measured,
        cached=measured.cached,
        remeasured=measured.remeasured,
        method=profile.table_method,
        overhead_ms=measured.overhead_ms,
    )


@dataclass(frozen=True)
class Measured:
    """Latencies of named segment signatures, and where they came from."""

    latency: dict[Hashable, SegmentLatency]
    measured: int  # distinct signatures measured now
    cached: int  # distinct signatures read from the cache
    remeasured: int  # of the measured, those whose cache row failed its checksum
    overhead_ms: float | None  # the median per-call intercept of the slope method


def measure_signatures(
    signatures: Mapping[Hashable, SegmentSignature],
    profile: Profile,
    cache: TableCache | None = None,
    progress: Progress | None = None,
    map_items: MapItems = serial_map,
) -> Measured:
    """The latency of each signature's conv + activation under ``profile``'s table protocol and
    ``table_method`` (measuring profiles only), read from ``cache`` when it holds an intact row,
    else measured and cached; ``progress(done, total)`` counts distinct signatures. Corrupt rows
    are measured again with a ``CorruptCacheRowWarning``. Missing signatures are measured as work
    items through ``map_items`` (each holding the profile's measuring slot) and cached here as they
    arrive."""
    if profile.is_replay:
        raise DepthbenchError(
            f"profile {profile.name!r} replays a table of whole segments and measures nothing;"
            " use a measuring profile"
        )
    get_backend(profile.backend).check_available(profile)
    method = profile.table_method
    distinct = {cache_key(sig, method): sig for sig in signatures.values()}
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
    for key, latency in map_items(
        SegmentMeasurer(profile), missing, measurement_resources(profile)
    ):
        found[key] = latency
        if cache:
            cache.write(profile.hash, key, latency)
        if progress:
            progress(len(found), len(distinct))
    return Measured(
        latency={name: found[cache_key(sig, method)] for name, sig in signatures.items()},
        measured=len(missing),
        cached=cached,
        remeasured=len(corrupt),
        overhead_ms=_median_overhead([found[key] for key in distinct]),
    )


@dataclass(frozen=True)
class SegmentMeasurer:
    """One work item of a table: ``(key, signature)`` -> ``(key, latency)``, measured wherever it
    runs (on a node holding the profile's slot under Ray); the caller caches the result."""

    profile: Profile

    def __call__(self, item: tuple[str, SegmentSignature]) -> tuple[str, SegmentLatency]:
        key, signature = item
        with tempfile.TemporaryDirectory(prefix="depthbench-segment-") as workdir:
            return key, _measure_segment(signature, self.profile, Path(workdir))


def _median_overhead(latencies: list[SegmentLatency]) -> float | None:
    overheads = [latency.overhead_ms for latency in latencies if latency.overhead_ms is not None]
    return float(np.median(overheads)) if overheads else None


def _measure_segment(
    signature: SegmentSignature, profile: Profile, workdir: Path
) -> SegmentLatency:
    """One merged conv + activation, under the table protocol and method."""
    if get_backend(profile.backend).model_kind == "onnx":
        shape = (signature.batch, *signature.input_shape)

        def model(copies: int) -> nn.Module | Path:
            path = workdir / f"segment-{copies}.onnx"
            return write_conv_onnx(signature.conv, shape, signature.activation, path, copies=copies)
    else:

        def model(copies: int) -> nn.Module | Path:
            convs = [conv_module(signature.conv, signature.activation) for _ in range(copies)]
            return convs[0] if copies == 1 else Copies(convs)

    return _measure_part(model, signature.input_shape, profile)


SLOPE_COPIES = (1, 2, 4, 8)


def _measure_part(
    model: Callable[[int], nn.Module | Path], input_shape: tuple[int, int, int], profile: Profile
) -> SegmentLatency:
    """``model(copies)``'s latency under the table protocol and method: one copy's median
    (standalone), or the slope of the medians against ``SLOPE_COPIES``."""
    if profile.table_method == "standalone":
        result = _table_measure(model(1), input_shape, profile)
        return SegmentLatency(result.median_ms, result.cov, result.n, result.stable)
    results = [_table_measure(model(copies), input_shape, profile) for copies in SLOPE_COPIES]
    slope, intercept = fit_slope(SLOPE_COPIES, [result.median_ms for result in results])
    return SegmentLatency(
        # a segment cheaper than the noise of the fit would come out negative: it costs ~0
        median_ms=max(slope, 0.0),
        cov=results[0].cov,
        n=sum(result.n for result in results),
        stable=all(result.stable for result in results),
        overhead_ms=intercept,
    )


def fit_slope(copies: Sequence[int], latencies_ms: Sequence[float]) -> tuple[float, float]:
    """Least-squares line through (copies, latency): (ms per copy, ms at zero copies)."""
    slope, intercept = np.polyfit(np.asarray(copies, float), np.asarray(latencies_ms, float), 1)
    return float(slope), float(intercept)


def _table_measure(
    model: nn.Module | Path, input_shape: tuple[int, int, int], profile: Profile
) -> LatencyResult:
    with warnings.catch_warnings():
        # the table reports unstable segments together, not one warning each
        warnings.simplefilter("ignore", UnstableMeasurementWarning)
        return measure(model, profile, input_shape, protocol=profile.table_protocol)


class Copies(nn.Module):
    """Modules side by side on one input; the torch twin of ``write_conv_onnx(copies=N)``."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.copies = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(module(x) for module in self.copies)


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
        method="replay",
    )


@dataclass(frozen=True)
class Additivity:
    """A table's prediction of the original network against its end-to-end latency: the
    single-unit segments T(p-1, p) plus the parts outside the chain (``outside_chain_ms``)."""

    segment_sum_ms: float
    end_to_end_ms: float
    outside_ms: float = 0.0

    @property
    def predicted_ms(self) -> float:
        return self.segment_sum_ms + self.outside_ms

    @property
    def relative_error(self) -> float:
        return (self.predicted_ms - self.end_to_end_ms) / self.end_to_end_ms


def additivity(
    table: LatencyTable, chain: Chain, end_to_end: LatencyResult, outside_ms: float = 0.0
) -> Additivity:
    """How well T adds up: the network's units, one segment each, plus ``outside_ms``, vs its
    measured median."""
    if table.chain_name != chain.name:
        raise DepthbenchError(f"the table is for chain {table.chain_name!r}, not {chain.name!r}")
    if table.profile_hash != end_to_end.profile_hash:
        raise DepthbenchError(
            f"the table was built under profile hash {table.profile_hash}, the end-to-end latency "
            f"under {end_to_end.profile_hash}; measure both under the same profile"
        )
    total = math.fsum(table[(p - 1, p)] for p in range(1, chain.L + 1))
    return Additivity(
        segment_sum_ms=total, end_to_end_ms=end_to_end.median_ms, outside_ms=outside_ms
    )


def outside_chain_ms(traced: TracedModel, profile: Profile) -> float:
    """What the network costs besides its chain's units, measured with the table's method: the
    stem and the head, and for ``slope`` the one call's fixed cost the network pays (the stem
    fit's intercept, at the image input)."""
    chain = traced.chain
    image = (3, chain.resolution, chain.resolution)
    stem = _measure_part(_copies_of(traced.stem), image, profile)
    head = _measure_part(_copies_of(traced.head), chain.shapes[-1], profile)
    return stem.median_ms + head.median_ms + (stem.overhead_ms or 0.0)


def _copies_of(module: nn.Module) -> Callable[[int], nn.Module]:
    """``Copies`` of ``module``, each with weights of its own (perturbed, so no exporter can
    share them)."""

    def model(copies: int) -> nn.Module:
        return Copies([_perturbed(module, k) for k in range(copies)]) if copies > 1 else module

    return model


@torch.no_grad()
def _perturbed(module: nn.Module, seed: int) -> nn.Module:
    twin = copy.deepcopy(module).eval()
    generator = torch.Generator().manual_seed(seed)
    for parameter in twin.parameters():
        parameter.add_(torch.randn(parameter.shape, generator=generator) * 1e-3)
    return twin


@dataclass(frozen=True)
class AdditivityCheck:
    """``measure_additivity``'s repeated checks, each from fresh measurements."""

    method: TableMethod
    runs: tuple[Additivity, ...]

    @property
    def median_run(self) -> Additivity:
        """The run with the median error (the lower of the two middle ones for an even count)."""
        ordered = sorted(self.runs, key=lambda run: run.relative_error)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def relative_error(self) -> float:
        return self.median_run.relative_error

    @property
    def interval(self) -> tuple[float, float]:
        """95% interval of the error, from the runs' ratios predicted / end-to-end (the harness's
        ``session_interval``: runs differ by a factor); with one run, that run's error twice."""
        ratios = [run.predicted_ms / run.end_to_end_ms for run in self.runs]
        if len(ratios) == 1:
            return self.runs[0].relative_error, self.runs[0].relative_error
        low, high = session_interval(ratios)
        return low - 1, high - 1


def measure_additivity(
    traced: TracedModel, profile: Profile, repeats: int = 3, progress: Progress | None = None
) -> AdditivityCheck:
    """Measure the original network's single-unit segments, its outside parts and its end-to-end
    latency ``repeats`` times afresh (no cache), under the profile's table method."""
    if profile.is_replay:
        raise DepthbenchError(
            f"profile {profile.name!r} replays a table and measures nothing, so its additivity "
            "cannot be measured; use a measuring profile"
        )
    if repeats < 1:
        raise DepthbenchError(f"additivity needs at least 1 repeat, got {repeats}")
    chain = traced.chain
    image = (3, chain.resolution, chain.resolution)
    runs = []
    with tempfile.TemporaryDirectory(prefix="depthbench-additivity-") as workdir:
        for repeat in range(repeats):
            if progress:
                progress(repeat, repeats)
            units = [
                _measure_segment(
                    segment_signature(chain, p - 1, p, profile.batch), profile, Path(workdir)
                ).median_ms
                for p in range(1, chain.L + 1)
            ]
            outside = outside_chain_ms(traced, profile)
            end_to_end = measure(traced.model, profile, input_shape=image)
            runs.append(Additivity(math.fsum(units), end_to_end.median_ms, outside))
    if progress:
        progress(repeats, repeats)
    return AdditivityCheck(profile.table_method, tuple(runs))
