"""Hardware profiles: one YAML file per profile, validated, hashed and matched to this machine.

A profile fixes everything a latency number depends on: the backend and its settings (threads,
affinity, spinning, graph optimisation; or the TensorRT builder configuration), the precision
recipe, the batch size and input resolution, the measurement protocol and the stability gate.
Its content hash is stored with every latency number, so numbers measured under different settings
never share a table or a cache row.

Where profiles are found, in this order: every directory listed in the environment variable
``DEPTHBENCH_PROFILE_PATH`` (separated like ``PATH``), then the shipped profiles, the data package
``suite.hardware_profiles`` (the repository's ``hardware_profiles/`` folder, installed inside the
package by pyproject.toml, so a checkout and an installed wheel find them alike). A profile is the
file ``<name>.yaml``; dropping a new file into one of these directories is all it takes to add one.
The same name in two places is an error.

Resolution: ``resolution: null`` means "the model's own input size" (the ``--resolution`` given
to the CLI, or the traced chain's), so one CPU profile serves 32x32 digits and 224x224 ImageNet
alike; a profile that fixes it (the upstream protocol fixes 224) measures at that size only.

Table method: ``table_method`` says how a latency table measures its segments (see
``suite.measure.tables``): ``standalone`` (each segment's own model; right where a call's fixed
cost and cache effects are negligible, e.g. TensorRT at batch 128) or ``slope`` (the per-copy
slope of N copies of the segment in one model; needed where a call costs as much as a small
segment, e.g. ONNX Runtime at batch 1). It changes tables only, never an end-to-end number, so it
is left out of the profile hash (end-to-end results stay comparable) and goes into the table
cache's key instead.

Replay profiles (``backend: replay``) have no device: they answer latency-table queries from a
table measured upstream (``suite/reference``), so a method can plan for hardware the user lacks.
Cost-model profiles (``backend: costmodel``) answer every query, end to end or per segment, from
an analytic roofline model (``suite.measure.backends.costmodel``): deterministic, and fast
anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from suite.errors import DepthbenchError
from suite.yaml_input import load_yaml_model

REPLAY = "replay"
# The measuring backends (suite/measure/backends/ implements one each); a profile names one of
# them or ``replay``.
BACKENDS = ("costmodel", "onnxruntime", "tensorrt", "torch", "trtexec")
PROFILE_PATH_ENV = "DEPTHBENCH_PROFILE_PATH"
# A regular package on disk (wheels install unpacked), so importlib.resources gives its directory.
PROJECT_PROFILE_DIR = Path(str(resources.files("suite.hardware_profiles")))
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "reference"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceMatch(_Strict):
    """Regular expressions (``re.search``) that this machine's CPU model / a GPU name must match."""

    cpu_model: str | None = None
    gpu_name: str | None = None

    @field_validator("cpu_model", "gpu_name")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"not a valid regular expression ({err})") from err
        return pattern

    @model_validator(mode="after")
    def _not_empty(self) -> DeviceMatch:
        if self.cpu_model is None and self.gpu_name is None:
            raise ValueError("give cpu_model, gpu_name or both")
        return self


class Protocol(_Strict):
    """How one latency number is measured (pyperf/trtexec/MLPerf practice; docs/measurement.md, "The protocol").

    Warm up for ``warmup_s``; then time single inferences until at least ``min_iterations`` *and*
    ``min_seconds`` are reached; do that ``repeats`` times, each with a fresh session or engine.
    Stability gate: if the robust coefficient of variation of the samples, IQR / (1.349 median),
    exceeds ``max_cov``, measure again, up to ``max_remeasure`` more times, and flag the result
    unstable if it never passes (``suite.measure.harness`` says why the gate is robust).
    """

    warmup_s: float = Field(ge=0)
    min_iterations: int = Field(ge=2)
    min_seconds: float = Field(ge=0)
    repeats: int = Field(ge=1)
    max_cov: float = Field(gt=0)
    max_remeasure: int = Field(ge=0)
    seed: int = 0


class OnnxRuntimeSettings(_Strict):
    """ONNX Runtime CPU session settings (ONNX Runtime's threading documentation; docs/measurement.md, "Backends")."""

    intra_op_threads: int = Field(ge=1)
    affinity: str | None = Field(
        None, description="session.intra_op_thread_affinities, e.g. '1;2' for 3 threads"
    )
    allow_spinning: bool
    graph_optimization_level: Literal["disabled", "basic", "extended", "all"]

    @model_validator(mode="after")
    def _affinity_groups(self) -> OnnxRuntimeSettings:
        # ORT pins every intra-op worker but not the calling thread: threads - 1 groups.
        if self.affinity is not None and len(self.affinity.split(";")) != self.intra_op_threads - 1:
            raise ValueError(
                f"affinity {self.affinity!r} must list intra_op_threads - 1 = "
                f"{self.intra_op_threads - 1} ';'-separated CPU groups"
            )
        return self


class TorchSettings(_Strict):
    """PyTorch execution: device, eager or ``torch.compile``, and the thread count."""

    device: Literal["cpu", "cuda"]
    mode: Literal["eager", "compile"]
    threads: int = Field(ge=1, description="torch.set_num_threads during the measurement")


class TensorRTSettings(_Strict):
    """TensorRT builder and execution settings for the Python API backend."""

    workspace_mib: int = Field(ge=1)
    builder_optimization_level: int = Field(ge=0, le=5)
    cuda_graph: bool


class TrtexecSettings(TensorRTSettings):
    """The ``trtexec`` flags on top of the builder settings (docs/measurement.md, "Backends")."""

    spin_wait: bool
    data_transfers: bool


class OpEfficiency(_Strict):
    """The fraction of the peak MAC rate each kind of op reaches (roofline compute term)."""

    dense_conv: float = Field(gt=0, le=1, description="convolutions with groups = 1 (or grouped)")
    depthwise_conv: float = Field(gt=0, le=1, description="one input channel per output channel")
    linear: float = Field(gt=0, le=1, description="matrix products (fully connected layers)")


class CostModelSettings(_Strict):
    """The analytic cost model's parameters (``suite.measure.backends.costmodel``).

    Each op costs max(MACs / (peak_gmacs · 1e9 · efficiency), bytes / (bandwidth_gbs · 1e9))
    seconds plus ``launch_overhead_us``; ops other than convolutions and matrix products are
    memory-bound.
    """

    peak_gmacs: float = Field(gt=0, description="peak multiply-accumulates per second, in 1e9")
    bandwidth_gbs: float = Field(gt=0, description="memory bandwidth, in 1e9 bytes per second")
    launch_overhead_us: float = Field(ge=0, description="fixed cost of every op, microseconds")
    efficiency: OpEfficiency


class ReplaySettings(_Strict):
    """An upstream latency table (a CSV in ``suite/reference``) and the network it measures."""

    table: str
    model: str
    width: float = Field(gt=0)

    @field_validator("table")
    @classmethod
    def _exists(cls, table: str) -> str:
        if not (REFERENCE_DIR / table).is_file():
            available = sorted(p.name for p in REFERENCE_DIR.glob("*table*.csv"))
            raise ValueError(
                f"no table {table!r} in suite/reference; available: {', '.join(available)}"
            )
        return table


TableMethod = Literal["standalone", "slope"]
TABLE_METHODS: tuple[TableMethod, ...] = ("standalone", "slope")

_SECTIONS = ("costmodel", "onnxruntime", "torch", "tensorrt", "trtexec", "replay")


class Profile(_Strict):
    """One hardware profile: the backend's section named like the backend, and for measuring
    profiles a device rule and two protocols (end to end, and the lighter one for table segments).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str
    backend: str
    device: DeviceMatch | None = None
    precision: Literal["fp32", "fp16"]
    batch: int = Field(ge=1)
    resolution: int | None = Field(None, ge=1)
    protocol: Protocol | None = None
    table_protocol: Protocol | None = None
    costmodel: CostModelSettings | None = None
    table_method: TableMethod = "standalone"
    onnxruntime: OnnxRuntimeSettings | None = None
    torch: TorchSettings | None = None
    tensorrt: TensorRTSettings | None = None
    trtexec: TrtexecSettings | None = None
    replay: ReplaySettings | None = None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, backend: str) -> str:
        allowed = [*BACKENDS, REPLAY]
        if backend not in allowed:
            raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(allowed)}")
        return backend

    @model_validator(mode="after")
    def _sections_fit_backend(self) -> Profile:
        for section in _SECTIONS:
            if section != self.backend and getattr(self, section) is not None:
                raise ValueError(
                    f"section {section!r} does not apply to backend {self.backend!r}; remove it"
                )
        if getattr(self, self.backend) is None:
            raise ValueError(f"backend {self.backend!r} needs a {self.backend!r} section")
        measuring = self.backend != REPLAY
        for field in ("device", "protocol", "table_protocol"):
            if measuring and getattr(self, field) is None:
                raise ValueError(f"a measuring profile needs {field!r}")
            if not measuring and getattr(self, field) is not None:
                raise ValueError(f"a replay profile measures nothing; remove {field!r}")
        if not measuring and self.table_method != "standalone":
            raise ValueError("a replay profile measures nothing; remove 'table_method'")
        if self.precision == "fp16" and not (self._runs_on_gpu or self.backend == "costmodel"):
            raise ValueError(
                "precision fp16 needs a GPU backend (tensorrt, trtexec, or torch on cuda) or "
                "the cost model (costmodel)"
            )
        return self

    @property
    def _runs_on_gpu(self) -> bool:
        return self.backend in ("tensorrt", "trtexec") or (
            self.torch is not None and self.torch.device == "cuda"
        )

    @property
    def is_replay(self) -> bool:
        return self.backend == REPLAY

    @property
    def settings(self) -> BaseModel:
        """The section of the profile's own backend."""
        return getattr(self, self.backend)

    @property
    def hash(self) -> str:
        """Content hash over every field but the free-text description and the table method
        (which changes tables, not end-to-end numbers; the table cache keys on it itself)."""
        content = self.model_dump(mode="json", exclude={"description", "table_method"})
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    def matches(self, cpu_model: str, gpu_names: Sequence[str]) -> bool:
        """Whether a machine with this CPU and these GPUs is the profile's device."""
        if self.device is None:
            return False
        cpu_ok = (
            self.device.cpu_model is None or re.search(self.device.cpu_model, cpu_model) is not None
        )
        gpu_ok = self.device.gpu_name is None or any(
            re.search(self.device.gpu_name, g) for g in gpu_names
        )
        return cpu_ok and gpu_ok


@dataclass(frozen=True)
class Machine:
    """What device matching needs to know about this machine (and results record about it)."""

    cpu_model: str
    cpu_cores: int
    cpu_governor: str | None
    gpu_names: tuple[str, ...]
    gpu_driver: str | None


def detect_machine() -> Machine:
    """This machine's CPU model, core count, frequency governor (where readable) and GPUs."""
    gpu_names, driver = _nvidia_gpus()
    return Machine(
        _cpu_model(),
        os.cpu_count() or 1,
        _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        gpu_names,
        driver,
    )


def _cpu_model() -> str:
    cpuinfo = _read("/proc/cpuinfo") or ""
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, flags=re.MULTILINE)
    return names[0].strip() if names else platform.processor() or platform.machine() or "unknown"


def _nvidia_gpus() -> tuple[tuple[str, ...], str | None]:
    """GPU names and driver from nvidia-smi; on a Jetson (no nvidia-smi) the board model."""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        result = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        rows = [line.split(", ") for line in result.stdout.splitlines() if line.strip()]
        if result.returncode == 0 and rows:
            return tuple(row[0] for row in rows), rows[0][-1]
    board = (_read("/proc/device-tree/model") or "").strip("\x00 \n")
    return ((board,), None) if "Jetson" in board else ((), None)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def profile_dirs() -> list[Path]:
    """The search path: ``$DEPTHBENCH_PROFILE_PATH`` entries first, then the user's profile folder
    (``user_profile_dir``), then the shipped profiles."""
    extra = [Path(p) for p in os.environ.get(PROFILE_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, user_profile_dir(), PROJECT_PROFILE_DIR]


def user_profile_dir() -> Path:
    """``$XDG_CONFIG_HOME/depthbench/profiles`` (``~/.config`` without XDG)."""
    root = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return root / "depthbench" / "profiles"


def profile_files() -> list[Path]:
    """Every ``*.yaml`` on the search path; the same name twice is an error."""
    seen: dict[str, Path] = {}
    for directory in profile_dirs():
        for path in sorted(directory.glob("*.yaml")):  # none where the folder does not exist
            if path.stem in seen:
                raise DepthbenchError(
                    f"profile {path.stem!r} is defined twice: {seen[path.stem]} and {path}; "
                    "rename one of the files (and its name field)"
                )
            seen[path.stem] = path
    return list(seen.values())


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a profile by name (searched on the profile path) or from a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return read_profile(path)
    files = {p.stem: p for p in profile_files()}
    if str(name_or_path) not in files:
        raise DepthbenchError(
            f"unknown profile {str(name_or_path)!r}; available: "
            f"{', '.join(sorted(files)) or 'none'} (searched "
            f"{', '.join(map(str, profile_dirs()))}; add a directory with ${PROFILE_PATH_ENV})"
        )
    return read_profile(files[str(name_or_path)])


def list_profiles() -> list[Profile]:
    return [read_profile(path) for path in profile_files()]


def read_profile(path: Path) -> Profile:
    """Parse and validate one profile file; every problem names the file, the field and the fix."""
    profile = load_yaml_model(Profile, path, "profile")
    if profile.name != path.stem:
        raise DepthbenchError(
            f"profile {path}: field 'name' is {profile.name!r} but must equal the file name "
            f"{path.stem!r}"
        )
    return profile


def derive_profile(profile: Profile, replacements: Mapping[str, Any]) -> Profile:
    """A copy of ``profile`` with fields replaced, validated like a profile file.

    ``replacements`` maps dotted field paths (``batch``, ``protocol.repeats``) to values. The copy
    keeps the name and says what was replaced in its description; its content hash differs, so
    results measured under it never mix with the original's.
    """
    content = profile.model_dump(mode="json")
    for path, value in replacements.items():
        *sections, field = path.split(".")
        target = content
        for section in sections:
            target = target[section]
        target[field] = value
    changes = ", ".join(f"{path}={value}" for path, value in replacements.items())
    content["description"] = f"{profile.description.rstrip()} Derived: {changes}."
    try:
        return Profile.model_validate(content)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise DepthbenchError(
            f"profile {profile.name!r} with {changes} is not valid: {problems}"
        ) from None


def measurement_resources(profile: Profile) -> dict[str, float]:
    """The Ray custom resource every measurement under ``profile`` holds: ``profile:<name>``.

    A node that stands for the profile advertises one unit of it, so it measures one thing at a
    time (a cell's network, or one latency-table segment) and no other node measures for it.
    """
    return {f"profile:{profile.name}": 1}
