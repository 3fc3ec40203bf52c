"""``depthbench env`` and ``depthbench cache``: what this machine and installation are.

``env`` is the suite's ``torch.utils.collect_env`` and ``pyperf system show``: the versions a
latency depends on (the harness's own ``capture_environment``, as results record it), the CPU's
governor, SMT and load, the cache folders with their sizes, the profile search path and how the
suite is installed. It warns when the machine is too busy to measure: a 1-minute load average at
or above the core count means the timing loop shares its cores.

``cache info`` lists the cache folders and their sizes; ``cache clear [--what KIND]`` empties them.
Everything in them is rebuilt on demand: base networks (``base``), latency tables (``tables``),
dp-depth importance tables (``importance``), TensorRT timing caches (``tensorrt``).
"""

from __future__ import annotations

import json
import os
import shutil
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from suite.cache import BASE_WEIGHTS, IMPORTANCE, LATENCY_TABLES, TENSORRT, cache_root
from suite.cli.options import Format, OutputFormat
from suite.cli.output import emit
from suite.console import console, logger, user_errors


class CacheKind(StrEnum):
    base = "base"
    tables = "tables"
    importance = "importance"
    tensorrt = "tensorrt"


def register(app: typer.Typer) -> None:
    """Add ``env`` and ``cache info|clear`` to ``app``."""
    app.command("env")(env_command)
    cache = typer.Typer(help="The suite's caches: info, clear.", no_args_is_help=True)
    cache.command("info")(cache_info_command)
    cache.command("clear")(cache_clear_command)
    app.add_typer(cache, name="cache")


def env_command(output: Format = OutputFormat.table) -> None:
    """Show versions, CPU state, caches, the profile search path and the installation."""
    from suite.measure.harness import capture_environment
    from suite.measure.profiles import load_profile, profile_dirs

    with user_errors():
        captured = capture_environment(load_profile("cpu-onnxruntime"))
    load = os.getloadavg()
    report = {
        "depthbench": metadata.version("depthbench"),
        "code_version": _code_version(),
        "installed": _installation(),
        "python": captured["python"],
        "torch": captured["torch"] or "not installed",
        "onnxruntime": captured["onnxruntime"] or "not installed",
        "tensorrt": captured["tensorrt"] or "not installed",
        "cuda": captured["cuda"] or "none",
        "gpu_driver": captured["gpu_driver"] or "none",
        "gpus": captured["gpu_names"],
        "cpu_model": captured["cpu_model"],
        "cpu_cores": captured["cpu_cores"],
        "cpu_governor": captured["cpu_governor"] or "unknown",
        "smt": _read("/sys/devices/system/cpu/smt/control") or "unknown",
        "load_average": [round(value, 2) for value in load],
        "caches": {kind: _size(paths) for kind, paths in cache_paths().items()},
        "profile_path": [str(path) for path in profile_dirs()],
    }
    busy = busy_warning(load[0], captured["cpu_cores"])
    if busy:
        logger.warning(busy)
    emit(report, output, lambda: _env_table(report))


def busy_warning(load_1min: float, cores: int) -> str | None:
    """A warning when the 1-minute load average is at or above the core count, else None."""
    if load_1min < cores:
        return None
    return (
        f"load average {load_1min:.2f} >= {cores} cores: this machine is too busy to measure "
        "latency; numbers taken now are slower and noisier (wait, or stop other jobs)"
    )


def _env_table(report: dict) -> Table:
    table = Table("", "value", title="depthbench environment")
    for key, value in report.items():
        if key == "caches":
            value = ", ".join(f"{kind} {_human(size)}" for kind, size in value.items())
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "none"
        table.add_row(key, escape(str(value)))
    table.caption = f"caches in {escape(str(cache_root()))}"
    return table


def cache_info_command(output: Format = OutputFormat.table) -> None:
    """List the cache folders, their sizes and where they are."""
    rows = [
        {"cache": kind, "bytes": _size(paths), "paths": [str(p) for p in paths]}
        for kind, paths in cache_paths().items()
    ]

    def table() -> Table:
        shown = Table("cache", "size", "where")
        for row in rows:
            shown.add_row(row["cache"], _human(row["bytes"]), escape(", ".join(row["paths"])))
        return shown

    emit(rows, output, table)


def cache_clear_command(
    what: Annotated[
        list[CacheKind] | None,
        typer.Option(help="Which cache (repeatable) [default: all]. Rebuilt when needed."),
    ] = None,
) -> None:
    """Delete cached base networks, latency tables, importance tables or TensorRT caches."""
    for kind in what or list(CacheKind):
        paths = cache_paths()[kind.value]
        size = _size(paths)
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        console.print(f"cleared {kind.value}: {_human(size)}")


def cache_paths() -> dict[str, list[Path]]:
    """The files and folders of each cache kind (those of the latency-table SQLite included)."""
    root = cache_root()
    tables = root / LATENCY_TABLES
    return {
        "base": [root / BASE_WEIGHTS],
        "tables": [tables, *(tables.with_name(tables.name + end) for end in ("-wal", "-shm"))],
        "importance": [root / IMPORTANCE],
        "tensorrt": [root / TENSORRT],
    }


def _size(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return total


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _code_version() -> str:
    from suite.provenance import code_version

    return code_version()


def _installation() -> str:
    """'editable (PATH)' or 'installed (PATH)', from pip's direct_url.json, and where suite is."""
    import suite

    location = Path(suite.__file__).parent.parent
    try:
        direct_url = metadata.distribution("depthbench").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return f"not installed, run from {location}"
    editable = json.loads(direct_url or "{}").get("dir_info", {}).get("editable", False)
    return f"{'editable' if editable else 'installed'}, suite imported from {location}"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None
