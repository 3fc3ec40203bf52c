"""The harness commands of the ``depthbench`` CLI: ``profiles``, ``measure`` and ``table``.

``register(app)`` adds them to the main typer app (``suite.cli``). Every ``DepthbenchError``
becomes its message on stderr and exit code 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from suite.cli.options import DEFAULT_RESOLUTION, NumClasses, Resolution, Width, check_resolution
from suite.cli.options import Profile as ProfileOption
from suite.console import console, err_console, step_progress, user_errors
from suite.errors import DepthbenchError
from suite.measure.profiles import (
    Profile,
    detect_machine,
    list_profiles,
    load_profile,
    profile_dirs,
    profile_files,
    read_profile,
)

if TYPE_CHECKING:
    from suite.measure.harness import LatencyResult
    from suite.measure.tables import AdditivityCheck

DEFAULT_PROFILE = "cpu-onnxruntime"


def register(app: typer.Typer) -> None:
    """Add ``profiles list|show|validate|detect``, ``measure`` and ``table`` to ``app``."""
    profiles = typer.Typer(
        help="Hardware profiles: list, show, validate, detect.", no_args_is_help=True
    )
    profiles.command("list")(list_command)
    profiles.command("show")(show_command)
    profiles.command("validate")(validate_command)
    profiles.command("detect")(detect_command)
    app.add_typer(profiles, name="profiles")
    app.command("measure")(measure_command)
    app.command("table")(table_command)


def list_command() -> None:
    """List every profile on the search path."""
    with user_errors():
        table = Table("name", "backend", "device", "precision", "batch", "resolution", "hash")
        for profile in list_profiles():
            table.add_row(
                profile.name,
                profile.backend,
                _device_rule(profile),
                profile.precision,
                str(profile.batch),
                str(profile.resolution or "model's"),
                profile.hash,
            )
        console.print(table)
        console.print(f"search path: {', '.join(map(str, profile_dirs()))}")


def show_command(name: Annotated[str, typer.Argument(help="Profile name or YAML file.")]) -> None:
    """Print a profile's validated content and hash."""
    with user_errors():
        profile = load_profile(name)
        console.print(escape(yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)))
        console.print(f"hash: {profile.hash}")


def validate_command(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Profile files (default: every profile).")
    ] = None,
) -> None:
    """Validate profile files; report every problem, exit 1 if any file is invalid."""
    with user_errors():
        files = paths or profile_files()
    failures = 0
    for path in files:
        try:
            profile = read_profile(path)
        except DepthbenchError as err:
            failures += 1
            err_console.print(f"[red]invalid[/red] {escape(str(err))}")
        else:
            console.print(f"[green]ok[/green] {path} ({profile.name}, hash {profile.hash})")
    if failures:
        raise typer.Exit(1)


def detect_command() -> None:
    """Show which profiles this machine can run (device rule matches and backend available)."""
    with user_errors():
        machine = detect_machine()
        console.print(
            f"CPU: {escape(machine.cpu_model)} ({machine.cpu_cores} cores); GPUs: "
            f"{escape(', '.join(machine.gpu_names)) or 'none'}"
        )
        table = Table("profile", "device rule", "matches", "runs here")
        for profile in list_profiles():
            matches = profile.matches(machine.cpu_model, machine.gpu_names)
            table.add_row(
                profile.name,
                _device_rule(profile),
                "n/a" if profile.is_replay else ("yes" if matches else "no"),
                _verdict(profile, matches),
            )
        console.print(table)


def _device_rule(profile: Profile) -> str:
    if profile.device is None:
        return "none (replay)"
    rules = [("cpu", profile.device.cpu_model), ("gpu", profile.device.gpu_name)]
    return escape(", ".join(f"{kind} ~ {pattern}" for kind, pattern in rules if pattern))


def _verdict(profile: Profile, matches: bool) -> str:
    from suite.measure.backends import get_backend

    if profile.is_replay:
        return "tables only (replayed data)"
    if not matches:
        return "no: not this device"
    try:
        get_backend(profile.backend).check_available(profile)
    except DepthbenchError as err:
        return escape(f"no: {err}")
    return "[green]yes[/green]"


def measure_command(
    model: Annotated[
        str, typer.Argument(help="A model name (mobilenet_v2, resnet18...) or an .onnx file.")
    ],
    profile_name: ProfileOption = DEFAULT_PROFILE,
    width: Width = 1.0,
    resolution: Resolution = None,
    num_classes: NumClasses = 1000,
) -> None:
    """Measure one network's latency under a profile and print the statistics."""
    from suite.core.models import build_model
    from suite.measure.harness import measure

    with user_errors():
        profile = load_profile(profile_name)
        if model.endswith(".onnx"):
            result = measure(_existing(Path(model)), profile)
        else:
            size = _resolution(profile, resolution)
            network = build_model(model, num_classes=num_classes, width=width).eval()
            result = measure(network, profile, input_shape=(3, size, size))
        console.print(_statistics_table(result, f"{model} under {profile.name}"))


def table_command(
    model: Annotated[str, typer.Argument(help="A model name: mobilenet_v2, resnet18, vgg19_bn...")],
    profile_name: ProfileOption = DEFAULT_PROFILE,
    rule: Annotated[str, typer.Option(help="Merge rule: upstream or general.")] = "upstream",
    width: Width = 1.0,
    resolution: Resolution = None,
    num_classes: NumClasses = 1000,
    cache_path: Annotated[
        Path | None, typer.Option("--cache", help="SQLite cache (default: the user cache dir).")
    ] = None,
    additivity_repeats: Annotated[
        int,
        typer.Option(
            min=0,
            help="Fresh measurements of the additivity check, for its interval (0: skip it).",
        ),
    ] = 3,
) -> None:
    """Build (or read from the cache, or replay) a latency table; print it with its additivity."""
    from suite.core.trace import trace_model
    from suite.measure.tables import TableCache, build_table, default_cache_path, measure_additivity

    with user_errors():
        profile = load_profile(profile_name)
        size = _resolution(profile, resolution)
        traced = trace_model(model, width=width, num_classes=num_classes, resolution=size)
        cache = None if profile.is_replay else TableCache(cache_path or default_cache_path())
        with step_progress() as steps:
            table = build_table(
                traced.chain,
                profile,
                rule=rule,
                cache=cache,
                progress=lambda done, total: steps("latency table segments", done, total),
            )
        frame = table.to_frame()
        if table.replayed:
            source = f"replayed from {profile.replay.table}"
        else:
            source = (
                f"{table.measured} measured, {table.cached} cached, {table.remeasured} corrupt "
                f"cache rows re-measured, {len(table.unstable)} unstable"
            )
        overhead = (
            f", median intercept (call cost left out) {table.overhead_ms:.4g} ms"
            if table.overhead_ms is not None
            else ""
        )
        console.print(
            f"{traced.chain.name} under {profile.name} ({rule} rule): {len(frame)} segments, "
            f"{source}; table method {table.method}{overhead}"
        )
        console.print(
            f"T(i, j): min {frame.time_ms.min():.4g} ms, median {frame.time_ms.median():.4g} ms, "
            f"max {frame.time_ms.max():.4g} ms"
        )
        if profile.is_replay:
            console.print("additivity: not measurable, a replay profile has no device")
            return
        if additivity_repeats == 0:
            return
        with step_progress() as steps:
            check = measure_additivity(
                traced,
                profile,
                additivity_repeats,
                progress=lambda done, total: steps("additivity check", done, total),
            )
        console.print(_additivity_line(check))


def _additivity_line(check: AdditivityCheck) -> str:
    """The median run of the check, its error's 95% interval and what the prediction sums."""
    median = check.median_run
    low, high = check.interval
    return (
        f"additivity ({check.method} table, {len(check.runs)} fresh measurements): predicted "
        f"{median.predicted_ms:.4g} ms (single-unit segments {median.segment_sum_ms:.4g} ms + "
        f"stem, head and call {median.outside_ms:.4g} ms) vs end-to-end median "
        f"{median.end_to_end_ms:.4g} ms: error {check.relative_error:+.1%} (95% CI "
        f"{low:+.1%} .. {high:+.1%})"
    )


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DepthbenchError(f"ONNX file {path} does not exist")
    return path


def _resolution(profile: Profile, requested: int | None) -> int:
    """The input size: the profile's if it fixes one (a different request is an error)."""
    check_resolution(requested)
    if profile.resolution is not None and requested not in (None, profile.resolution):
        raise DepthbenchError(
            f"profile {profile.name!r} fixes the resolution {profile.resolution}; drop "
            f"--resolution {requested} or use a profile with resolution: null"
        )
    return profile.resolution or requested or DEFAULT_RESOLUTION


def _statistics_table(result: LatencyResult, title: str) -> Table:
    table = Table("statistic", "value", title=escape(title))
    rows = [
        ("median", f"{result.median_ms:.4g} ms"),
        ("95% CI of the median", f"{result.ci_low_ms:.4g} .. {result.ci_high_ms:.4g} ms"),
        ("mean", f"{result.mean_ms:.4g} ms"),
        ("p90 / p95 / p99", f"{result.p90_ms:.4g} / {result.p95_ms:.4g} / {result.p99_ms:.4g} ms"),
        ("IQR", f"{result.iqr_ms:.4g} ms"),
        ("CoV / robust CoV (gated)", f"{result.cov:.2%} / {result.robust_cov:.2%}"),
        ("samples", str(result.n)),
        ("stable", "yes" if result.stable else f"[red]no[/red] (after {result.attempts} attempts)"),
        ("profile hash", result.profile_hash),
        (
            "CPU",
            escape(f"{result.environment['cpu_model']} ({result.environment['cpu_cores']} cores)"),
        ),
        ("GPU", escape(", ".join(result.environment["gpu_names"]) or "none")),
        (
            "versions",
            escape(
                ", ".join(
                    f"{package} {result.environment[package]}"
                    for package in ("torch", "onnxruntime", "tensorrt")
                    if result.environment[package]
                )
            ),
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
