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

from suite.cli.completion import complete_methods, complete_models, complete_profiles
from suite.core.budget import FIDELITIES
from suite.errors import DepthbenchError


class BudgetKind(StrEnum):
    fraction = "fraction"
    ms = "ms"
    table = "table"


# the core's fidelities as a typer choice (smoke, quick, full), so that both list the same names
Fidelity = StrEnum("Fidelity", [(name, name) for name in FIDELITIES])


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


DEFAULT_RESOLUTION = 224  # where neither a profile nor the data fixes one

ModelArgument = Annotated[
    str,
    typer.Argument(
        help="mobilenet_v2, resnet18, resnet34, vgg11_bn, vgg16_bn, vgg19_bn.",
        autocompletion=complete_models,
    ),
]
MethodArgument = Annotated[
    str,
    typer.Argument(help="A registered method (list-methods).", autocompletion=complete_methods),
]
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
Profile = Annotated[
    str,
    typer.Option(
        "--profile", "-p", help="Profile name or YAML file.", autocompletion=complete_profiles
    ),
]
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
    typer.Option(
        help="Base weights (a state dict). Without it, plan and compress train them once on the "
        "data (cached) and merge uses random weights."
    ),
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
        "--fidelity",
        help="the methods' search effort: full (the papers' settings), quick (each method's real "
        "algorithm at reduced effort) or smoke (the cheapest settings, for tests).",
    ),
]


MethodConfig = Annotated[
    list[str] | None,
    typer.Option(
        "--config",
        help="A method config field, key=value (value read as YAML: 1.2, true, [1, 2]); "
        "repeatable; wins over --config-file. Fields: depthbench methods show METHOD.",
        show_default=False,
    ),
]
MethodConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config-file", help="Method config fields as a YAML mapping.", show_default=False
    ),
]
Format = Annotated[
    OutputFormat,
    typer.Option(
        "--format",
        "-f",
        help="table (for people), json or csv (for scripts: on stdout, nothing else there).",
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


# Measurement overrides, as trtexec and timm's benchmark.py spell them. They make a derived profile
# (``suite.measure.profiles.derive_profile``), so the result carries its own content hash.
WarmupS = Annotated[
    float | None,
    typer.Option("--warmup-s", help="Override the protocols' warm-up seconds.", show_default=False),
]
MinIterations = Annotated[
    int | None,
    typer.Option(help="Override the protocols' minimum timed iterations.", show_default=False),
]
MinSeconds = Annotated[
    float | None,
    typer.Option(help="Override the protocols' minimum timed seconds.", show_default=False),
]
Repeats = Annotated[
    int | None,
    typer.Option(help="Override the protocols' repeats (fresh sessions).", show_default=False),
]
Batch = Annotated[
    int | None, typer.Option(help="Override the profile's batch size.", show_default=False)
]
Threads = Annotated[
    int | None,
    typer.Option(
        help="Override the backend's thread count (onnxruntime, torch).", show_default=False
    ),
]

# option -> the profile fields it replaces; the two protocols move together
OVERRIDE_FIELDS = {
    "--warmup-s": ("protocol.warmup_s", "table_protocol.warmup_s"),
    "--min-iterations": ("protocol.min_iterations", "table_protocol.min_iterations"),
    "--min-seconds": ("protocol.min_seconds", "table_protocol.min_seconds"),
    "--repeats": ("protocol.repeats", "table_protocol.repeats"),
    "--batch": ("batch",),
    "--threads": ("onnxruntime.intra_op_threads", "torch.threads"),
}


def check_new_file(path: Path | None, option: str) -> None:
    """An output file must not exist yet (nothing is overwritten) and its folder must."""
    if path is None:
        return
    if path.exists():
        raise DepthbenchError(f"{option} {path} exists; remove it or choose another path")
    if not path.parent.is_dir():
        raise DepthbenchError(
            f"{option} {path}: the folder {path.parent} does not exist; create it or write "
            "elsewhere"
        )


def plan_network(model: str, width: float, resolution: int, num_classes: int) -> dict:
    """What a plan file records about the network it was made for (its ``meta.network``)."""
    return {"model": model, "width": width, "resolution": resolution, "num_classes": num_classes}


def check_plan_network(plan_meta: dict, plan_path: Path, network: dict) -> None:
    """Refuse a plan made for another network; plans without ``meta.network`` are not checked."""
    made_for = plan_meta.get("network")
    if not isinstance(made_for, dict):
        return
    options = {"width": "--width", "resolution": "--resolution", "num_classes": "--num-classes"}
    differing = [key for key in network if key in made_for and made_for[key] != network[key]]
    if not differing:
        return
    fix = " ".join(f"{options[key]} {made_for[key]}" for key in differing if key in options)
    raise DepthbenchError(
        f"plan {plan_path} was made for {made_for.get('model')} width {made_for.get('width')} at "
        f"{made_for.get('resolution')} px with {made_for.get('num_classes')} classes, not "
        f"{network['model']} width {network['width']} at {network['resolution']} px with "
        f"{network['num_classes']} classes: "
        + (f"pass {fix}" if fix else f"merge it into {made_for.get('model')}")
    )
