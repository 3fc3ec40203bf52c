"""The harness commands of the ``depthbench`` CLI: ``profiles``, ``measure`` and ``table``.

``register(app)`` adds them to the main typer app (``suite.cli``). Every ``DepthbenchError``
becomes its message on stderr and exit code 1.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from suite.cache import LATENCY_TABLES, cache_root
from suite.cli.completion import complete_models, complete_profiles
from suite.cli.options import (
    DEFAULT_RESOLUTION,
    OVERRIDE_FIELDS,
    Batch,
    Format,
    MinIterations,
    MinSeconds,
    NumClasses,
    OutputFormat,
    Repeats,
    Resolution,
    Threads,
    WarmupS,
    Width,
    check_new_file,
    check_resolution,
)
from suite.cli.options import Profile as ProfileOption
from suite.cli.output import emit
from suite.console import console, err_console, step_progress, user_errors
from suite.errors import DepthbenchError
from suite.measure.profiles import (
    Profile,
    derive_profile,
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
    profiles.command("new")(new_command)
    app.add_typer(profiles, name="profiles")
    app.command("measure")(measure_command)
    app.command("table")(table_command)


def list_command(output: Format = OutputFormat.table) -> None:
    """List every profile on the search path."""
    with user_errors():
        profiles = list_profiles()
    rows = [
        {
            "name": profile.name,
            "backend": profile.backend,
            "device": _device_rule(profile, markup=False),
            "precision": profile.precision,
            "batch": profile.batch,
            "resolution": profile.resolution,
            "hash": profile.hash,
        }
        for profile in profiles
    ]

    def table() -> Table:
        shown = Table(*rows[0] if rows else ["name"], caption=_search_path())
        for row in rows:
            cells = {**row, "resolution": row["resolution"] or "model's"}
            shown.add_row(*(escape(str(value)) for value in cells.values()))
        return shown

    emit(rows, output, table)


def _search_path() -> str:
    return f"search path: {', '.join(map(str, profile_dirs()))}"


def show_command(
    name: Annotated[
        str, typer.Argument(help="Profile name or YAML file.", autocompletion=complete_profiles)
    ],
) -> None:
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


def new_command(
    name: Annotated[str, typer.Argument(help="The new profile's name (and file name).")],
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="The profile to start from (name or YAML file).",
            autocompletion=complete_profiles,
        ),
    ] = DEFAULT_PROFILE,
) -> None:
    """Write a new profile, a commented copy of another, into your profile folder."""
    with user_errors():
        origin = load_profile(source)
        folder = profile_dirs()[0]  # $DEPTHBENCH_PROFILE_PATH's first entry, else the user's
        path = folder / f"{name}.yaml"
        if path.exists():
            raise DepthbenchError(f"{path} exists; edit it, or choose another name")
        text = profile_template(_profile_file(source), origin, name)
        content = yaml.safe_load(text)
        try:
            Profile.model_validate(content)
        except ValidationError as error:
            problem = error.errors()[0]
            raise DepthbenchError(
                f"cannot make profile {name!r}: {'.'.join(map(str, problem['loc']))}: "
                f"{problem['msg']} (a name is lower-case letters, digits, '.', '_' and '-')"
            ) from None
        folder.mkdir(parents=True, exist_ok=True)
        with path.open("x") as file:  # never replaces a file written meanwhile
            file.write(text)
        read_profile(path)
    console.print(f"wrote {escape(str(path))}: edit it, then `depthbench profiles validate {path}`")


def profile_template(source_file: Path, origin: Profile, name: str) -> str:
    """``source_file``'s text, comments kept, renamed to ``name``, with a header saying how to go
    on. Top-level YAML keys start a line, so the name and description are replaced line-wise."""
    body = re.sub(r"^name:.*$", f"name: {name}", source_file.read_text(), count=1, flags=re.M)
    body = re.sub(
        r"^description:.*?(?=^\S)",
        f"description: >-\n  Copy of {origin.name}: say what differs.\n",
        body,
        count=1,
        flags=re.M | re.S,
    )
    header = (
        f"# Profile {name}, made by `depthbench profiles new` from {origin.name} (hash "
        f"{origin.hash}).\n"
        "# Change the device rule, the backend settings and the protocols; every field is "
        "explained in docs/measurement.md.\n"
        "# Check it with `depthbench profiles validate`; results record its content hash.\n"
    )
    return header + body


def _profile_file(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return path
    return {p.stem: p for p in profile_files()}[name_or_path]


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


def _device_rule(profile: Profile, markup: bool = True) -> str:
    if profile.device is None:
        return "none (replay)"
    rules = [("cpu", profile.device.cpu_model), ("gpu", profile.device.gpu_name)]
    rule = ", ".join(f"{kind} ~ {pattern}" for kind, pattern in rules if pattern)
    return escape(rule) if markup else rule


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
        str,
        typer.Argument(
            help="A model name (mobilenet_v2, resnet18...) or an .onnx file.",
            autocompletion=complete_models,
        ),
    ],
    profile_name: ProfileOption = DEFAULT_PROFILE,
    width: Width = 1.0,
    resolution: Resolution = None,
    num_classes: NumClasses = 1000,
    warmup_s: WarmupS = None,
    min_iterations: MinIterations = None,
    min_seconds: MinSeconds = None,
    repeats: Repeats = None,
    batch: Batch = None,
    threads: Threads = None,
    output: Format = OutputFormat.table,
    results_file: Annotated[
        Path | None,
        typer.Option(help="Also write the result as JSON here (a new file).", show_default=False),
    ] = None,
) -> None:
    """Measure one network's latency under a profile and print the statistics and throughput."""
    from suite.core.models import build_model
    from suite.measure.harness import measure

    with user_errors():
        profile = overridden_profile(
            load_profile(profile_name),
            warmup_s=warmup_s,
            min_iterations=min_iterations,
            min_seconds=min_seconds,
            repeats=repeats,
            batch=batch,
            threads=threads,
        )
        if results_file is not None:
            check_new_file(results_file, "--results-file")
        if model.endswith(".onnx"):
            result = measure(_existing(Path(model)), profile)
        else:
            size = _resolution(profile, resolution)
            network = build_model(model, num_classes=num_classes, width=width).eval()
            result = measure(network, profile, input_shape=(3, size, size))
        record = result_record(model, profile, result)
        if results_file is not None:
            results_file.write_text(json.dumps(record, indent=2) + "\n")
    emit(
        record, output, lambda: _statistics_table(result, profile, f"{model} under {profile.name}")
    )
    if results_file is not None:
        err_console.print(f"wrote {escape(str(results_file))}")


def overridden_profile(profile: Profile, **overrides: object) -> Profile:
    """``profile`` itself, or with the measurement overrides given on the command line
    (``warmup_s=`` for ``--warmup-s``, and so on; None: not given)."""
    given = {
        "--" + name.replace("_", "-"): value
        for name, value in overrides.items()
        if value is not None
    }
    if not given:
        return profile
    if profile.is_replay:
        raise DepthbenchError(
            f"profile {profile.name!r} replays a table and measures nothing: drop "
            f"{', '.join(given)}, or use a measuring profile"
        )
    present = profile.model_dump()
    replacements = {}
    for option, value in given.items():
        paths = [p for p in OVERRIDE_FIELDS[option] if present.get(p.split(".")[0]) is not None]
        if not paths:
            raise DepthbenchError(
                f"{option} does not apply to backend {profile.backend!r} of profile "
                f"{profile.name!r}; set it in a profile file instead (depthbench profiles new)"
            )
        replacements |= dict.fromkeys(paths, value)
    return derive_profile(profile, replacements)


def result_record(model: str, profile: Profile, result: LatencyResult) -> dict:
    """One measurement as plain data: what ``--format json`` and ``--results-file`` hold."""
    return {
        "model": model,
        "profile": profile.name,
        "profile_hash": profile.hash,
        "batch": profile.batch,
        "throughput_per_s": throughput(profile.batch, result.median_ms),
        # the interval of a reciprocal: the latency's bounds swapped
        "throughput_per_s_ci_low": throughput(profile.batch, result.ci_high_ms),
        "throughput_per_s_ci_high": throughput(profile.batch, result.ci_low_ms),
        **result.as_record_fields(),
        "attempts": result.attempts,
        "environment": result.environment,
    }


def throughput(batch: int, median_ms: float) -> float:
    """Samples per second: the batch over the median latency."""
    return batch * 1000.0 / median_ms


def table_command(
    model: Annotated[
        str,
        typer.Argument(
            help="A model name: mobilenet_v2, resnet18, vgg19_bn...", autocompletion=complete_models
        ),
    ],
    profile_name: ProfileOption = DEFAULT_PROFILE,
    rule: Annotated[str, typer.Option(help="Merge rule: upstream or general.")] = "upstream",
    width: Width = 1.0,
    resolution: Resolution = None,
    num_classes: NumClasses = 1000,
    cache_path: Annotated[
        Path | None, typer.Option("--cache", help="SQLite cache (default: the user cache dir).")
    ] = None,
    warmup_s: WarmupS = None,
    min_iterations: MinIterations = None,
    min_seconds: MinSeconds = None,
    repeats: Repeats = None,
    batch: Batch = None,
    threads: Threads = None,
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
    from suite.measure.tables import TableCache, build_table, measure_additivity

    with user_errors():
        profile = overridden_profile(
            load_profile(profile_name),
            warmup_s=warmup_s,
            min_iterations=min_iterations,
            min_seconds=min_seconds,
            repeats=repeats,
            batch=batch,
            threads=threads,
        )
        size = _resolution(profile, resolution)
        traced = trace_model(model, width=width, num_classes=num_classes, resolution=size)
        cache = (
            None if profile.is_replay else TableCache(cache_path or cache_root() / LATENCY_TABLES)
        )
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
            f"{traced.chain.name} under {profile.name} (hash {profile.hash}, {rule} rule): "
            f"{len(frame)} segments, {source}; table method {table.method}{overhead}"
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


def _statistics_table(result: LatencyResult, profile: Profile, title: str) -> Table:
    table = Table("statistic", "value", title=escape(title))
    rows = [
        ("median", f"{result.median_ms:.4g} ms"),
        (
            "throughput",
            f"{throughput(profile.batch, result.median_ms):.4g} samples/s (95% CI "
            f"{throughput(profile.batch, result.ci_high_ms):.4g} .. "
            f"{throughput(profile.batch, result.ci_low_ms):.4g}; batch {profile.batch})",
        ),
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
