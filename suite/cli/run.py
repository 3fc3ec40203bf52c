"""The ``depthbench run`` and ``depthbench runs list`` commands.

``run`` runs an experiment's grid and says where the results are, with a summary of the cells:
ok, infeasible, failed, unstable (the stability gate never passed) and budget missed (an ok cell
whose measured latency is above its budget: ``ms`` budgets directly, ``fraction`` budgets against
the original network's latency under the same profile and seed), and why cells did not finish.

Selection keeps the run: ``--only-methods``/``--only-budgets`` run part of the grid into the run
the whole experiment names (its run id is computed from every cell), so a later full run reuses
them. ``--retry-failed`` moves the run's failed cell files into ``cells/failed/`` (never deleting
one) and runs those cells again. ``--dry-run`` lists the cells, which are stored, and a rough cost,
and runs nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from suite.cli.options import Format, OutputFormat
from suite.cli.output import emit
from suite.console import console, user_errors
from suite.errors import DepthbenchError

if TYPE_CHECKING:
    import pandas as pd

    from suite.run.config import Experiment
    from suite.run.executors import Executor
    from suite.run.grid import Cell


class ExecutorName(StrEnum):
    inprocess = "inprocess"
    ray = "ray"


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``runs list`` to ``app``."""
    app.command("run")(run_command)
    runs = typer.Typer(help="Runs in a results folder: list.", no_args_is_help=True)
    runs.command("list")(runs_list_command)
    app.add_typer(runs, name="runs")


def run_command(
    config: Annotated[
        Path | None,
        typer.Argument(help="Experiment YAML (default: the embedded configs/default.yaml)."),
    ] = None,
    executor: Annotated[
        ExecutorName, typer.Option(help="Where cells run: here, or on a Ray cluster.")
    ] = ExecutorName.inprocess,
    address: Annotated[
        str | None,
        typer.Option(help="Address of an existing Ray cluster (default: start a local one)."),
    ] = None,
    results: Annotated[Path, typer.Option(help="Results root directory.")] = Path("results"),
    run_id: Annotated[
        str | None,
        typer.Option(help="Run id (default: the experiment's name and a hash of its cells)."),
    ] = None,
    only_methods: Annotated[
        str | None,
        typer.Option(help="Run only these methods (comma-separated names).", show_default=False),
    ] = None,
    only_budgets: Annotated[
        str | None,
        typer.Option(help="Run only these budget values (comma-separated).", show_default=False),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(help="Move failed cell files to cells/failed/ and run those cells again."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option(help="List the cells, which are stored and a rough cost; run nothing.")
    ] = False,
) -> None:
    """Run every cell of an experiment that is not stored yet, then consolidate the run."""
    from suite.run.config import DEFAULT_CONFIG, load_experiment
    from suite.run.grid import default_run_id, grid, run_experiment

    with user_errors():
        full = load_experiment(config or DEFAULT_CONFIG)
        run_id = run_id or default_run_id(full, grid(full))  # selections fill the same run
        experiment = _selected(full, only_methods, only_budgets)
        if dry_run:
            _dry_run(experiment, results, run_id)
            return
        if retry_failed:
            moved = move_failed_cells(results / run_id)
            console.print(f"moved {moved} failed cell files to {results / run_id / 'cells/failed'}")
        with _executor(executor, address, experiment) as chosen:
            summary = run_experiment(experiment, results, chosen, run_id)
        from suite.run.store import read_consolidated

        records = read_consolidated(summary.run_dir)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(summary.by_status.items()))
    # soft_wrap: paths and the command stay on one line, ready to copy
    console.print(
        f"run {escape(summary.run_id)}: {summary.cells} cells ({counts}); "
        f"{summary.reused} were already stored",
        soft_wrap=True,
    )
    for line in run_summary(records):
        console.print(escape(line), soft_wrap=True)
    console.print(f"results: {escape(str(summary.records))} (+ manifest.json)", soft_wrap=True)
    console.print(f"report:  depthbench report {escape(str(summary.run_dir))}", soft_wrap=True)


def _selected(experiment: Experiment, methods: str | None, budgets: str | None) -> Experiment:
    """``experiment`` with only the named methods and budget values."""
    update = {}
    if methods is not None:
        wanted = {name.strip() for name in methods.split(",") if name.strip()}
        kept = [entry for entry in experiment.methods if entry.name in wanted]
        unknown = wanted - {entry.name for entry in experiment.methods}
        if unknown or not kept:
            raise DepthbenchError(
                f"--only-methods: {', '.join(sorted(unknown)) or methods!r} not in the experiment;"
                f" it has {', '.join(entry.name for entry in experiment.methods)}"
            )
        update["methods"] = kept
    if budgets is not None:
        try:
            wanted_values = {float(value) for value in budgets.split(",") if value.strip()}
        except ValueError:
            raise DepthbenchError(
                f"--only-budgets {budgets!r}: give budget values separated by commas, e.g. 0.5,0.7"
            ) from None
        kept_budgets = [budget for budget in experiment.budgets if budget.value in wanted_values]
        missing = wanted_values - {budget.value for budget in kept_budgets}
        if missing or not kept_budgets:
            raise DepthbenchError(
                f"--only-budgets: {', '.join(f'{v:g}' for v in sorted(missing))} not in the "
                f"experiment; it has {', '.join(f'{b.value:g}' for b in experiment.budgets)}"
            )
        update["budgets"] = kept_budgets
    return experiment.model_copy(update=update)


def _dry_run(experiment: Experiment, results: Path, run_id: str) -> None:
    from suite.run.grid import grid

    cells = grid(experiment)
    cells_dir = results / run_id / "cells"
    stored = [(cells_dir / f"{cell.cell_hash}.json").exists() for cell in cells]
    table = Table("cell", "hash", "stored", title=f"run {escape(run_id)} (dry run)")
    for cell, is_stored in zip(cells, stored, strict=True):
        table.add_row(escape(cell.label), cell.cell_hash, "yes" if is_stored else "")
    console.print(table)
    todo = [cell for cell, is_stored in zip(cells, stored, strict=True) if not is_stored]
    console.print(
        f"{len(cells)} cells, {len(cells) - len(todo)} stored, {len(todo)} to run", soft_wrap=True
    )
    for line in rough_cost(experiment, todo):
        console.print(escape(line), soft_wrap=True)


def rough_cost(experiment: Experiment, todo: list[Cell]) -> list[str]:
    """What the cells to run will do, in units a user can weigh (not a time estimate: training
    and planning speeds vary by orders of magnitude between machines and methods)."""
    if not todo:
        return ["nothing to run"]
    recipe = experiment.finetune
    length = f"{recipe.steps} steps" if recipe.steps else f"{recipe.epochs:g} epochs"
    lines = [f"each cell to run: plans, fine-tunes for {length}, merges and measures"]
    for profile_name, count in Counter(cell.profile.name for cell in todo).items():
        protocol = next(cell.profile for cell in todo if cell.profile.name == profile_name).protocol
        if protocol is None:
            lines.append(f"{count} cells under {profile_name}: replayed tables, no measurement")
            continue
        seconds = protocol.repeats * (protocol.warmup_s + protocol.min_seconds)
        lines.append(
            f"{count} cells under {profile_name}: at least {seconds:g} s of end-to-end timing "
            f"each (up to {seconds * (1 + protocol.max_remeasure):g} s with re-measurement), "
            "plus the methods' latency tables and candidate screening"
        )
    return lines


def move_failed_cells(run_dir: Path) -> int:
    """Move the run's failed cell files into ``cells/failed/``; a name taken there gets a
    numbered suffix, so nothing is ever replaced. Returns how many were moved."""
    cells = run_dir / "cells"
    if not cells.is_dir():
        raise DepthbenchError(f"--retry-failed: {run_dir} has no cells folder; nothing to retry")
    failed = [p for p in sorted(cells.glob("*.json")) if _status(p) == "failed"]
    if failed:
        (cells / "failed").mkdir(exist_ok=True)
    for path in failed:
        target, attempt = cells / "failed" / path.name, 1
        while target.exists():
            target, attempt = cells / "failed" / f"{path.stem}.{attempt}.json", attempt + 1
        path.rename(target)
    return len(failed)


def _status(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None  # a corrupt file is the store's to report, not ours to move


def run_summary(records: pd.DataFrame) -> list[str]:
    """Lines on what the run's cells came to, and why the unfinished ones did not finish."""
    status = records["status"]
    ok = records[status == "ok"]
    unstable = int((ok["stable"] == False).sum())  # noqa: E712 (nullable booleans)
    missed = budget_missed(records)
    lines = [
        f"cells: {int((status == 'ok').sum())} ok, {int((status == 'infeasible').sum())} "
        f"infeasible, {int((status == 'failed').sum())} failed, {unstable} unstable, "
        f"{len(missed)} budget missed"
    ]
    for kind in ("failed", "infeasible"):
        reasons = Counter(records.loc[status == kind, "reason"].fillna("no reason recorded"))
        for reason, count in reasons.most_common():
            lines.append(f"  {kind} ({count}): {reason}")
    for _, row in missed.iterrows():
        lines.append(
            f"  budget missed: {row['method']} @ {row['budget_kind']} {row['budget_value']:g}: "
            f"{row['latency_ms_median']:.4g} ms > target {row['target_ms']:.4g} ms"
        )
    return lines


def budget_missed(records: pd.DataFrame) -> pd.DataFrame:
    """The ok cells whose median latency is above their budget's target in ms: the target the
    cell planned for (``target_ms``: its budget against the run's one base measurement) where the
    record has one, else its budget times the original's latency at the same seed (records from
    before runs stored a base measurement). The original has no budget to miss."""
    import pandas as pd

    ok = records[(records["status"] == "ok") & (records["method"] != "original")].copy()
    original = (
        records[(records["status"] == "ok") & (records["method"] == "original")]
        .groupby(["profile_hash", "seed"])["latency_ms_median"]
        .first()
    )
    targets = []
    for row in ok.itertuples():
        if pd.notna(getattr(row, "target_ms", None)):
            targets.append(row.target_ms)
        elif row.budget_kind == "ms":
            targets.append(row.budget_value)
        elif row.budget_kind == "fraction" and (row.profile_hash, row.seed) in original.index:
            targets.append(row.budget_value * original[(row.profile_hash, row.seed)])
        else:  # table units, or no original to scale: no target in ms
            targets.append(float("nan"))
    ok["target_ms"] = targets
    return ok[ok["latency_ms_median"] > ok["target_ms"]]


def runs_list_command(
    results: Annotated[Path, typer.Argument(help="Results root directory.")] = Path("results"),
    output: Format = OutputFormat.table,
) -> None:
    """List the runs under a results folder: cells by status, consolidated or not."""
    with user_errors():
        if not results.is_dir():
            raise DepthbenchError(f"{results} is not a folder; give the results root (--results)")
        rows = [
            _run_row(folder) for folder in sorted(results.iterdir()) if (folder / "cells").is_dir()
        ]

    def table() -> Table:
        shown = Table("run", "cells", "by status", "consolidated", "failed moved aside")
        for row in rows:
            statuses = ", ".join(f"{n} {s}" for s, n in sorted(row["cells_by_status"].items()))
            shown.add_row(
                escape(row["run_id"]),
                str(row["cells"]),
                statuses,
                "yes" if row["consolidated"] else "no",
                str(row["failed_moved_aside"]),
            )
        return shown

    emit(rows, output, table)


def _run_row(folder: Path) -> dict:
    statuses = Counter(_status(path) or "unreadable" for path in (folder / "cells").glob("*.json"))
    return {
        "run_id": folder.name,
        "cells": sum(statuses.values()),
        "cells_by_status": dict(statuses),
        "consolidated": (folder / "records.parquet").is_file(),
        "failed_moved_aside": len(list((folder / "cells" / "failed").glob("*.json"))),
    }


def _executor(name: ExecutorName, address: str | None, experiment: Experiment) -> Executor:
    from suite.measure.profiles import load_profile, measurement_resources
    from suite.run.executors import InProcessExecutor, RayExecutor

    if name is ExecutorName.inprocess:
        if address is not None:
            raise DepthbenchError("--address is the address of a Ray cluster: add --executor ray")
        return InProcessExecutor()
    node_resources = {}
    for profile in experiment.profiles:
        node_resources |= measurement_resources(load_profile(profile))
    return RayExecutor(address, node_resources)
