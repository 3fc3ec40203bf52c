"""Experiment configuration: one YAML file describes a whole grid of cells.

A file names the network and the data set, where the base weights come from (a checkpoint, or a
recipe to train them from scratch, cached), the methods with their configs, the latency budgets,
the hardware profiles, the seeds and the one fine-tuning recipe every method gets::

    name: default
    model: {name: mobilenet_v2, width: 0.5}
    dataset: {name: digits, resolution: 32}
    base: {train: {epochs: 10, lr: 0.1, batch_size: 64}}   # or {checkpoint: path/to/state_dict.pt}
    methods: all                     # or a list: [dp-depth, {name: layerprune, config: {...}}]
    budgets: [0.9, 0.8, 0.7, 0.6]    # fractions of the base latency, or {kind: ms, value: 2.5}
    profiles: [cpu-onnxruntime]
    seeds: [0]
    finetune: {steps: 40, lr: 0.02, batch_size: 64}   # amp: true for mixed precision on CUDA
    fidelity: full                   # or quick, or smoke (tests)
    compute: {device: auto, workers: 4}   # where training runs; optional, not in any hash

Method names, method configs and profiles are checked against the registry and the profile search
path when the file is read, so a typo fails before any training starts. A run measures every
cell's network end to end, so replay profiles (an upstream table, no device) are refused here.
Budgets are finite positive numbers; ``name`` defaults to the file's stem, which must then be a
valid name itself. Relative paths
(``dataset.root``, ``base.checkpoint``) are relative to the file's directory; ``~`` is expanded.
Every error names the file, the field and what is allowed there.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from suite.core.budget import Budget, Fidelity
from suite.core.models import KNOWN_MODELS
from suite.core.registry import get_method, list_methods
from suite.errors import DepthbenchError
from suite.measure.profiles import load_profile
from suite.run.data import KNOWN_DATASETS
from suite.run.train import Compute, FinetuneRecipe
from suite.yaml_input import describe, load_yaml_model

# The shipped experiment files: the repository's configs/ folder, installed as the data package
# suite.configs (pyproject.toml maps it); a regular package on disk, so this is its directory.
CONFIG_DIR = Path(str(resources.files("suite.configs")))
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
ALL_METHODS = "all"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    name: str
    width: float = Field(1.0, gt=0, description="MobileNetV2's width multiplier")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in KNOWN_MODELS:
            raise ValueError(f"unknown model {name!r}; allowed: {', '.join(KNOWN_MODELS)}")
        return name


class DatasetConfig(_Strict):
    name: str
    root: Path | None = Field(None, description="local directory; digits needs none")
    resolution: int | None = Field(None, ge=1, description="default: the data set's own")
    seed: int = Field(0, description="of the holdout split (and digits' test split)")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in KNOWN_DATASETS:
            raise ValueError(f"unknown data set {name!r}; allowed: {', '.join(KNOWN_DATASETS)}")
        return name

    @field_validator("root")
    @classmethod
    def _relative_to_file(cls, root: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(root, info)


class BaseConfig(_Strict):
    """Where the base network's weights come from: exactly one of the two."""

    checkpoint: Path | None = Field(None, description="torch.save(model.state_dict(), path)")
    train: FinetuneRecipe | None = Field(None, description="train from scratch once, cached")

    @field_validator("checkpoint")
    @classmethod
    def _relative_to_file(cls, checkpoint: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(checkpoint, info)

    @model_validator(mode="after")
    def _exactly_one(self) -> BaseConfig:
        if (self.checkpoint is None) == (self.train is None):
            raise ValueError("give exactly one of 'checkpoint' (state dict) or 'train' (recipe)")
        return self


class MethodEntry(_Strict):
    """A registered method and its config, both as used: the method's own name (not an alias) and
    every default filled in, so that the cell hash sees exactly what runs."""

    name: str
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _registered(cls, entry: Any) -> Any:
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            return entry  # pydantic reports the wrong shape
        try:
            spec = get_method(entry["name"])
        except DepthbenchError as error:
            raise ValueError(str(error)) from error
        try:
            config = spec.config.model_validate(entry.get("config") or {})
        except ValidationError as error:
            problems = "; ".join(describe(problem, spec.config) for problem in error.errors())
            raise ValueError(f"config of method {spec.name!r}: {problems}") from error
        return {**entry, "name": spec.name, "config": config.model_dump(mode="json")}


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class Experiment(_Strict):
    name: str = Field(description="prefix of the run id; default: the file's stem")
    model: ModelConfig
    dataset: DatasetConfig
    base: BaseConfig
    methods: list[MethodEntry] = Field(min_length=1)
    budgets: list[Budget] = Field(min_length=1)
    profiles: list[str] = Field(["cpu-onnxruntime"], min_length=1)
    seeds: list[int] = Field([0], min_length=1)
    finetune: FinetuneRecipe
    fidelity: Fidelity = "full"
    compute: Compute = Compute()

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str, info: ValidationInfo) -> str:
        if re.fullmatch(NAME_PATTERN, name):
            return name
        allowed = "letters, digits, '.', '_' and '-', starting with a letter or digit"
        if name == (info.context or {}).get("default_name"):
            raise ValueError(
                f"not given, and the file name {name!r} cannot stand in for it ({allowed}): "
                "add a line 'name: ...' or rename the file"
            )
        raise ValueError(f"{name!r} is not usable in a run id: use {allowed}")

    @field_validator("methods", mode="before")
    @classmethod
    def _all_registered(cls, methods: Any) -> Any:
        if methods != ALL_METHODS:
            return methods
        return [spec.name for spec in list_methods()]

    @field_validator("budgets", mode="before")
    @classmethod
    def _bare_fractions(cls, budgets: Any) -> Any:
        if not isinstance(budgets, list):
            return budgets
        for budget in budgets:
            if isinstance(budget, str):
                raise ValueError(
                    f"{budget!r} is text: write a number (a fraction of the base latency, e.g. "
                    "0.7) or {kind: ms, value: 2.5}"
                )
        return [{"kind": "fraction", "value": b} if _is_number(b) else b for b in budgets]

    @field_validator("profiles")
    @classmethod
    def _loadable(cls, profiles: list[str]) -> list[str]:
        for name in profiles:
            try:
                profile = load_profile(name)
            except DepthbenchError as error:
                raise ValueError(str(error)) from error
            if profile.is_replay:
                raise ValueError(
                    f"profile {name!r} replays an upstream latency table and has no device, but a "
                    "run measures every cell's network; use a measuring profile (`depthbench "
                    "profiles detect` lists those this machine can run); replay profiles serve "
                    "`depthbench plan`"
                )
        return profiles

    @field_validator("methods", "budgets", "profiles", "seeds")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        repeated = [value for i, value in enumerate(values) if value in values[:i]]
        if repeated:
            raise ValueError(f"{repeated[0]!r} is listed twice; list each once")
        return values


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; ``name`` defaults to the file's stem."""
    path = Path(path)
    return load_yaml_model(
        Experiment,
        path,
        "experiment",
        defaults={"name": path.stem},
        context={"config_dir": path.parent.resolve(), "default_name": path.stem},
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _resolve(path: Path | None, info: ValidationInfo) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    config_dir = (info.context or {}).get("config_dir")
    return path if path.is_absolute() or config_dir is None else config_dir / path
