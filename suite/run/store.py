"""The results store: one JSON file per experiment cell, consolidated into Parquet for reports.

Layout under the results root::

    <run_id>/cells/<cell_hash>.json   one record per cell, written once, never replaced
    <run_id>/records.parquet          every cell of the run as one table (rebuilt by consolidate)
    <run_id>/manifest.json            the configurations that wrote the run, counts, code versions
    <run_id>/claims/<cell_hash>.json  a cell some process is computing now (its pid and host)
    <run_id>/baselines/<profile_hash>.json   the base network's latency (``suite.run.baseline``)
    <run_id>/deploy/<cell_hash>.onnx         each ok cell's deploy network (``suite.run.session``)
    <run_id>/sessions/<profile_hash>.json    the interleaved final measurement of a profile's cells

Consolidation takes a cell's final latency from its profile's session where there is one (the
cell-time measurement stays in ``cell_latency_ms_*``; ``latency_source`` says which one it is).

A cell file appears atomically and only if none is there, so an interrupted run resumes by skipping
cells that exist, and several processes can write one run at once without losing or clobbering
anything. Before computing a cell a runner claims it (a claim file created exclusively); another
runner skips a claimed cell instead of computing it twice. A claim whose process is gone (same
host, pid no longer running) is stale and taken over; one from another host stays until its owner
releases it or someone deletes it. Files are written readable by everyone the umask allows (0644
under the usual umask), so a shared results folder is readable by colleagues.

Faults are messages, never tracebacks: a results folder that cannot be written is refused before
anything runs (``check_writable``), a full disk stops the run saying so (cells stored so far
stay), and a ``records.parquet`` that is damaged or not a depthbench table is named as such.
"""

import errno
import json
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import pandas as pd
import pyarrow
from filelock import FileLock
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from suite.core.budget import Budget
from suite.errors import DepthbenchError
from suite.files import atomic_write
from suite.provenance import code_version
from suite.run.session import with_session_latency

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # safe as one path component


class CellRecord(BaseModel):
    """Everything one experiment cell produced, with the provenance to trust and redo it.

    Latency and accuracy are empty for cells that are ``infeasible`` (no plan meets the budget) or
    ``failed``; those say why in ``reason``.
    """

    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(pattern=_NAME_PATTERN)
    cell_hash: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    model: str
    dataset: str
    method: str
    method_config: dict[str, Any] = Field(default_factory=dict)
    budget: Budget
    seed: int
    profile_name: str
    profile_hash: str
    status: Literal["ok", "infeasible", "failed"]
    reason: str | None = None
    fidelity: str
    base_latency_ms: float | None = Field(
        None,
        description="the run's full-protocol latency of the base network under this profile, "
        "that a fraction budget refers to",
    )
    target_ms: float | None = Field(
        None, description="the budget resolved to ms before the cell ran; none for table units"
    )
    latency_ms_median: float | None = None
    latency_ms_mean: float | None = None
    latency_ms_p90: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_iqr: float | None = None
    latency_cov: float | None = Field(None, description="coefficient of variation (std / mean)")
    latency_robust_cov: float | None = Field(
        None, description="IQR / (1.349 median): the stability gate's statistic"
    )
    latency_ms_ci_low: float | None = Field(
        None, description="95% confidence interval of the median, from the repeats' medians"
    )
    latency_ms_ci_high: float | None = None
    latency_samples: int | None = None
    latency_repeats: int | None = Field(None, description="repeats (fresh sessions) measured")
    stable: bool | None = None
    top1: float | None = None
    top5: float | None = None
    loss: float | None = None
    test_images: int | None = Field(None, description="images top1 and top5 are computed over")
    test_correct: str | None = Field(
        None,
        description="top-1 correctness of each test image in data-set order: base64 of "
        "numpy.packbits (suite.run.stats.pack_correct)",
    )
    params: int | None = None
    macs: int | None = None
    depth: int | None = Field(None, description="convolutions in the deployed network")
    activations: int | None = Field(None, description="activations kept")
    plan: dict[str, Any] | None = None
    environment: dict[str, Any] = Field(default_factory=dict)
    code_version: str
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _unfinished_cells_say_why(self) -> "CellRecord":
        if self.status != "ok" and not self.reason:
            raise ValueError(f"a cell with status {self.status!r} needs a reason")
        return self


@dataclass(frozen=True)
class Claim:
    """Who is computing a cell: a process id on a host."""

    pid: int
    host: str

    def is_stale(self) -> bool:
        """Whether the claim's process is gone (only knowable for a process on this host)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, owned by another user
            return False
        return False


def _read_claim(path: Path) -> Claim | None:
    """The claim in ``path``; None if there is none, or it is not a claim (not ours to honour)."""
    try:
        content = json.loads(path.read_text())
        return Claim(int(content["pid"]), str(content["host"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ResultsStore:
    """Cell records of any number of runs under one results root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def write(self, record: CellRecord) -> Path:
        """Store ``record`` as its run's cell file, atomically; returns the file's path.

        Writing a cell that is already stored with the same content (ignoring ``created_at``) does
        nothing; a different result for a stored cell is refused and the stored file is kept.
        """
        path = self._cell_path(record.run_id, record.cell_hash)
        with _disk_errors(path):
            try:
                atomic_write(path, record.model_dump_json(indent=2), exclusive=True)
            except FileExistsError:
                _refuse_different_content(path, record)
        return path

    def check_writable(self, run_id: str) -> None:
        """Refuse a run whose folder could not be written, leaving no trace: a file is created and
        removed in the deepest folder of ``<root>/<run_id>/cells`` that exists."""
        folder = self._cell_path(run_id, "0").parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            if not folder.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", str(folder))
            descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".", suffix=".probe")
            os.close(descriptor)
            os.unlink(probe)
        except OSError as error:
            raise DepthbenchError(
                f"cannot write results to {self.root / run_id} ({folder}: "
                f"{error.strerror or error}); give --results a folder you can write to"
            ) from error

    def open_run(self, run_id: str) -> None:
        """Create the run's cells folder, so that it consolidates even before its first cell."""
        cells = self._cell_path(run_id, "0").parent
        with _disk_errors(cells):
            cells.mkdir(parents=True, exist_ok=True)

    def claim(self, run_id: str, cell_hash: str) -> Claim | None:
        """Claim the cell for this process: None if claimed, else the live claim of another.

        A stale claim (its process gone from this host) is taken over. A lock file serialises
        claiming, so two runs that find one stale claim do not both take it.
        """
        path = self._claim_path(run_id, cell_hash)
        with _disk_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(path.parent / ".lock"):
                holder = _read_claim(path)
                if holder is not None and not holder.is_stale():
                    return holder
                mine = Claim(os.getpid(), socket.gethostname())
                atomic_write(path, json.dumps(vars(mine)))
        return None

    def release(self, run_id: str, cell_hash: str) -> None:
        """Drop this process's claim on the cell (a no-op when there is none)."""
        path = self._claim_path(run_id, cell_hash)
        with FileLock(path.parent / ".lock"):
            holder = _read_claim(path)
            if holder == Claim(os.getpid(), socket.gethostname()):
                path.unlink(missing_ok=True)

    def has(self, run_id: str, cell_hash: str) -> bool:
        """Whether the cell is stored (finished, infeasible or failed)."""
        return self._cell_path(run_id, cell_hash).exists()

    def records(self, run_id: str) -> pd.DataFrame:
        """Every stored cell of ``run_id``, one row each (see ``records_frame`` for the columns).

        Corrupt cell files are named in the error and left where they are.
        """
        records, corrupt = [], []
        for path in sorted(self._cells_dir(run_id).glob("*.json")):
            try:
                records.append(_read_cell(path))
            except DepthbenchError as error:
                corrupt.append(str(error))
        if corrupt:
            raise DepthbenchError(
                f"run {run_id!r} has corrupt cell files (kept as they are): {'; '.join(corrupt)}. "
                "Move them out of the cells folder and run the run again to redo those cells"
            )
        return records_frame(records)

    def consolidate(self, run_id: str, run_config: Mapping[str, Any] | None = None) -> Path:
        """Write ``records.parquet`` and ``manifest.json`` for ``run_id``; returns the Parquet path.

        The manifest's ``run_configs`` lists every distinct configuration that has written to the
        run, oldest first: ``run_config`` is added to those already there, never replacing them
        (two experiments may share a run id). A file lock (the filelock library: ``flock`` on
        POSIX, ``msvcrt`` locking on Windows) keeps the Parquet file and the manifest of concurrent
        consolidations consistent with each other.
        """
        run_dir = self._cells_dir(run_id).parent
        with _disk_errors(run_dir), FileLock(run_dir / ".consolidate.lock"):
            frame = with_session_latency(self.records(run_id), run_dir)
            manifest_path = run_dir / "manifest.json"
            run_configs = (
                _read_json(manifest_path).get("run_configs", []) if manifest_path.exists() else []
            )
            if run_config is not None and dict(run_config) not in run_configs:
                run_configs.append(dict(run_config))
            manifest = {
                "run_id": run_id,
                "run_configs": run_configs,
                "cells": len(frame),
                "cells_by_status": _counts(frame["status"]),
                "cells_by_method": _counts(frame["method"]),
                "cells_by_latency_source": _counts(frame["latency_source"]),
                "record_code_versions": sorted(frame["code_version"].unique()),
                "consolidated_by": code_version(),
                "consolidated_at": datetime.now(UTC).isoformat(),
            }
            records_path = run_dir / "records.parquet"
            atomic_write(records_path, frame.to_parquet(index=False))
            atomic_write(manifest_path, json.dumps(manifest, indent=2))
        return records_path

    def _cells_dir(self, run_id: str) -> Path:
        cells = self.root / run_id / "cells"
        if not cells.is_dir():
            raise DepthbenchError(f"run {run_id!r} has no results: {cells} does not exist")
        return cells

    def _cell_path(self, run_id: str, cell_hash: str) -> Path:
        return self.root / run_id / "cells" / f"{cell_hash}.json"

    def _claim_path(self, run_id: str, cell_hash: str) -> Path:
        return self.root / run_id / "claims" / f"{cell_hash}.json"


def read_consolidated(run_dir: Path) -> pd.DataFrame:
    """The records of a consolidated run directory (``<root>/<run_id>``), from Parquet alone."""
    path = Path(run_dir) / "records.parquet"
    if not path.is_file():
        raise DepthbenchError(
            f"{path} does not exist: {run_dir} is not a consolidated run directory "
            "(expected results/<run-id> of a finished or resumed run)"
        )
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pyarrow.ArrowException) as error:
        raise DepthbenchError(
            f"{path} is not a readable Parquet file ({error}); it is damaged or truncated. "
            f"Move it away: `depthbench report` rebuilds it from {Path(run_dir) / 'cells'} "
            "where that folder exists"
        ) from error
    missing = [column for column in _COLUMN_DTYPES if column not in frame.columns]
    if missing:
        raise DepthbenchError(
            f"{path} is not a depthbench records table: it lacks the columns "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; give the folder of a "
            "depthbench run (results/<run-id>)"
        )
    return frame


def records_frame(records: list[CellRecord]) -> pd.DataFrame:
    """Records as a table: one column per field, ``budget`` split into ``budget_kind`` and
    ``budget_value``, and the free-form dicts (``method_config``, ``plan``, ``environment``) as
    JSON text so that the table has one schema whatever the methods put in them."""
    rows = []
    for record in records:
        row = record.model_dump(exclude={"budget"})
        row["budget_kind"], row["budget_value"] = record.budget.kind, record.budget.value
        for name in _JSON_COLUMNS:
            if row[name] is not None:
                row[name] = json.dumps(row[name], sort_keys=True)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(_COLUMN_DTYPES)).astype(_COLUMN_DTYPES)


def _column_dtypes() -> dict[str, str]:
    """Nullable pandas dtypes, so that a column has its type even when every value is missing."""
    dtypes = {}
    for name, field in CellRecord.model_fields.items():
        if name == "budget":
            dtypes |= {"budget_kind": "string", "budget_value": "float64"}
            continue
        types = get_args(field.annotation) or (field.annotation,)
        if bool in types:
            dtypes[name] = "boolean"
        elif int in types:
            dtypes[name] = "Int64"
        elif float in types:
            dtypes[name] = "float64"
        elif datetime in types or AwareDatetime in types:
            dtypes[name] = "datetime64[us, UTC]"
        else:
            dtypes[name] = "string"
    return dtypes


_COLUMN_DTYPES = _column_dtypes()
_JSON_COLUMNS = ("method_config", "plan", "environment")


def _read_cell(path: Path) -> CellRecord:
    try:
        record = CellRecord.model_validate_json(path.read_bytes())
    except ValidationError as error:
        raise DepthbenchError(
            f"{path}: not a valid cell record ({error.error_count()} errors: "
            f"{error.errors()[0]['msg']})"
        ) from error
    if record.cell_hash != path.stem:
        raise DepthbenchError(f"{path}: holds cell {record.cell_hash}, not the one its name says")
    return record


class StoredDifferently(DepthbenchError):
    """A cell is already stored with another result; the stored one was kept."""


def _refuse_different_content(path: Path, record: CellRecord) -> None:
    stored = _read_cell(path)
    if stored.model_dump(exclude={"created_at"}) != record.model_dump(exclude={"created_at"}):
        raise StoredDifferently(
            f"{path} already holds a different result for cell {record.cell_hash}; it was kept. "
            "Move that file away to run the cell again"
        )


def _counts(column: pd.Series) -> dict[str, int]:
    return {str(value): int(count) for value, count in column.value_counts().items()}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DepthbenchError(f"{path} is not valid JSON ({error}); move it away") from error


@contextmanager
def _disk_errors(where: Path) -> Iterator[None]:
    """A full disk or a folder that cannot be written, as a message naming ``where``."""
    try:
        yield
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DepthbenchError(
                f"no space left on the device writing {error.filename or where}; the cells stored so "
                "far are kept: free some space and run the same command again to resume"
            ) from error
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            raise DepthbenchError(
                f"cannot write {error.filename or where}: {error.strerror}; give --results a "
                "folder you can write to"
            ) from error
        raise
