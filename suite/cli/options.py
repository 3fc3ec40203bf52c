"""The options several ``depthbench`` commands share, each defined once, and their checks.

Every command takes its shared options from here as typer ``Annotated`` aliases, so that a flag is
spelled, typed and explained the same everywhere. Checks of values typer cannot express (a budget
that is a positive finite number, a positive resolution) raise ``DepthbenchError``, so that bad
input is one message naming the option and exit code 1, like every other user error.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from suite.errors import DepthbenchError


class BudgetKind(StrEnum):
    fraction = "fraction"
    ms = "ms"
    table = "table"


class Fidelity(StrEnum):
    smoke = "smoke"
    full = "full"


DEFAULT_RESOLUTION = 224  # where neither a profile nor the data fixes one

ModelArgument = Annotated[
    str, typer.Argument(help="mobilenet_v2, resnet18, resnet34, vgg11_bn, vgg16_bn, vgg19_bn.")
]
MethodArgument = Annotated[str, typer.Argument(help="A registered method (list-methods).")]
Width = Annotated[float, typer.Option(help="MobileNetV2 width multiplier.")]
Resolution = Annotated[
    int | None,
    typer.Option(
        help=f"Input resolution in pixels (default: the profile's if it fixes one, else "
        f"{DEFAULT_RESOLUTION}).",
        show_default=False,
    ),
]
DataResolution = Annotated[
    int | None,
    typer.Option(
        "--resolution",
        help="Data resolution in pixels (default: the data set's own).",
        show_default=False,
    ),
]
NumClasses = Annotated[int, typer.Option("--num-classes", help="Classifier outputs.")]
Profile = Annotated[str, typer.Option("--profile", "-p", help="Profile name or YAML file.")]
BudgetValue = Annotated[
    float, typer.Option("--budget", help="The latency budget, in --budget-kind units.")
]
BudgetKindOption = Annotated[
    BudgetKind,
    typer.Option(help="fraction of the base latency, ms, or table units (dp-depth's T0)."),
]
Seed = Annotated[int, typer.Option(help="Seed of the data split and the recipe.")]
Data = Annotated[str, typer.Option(help="digits, cifar10, cifar100, imagenet, imagefolder.")]
DataRoot = Annotated[Path | None, typer.Option(help="Local data directory (not digits).")]
Checkpoint = Annotated[
    Path | None,
    typer.Option(help="Base weights (a state dict); default: train once on the data, cached."),
]
TrainDevice = Annotated[
    str,
    typer.Option(
        "--device",
        help="Where networks train: auto (CUDA if torch sees one, else the CPU), cpu, cuda, "
        "cuda:N or mps. Latency is measured on the profile's device either way.",
    ),
]
FidelityOption = Annotated[
    Fidelity,
    typer.Option(
        "--fidelity", help="full, or smoke: the methods' cheap settings (no fine-tuning)."
    ),
]


def check_budget(value: float) -> float:
    """``--budget`` must be a positive finite number."""
    if not (math.isfinite(value) and value > 0):
        raise DepthbenchError(
            f"--budget {value:g} is not a budget: give a positive finite number (a fraction of "
            "the base latency such as 0.7, milliseconds, or table units, per --budget-kind)"
        )
    return value


def check_resolution(value: int | None, option: str = "--resolution") -> int | None:
    """A resolution, when given, is a positive number of pixels."""
    if value is not None and value <= 0:
        raise DepthbenchError(
            f"{option} {value} is not a resolution: give a positive number of pixels, e.g. 224"
        )
    return value
