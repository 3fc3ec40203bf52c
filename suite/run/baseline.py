"""The base network's latency: one full-protocol measurement per run and profile, stored with the
run and shared by every cell.

A ``fraction`` budget is a fraction of the base network's latency. If each process measured that
base itself, a cell's target would depend on the load at the moment its process started (and on
which process, or Ray lane, ran it), and the same cell hash could get different plans in two runs.
So the run measures the original network once per profile, under the profile's full
``protocol``, before any cell of that profile runs, and stores it as

    <run_id>/baselines/<profile_hash>.json   samples, statistics, environment, code version

A later run (a resumed or grown grid) reads it back instead of measuring again, so every cell of a
run, whenever and wherever it runs, resolves its budget against the same number. The file is
written once and never replaced (the first writer wins, as for cell files); to measure the base
again, move it away, and expect the targets of later cells to differ from the stored ones.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from suite.core.plan import Plan
from suite.core.realize import deploy_network, trainable_network
from suite.core.trace import TracedModel
from suite.errors import DepthbenchError
from suite.files import atomic_write
from suite.measure.backends import get_backend
from suite.measure.harness import LatencyResult, measure
from suite.measure.profiles import Profile

BASELINES_DIR = "baselines"


class Baseline(BaseModel):
    """One stored measurement of a run's base network under one profile."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="the chain's name, e.g. mobilenet_v2-0.5")
    profile_name: str
    profile_hash: str
    latency_ms_median: float
    latency_ms_ci_low: float
    latency_ms_ci_high: float
    latency_robust_cov: float
    stable: bool
    samples_ms: list[float] = Field(description="every sample of the kept attempt, in order")
    stats: dict[str, float | int] = Field(description="the harness's full statistics")
    environment: dict[str, Any]
    code_version: str
    measured_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))


def baseline_path(run_dir: Path, profile: Profile) -> Path:
    return Path(run_dir) / BASELINES_DIR / f"{profile.hash}.json"


def measure_base(traced: TracedModel, profile: Profile) -> LatencyResult:
    """The original network's deploy form measured under the profile's full protocol."""
    original = deploy_network(trainable_network(traced, Plan.original(traced.chain)))
    resolution = traced.chain.resolution
    return measure(original, profile, input_shape=(3, resolution, resolution))


def stored_base_latency(
    run_dir: Path, traced: TracedModel, profile: Profile, code_version: str
) -> float | None:
    """The median of ``run_baseline``; None where the profile cannot measure here (a replay
    profile, an unavailable backend), so that each cell fails with the reason as before."""
    if profile.is_replay:
        return None
    try:
        get_backend(profile.backend).check_available(profile)
    except DepthbenchError:
        return None
    return run_baseline(run_dir, traced, profile, code_version).latency_ms_median


def run_baseline(
    run_dir: Path, traced: TracedModel, profile: Profile, code_version: str
) -> Baseline:
    """The run's stored base measurement under ``profile``; measured and stored if there is none.

    A stored one of another network is refused: a run has one base network.
    """
    path = baseline_path(run_dir, profile)
    if not path.exists():
        result = measure_base(traced, profile)
        _write_once(path, _baseline(result, traced.chain.name, profile, code_version))
    stored = read_baseline(path)
    if stored.model != traced.chain.name:
        raise DepthbenchError(
            f"{path} holds the base latency of {stored.model}, but this run's network is "
            f"{traced.chain.name}; use a new run id, or move that file away"
        )
    return stored


def read_baseline(path: Path) -> Baseline:
    try:
        return Baseline.model_validate_json(Path(path).read_bytes())
    except (OSError, ValidationError) as error:
        raise DepthbenchError(
            f"{path}: not a readable base-latency file ({error}); move it away to measure the base "
            "network again"
        ) from error


def _baseline(result: LatencyResult, model: str, profile: Profile, code_version: str) -> Baseline:
    stats = {
        name: value
        for name, value in result.as_record_fields().items()
        if not isinstance(value, bool)
    }
    return Baseline(
        model=model,
        profile_name=profile.name,
        profile_hash=profile.hash,
        latency_ms_median=result.median_ms,
        latency_ms_ci_low=result.ci_low_ms,
        latency_ms_ci_high=result.ci_high_ms,
        latency_robust_cov=result.robust_cov,
        stable=result.stable,
        samples_ms=result.samples.tolist(),
        stats=stats,
        environment=result.environment,
        code_version=code_version,
    )


def _write_once(path: Path, baseline: Baseline) -> None:
    """Write ``baseline`` to ``path`` atomically unless a file is there (then keep that one)."""
    try:
        atomic_write(path, baseline.model_dump_json(indent=2), exclusive=True)
    except FileExistsError:
        pass  # another process stored the base first: every cell uses that one
