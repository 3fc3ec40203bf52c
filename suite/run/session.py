"""Interleaved measurement sessions: the final latencies of one profile's cells, measured together.

Measured cell by cell, as each cell finishes, a drift in background load (another job starting,
the machine warming up) falls on whichever methods ran at that time. A *session* measures every
deploy network of a run under one profile, the original included, together:

    for round r = 1..R:                        R = the profile protocol's repeats by default
        for each network, in a seeded random order drawn anew for this round:
            one repeat of the profile's full protocol (a fresh backend session: warm-up by time,
            then the minimum iterations and seconds)

so that a drift spreads over every network alike. Each network's statistics come from its R
repeats (``suite.measure.harness.summarize``: pooled samples, the 95% interval from the spread
between its repeats). There is no re-measurement: a network whose robust CoV stays above the
profile's ``max_cov`` is flagged ``stable: false``.

The runner measures a session per profile at the end of a run (only if the stored one does not
cover exactly the run's ok cells), ``depthbench measure-run RUN`` measures them anew. Files:

    <run_id>/deploy/<cell_hash>.onnx    each ok cell's deploy network, at the profile's batch and
                                        precision, saved when the cell finishes
    <run_id>/deploy/<cell_hash>.pt      the module itself, for backends that run torch modules
    <run_id>/sessions/<profile_hash>.json
                                        the order of every round, the rounds, the seed, each
                                        network's samples per round and statistics, environment

Cell files stay as they were written; consolidation (``with_session_latency``) makes the
session's statistics the record's ``latency_*`` columns and keeps the cell-time measurement as
``cell_latency_ms_median``/``_ci_low``/``_ci_high``; ``latency_source`` says which one a row has.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from suite.core.export import export_onnx
from suite.errors import DepthbenchError
from suite.files import atomic_write_with
from suite.measure.backends import Backend, get_backend
from suite.measure.harness import LatencyStats, capture_environment, onnx_input, summarize
from suite.measure.profiles import Profile, load_profile

DEPLOY_DIR = "deploy"
SESSIONS_DIR = "sessions"
Progress = Callable[[str, int, int], None]  # (what, done, total)

# The latency columns of a record that a session replaces, and the cell-time ones it keeps.
CELL_LATENCY_COLUMNS = {
    "latency_ms_median": "cell_latency_ms_median",
    "latency_ms_ci_low": "cell_latency_ms_ci_low",
    "latency_ms_ci_high": "cell_latency_ms_ci_high",
}


class SessionNetwork(BaseModel):
    """One network's measurement in a session: its samples per round and their statistics."""

    model_config = ConfigDict(extra="forbid")

    samples_ms: list[list[float]] = Field(description="one list of samples per round")
    fields: dict[str, float | int | bool] = Field(
        description="the record's latency fields (latency_ms_median, ..., stable)"
    )


class Session(BaseModel):
    """An interleaved measurement of a run's deploy networks under one profile."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    profile_name: str
    profile_hash: str
    rounds: int
    seed: int
    order: list[list[str]] = Field(description="the cell hashes in measuring order, per round")
    networks: dict[str, SessionNetwork] = Field(description="by cell hash")
    environment: dict[str, Any]
    code_version: str
    measured_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))


def deploy_path(run_dir: Path, cell_hash: str, suffix: str = ".onnx") -> Path:
    return Path(run_dir) / DEPLOY_DIR / f"{cell_hash}{suffix}"


def session_path(run_dir: Path, profile_hash: str) -> Path:
    return Path(run_dir) / SESSIONS_DIR / f"{profile_hash}.json"


def save_deploy(
    network: nn.Module, profile: Profile, resolution: int, run_dir: Path, cell_hash: str
) -> Path:
    """Save a cell's deploy network for later sessions: ONNX at the profile's batch and precision
    (what the harness would export), plus the module where the backend runs torch modules.
    Each file replaces any left by an interrupted earlier attempt at the cell."""
    path = deploy_path(run_dir, cell_hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if profile.precision == "fp16" else torch.float32
    shape = (profile.batch, 3, resolution, resolution)
    atomic_write_with(path, lambda temporary: export_onnx(network, shape, temporary, dtype))
    if get_backend(profile.backend).model_kind == "torch":
        module = copy.deepcopy(network).eval()
        atomic_write_with(path.with_suffix(".pt"), lambda temporary: torch.save(module, temporary))
    return path


def interleaved_order(names: Sequence[str], rounds: int, seed: int) -> list[list[str]]:
    """``rounds`` permutations of ``names``, one per round, drawn from one generator seeded
    with ``seed``: the same arguments always give the same order."""
    generator = np.random.default_rng(seed)
    return [[names[i] for i in generator.permutation(len(names))] for _ in range(rounds)]


def measure_interleaved(
    networks: Mapping[str, Path],
    profile: Profile,
    rounds: int,
    seed: int,
    progress: Progress | None = None,
) -> tuple[list[list[str]], dict[str, list[np.ndarray]]]:
    """Measure ONNX files (named by the keys) under ``profile`` in interleaved rounds.

    Returns the order of each round and each network's samples per round. Where the profile's
    backend runs torch modules, the module saved beside each file (``.pt``) is measured.
    """
    if profile.is_replay:
        raise DepthbenchError(
            f"profile {profile.name!r} replays an upstream latency table and cannot measure; "
            "sessions need a device profile"
        )
    backend = get_backend(profile.backend)
    backend.check_available(profile)
    protocol = profile.protocol
    prepared = {name: _prepare(path, profile, backend) for name, path in networks.items()}
    order = interleaved_order(sorted(networks), rounds, seed)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in networks}
    total, done = rounds * len(networks), 0
    for round_order in order:
        for name in round_order:
            runnable, inputs = prepared[name]
            samples[name].append(backend.run_repeat(runnable, profile, protocol, inputs))
            done += 1
            if progress is not None:
                progress("interleaved session", done, total)
    return order, samples


def latency_fields(stats: LatencyStats, max_cov: float) -> dict[str, float | int | bool]:
    """A record's latency fields from a network's session statistics (no re-measurement in a
    session: ``stable`` is whether the robust CoV is within ``max_cov``)."""
    return {
        "latency_ms_median": stats.median_ms,
        "latency_ms_mean": stats.mean_ms,
        "latency_ms_p90": stats.p90_ms,
        "latency_ms_p95": stats.p95_ms,
        "latency_ms_p99": stats.p99_ms,
        "latency_ms_iqr": stats.iqr_ms,
        "latency_cov": stats.cov,
        "latency_robust_cov": stats.robust_cov,
        "latency_ms_ci_low": stats.ci_low_ms,
        "latency_ms_ci_high": stats.ci_high_ms,
        "latency_samples": stats.n,
        "latency_repeats": stats.repeats,
        "stable": stats.robust_cov <= max_cov,
    }


def measure_run_sessions(
    run_dir: Path,
    records: pd.DataFrame,
    code_version: str,
    *,
    rounds: int | None = None,
    seed: int = 0,
    only_stale: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Measure one session per profile over the run's ok cells that have a saved deploy network;
    store each (replacing an older one); return the session files written.

    ``rounds`` defaults to the profile protocol's ``repeats``. With ``only_stale``, a profile
    whose stored session already covers exactly those cells is left as it is.
    """
    run_dir = Path(run_dir)
    written = []
    ok = records[records["status"] == "ok"]
    for profile_hash, cells in ok.groupby("profile_hash", sort=True):
        hashes = sorted(h for h in cells["cell_hash"] if deploy_path(run_dir, h).is_file())
        path = session_path(run_dir, str(profile_hash))
        if not hashes or (only_stale and _covers(path, hashes)):
            continue
        profile = _run_profile(str(cells["profile_name"].iloc[0]), str(profile_hash))
        chosen = rounds or profile.protocol.repeats
        order, samples = measure_interleaved(
            {h: deploy_path(run_dir, h) for h in hashes}, profile, chosen, seed, progress
        )
        session = Session(
            run_id=run_dir.name,
            profile_name=profile.name,
            profile_hash=profile.hash,
            rounds=chosen,
            seed=seed,
            order=order,
            networks={
                name: SessionNetwork(
                    samples_ms=[repeat.tolist() for repeat in repeats],
                    fields=latency_fields(summarize(repeats), profile.protocol.max_cov),
                )
                for name, repeats in samples.items()
            },
            environment=capture_environment(profile),
            code_version=code_version,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_with(path, lambda t, s=session: t.write_text(s.model_dump_json(indent=1)))
        written.append(path)
    return written


def read_session(path: Path) -> Session:
    try:
        return Session.model_validate_json(Path(path).read_bytes())
    except (OSError, ValidationError) as error:
        raise DepthbenchError(
            f"{path}: not a readable session file ({error}); move it away and run "
            "`depthbench measure-run` on the run to measure the session again"
        ) from error


def with_session_latency(frame: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """The records with each session's statistics as the final latency of the cells it measured.

    Adds ``latency_source`` (``session``, ``cell``, or empty for unmeasured cells) and the
    cell-time median and interval as ``cell_latency_ms_*``, whatever the source. ``budget_met``
    is judged again on the session's median where a session measured the cell and the cell had
    a budget to meet.
    """
    frame = frame.copy()
    for column, kept in CELL_LATENCY_COLUMNS.items():
        frame[kept] = frame[column]
    frame["latency_source"] = pd.Series(
        np.where(frame["latency_ms_median"].notna(), "cell", None), index=frame.index
    ).astype("string")
    for path in sorted((Path(run_dir) / SESSIONS_DIR).glob("*.json")):
        session = read_session(path)
        for cell_hash, network in session.networks.items():
            rows = (frame["cell_hash"] == cell_hash) & (
                frame["profile_hash"] == session.profile_hash
            )
            for column, value in network.fields.items():
                frame.loc[rows, column] = value
            frame.loc[rows, "latency_source"] = "session"
    # only cells that were judged at all: the original has a target (its fraction 1.0) but no
    # budget to meet
    judged = (
        (frame["latency_source"] == "session").fillna(False)
        & frame["target_ms"].notna()
        & frame["budget_met"].notna()
    )
    frame.loc[judged, "budget_met"] = (
        frame.loc[judged, "latency_ms_median"] <= frame.loc[judged, "target_ms"]
    )
    return frame


def _covers(path: Path, hashes: list[str]) -> bool:
    return path.is_file() and sorted(read_session(path).networks) == hashes


def _run_profile(name: str, profile_hash: str) -> Profile:
    profile = load_profile(name)
    if profile.hash != profile_hash:
        raise DepthbenchError(
            f"profile {name!r} on the search path has hash {profile.hash}, but the run measured "
            f"under {profile_hash}: a session must measure under the run's profile; restore that "
            "profile file (or put it on DEPTHBENCH_PROFILE_PATH)"
        )
    return profile


def _prepare(path: Path, profile: Profile, backend: Backend) -> tuple[Path | nn.Module, np.ndarray]:
    """What the backend runs for the saved network at ``path``, and the harness's fixed input."""
    shape, dtype = onnx_input(path, profile.batch)
    inputs = np.random.default_rng(profile.protocol.seed).standard_normal(shape).astype(dtype)
    if backend.model_kind == "onnx":
        return path, inputs
    module_path = path.with_suffix(".pt")
    if not module_path.is_file():
        raise DepthbenchError(
            f"backend {backend.name!r} of profile {profile.name!r} runs torch modules, and "
            f"{module_path} is missing; run the cell again (move its cell file away) to save it"
        )
    module = torch.load(module_path, weights_only=False)  # a file this run saved itself
    return (module.half() if dtype == np.float16 else module), inputs
