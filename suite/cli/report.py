"""The ``report`` and ``compare`` commands of the depthbench CLI.

Both only read a run folder: ``records.parquet``, which ``depthbench run`` writes when it ends.
A run stopped before that (or resumed into a folder with new cells) has cell files that
``records.parquet`` lacks; then they read the cell files instead, in memory, and say so: running
``depthbench run`` again consolidates the folder. No lock is taken, so a read-only run folder
reports fine with ``--out`` pointing elsewhere.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from suite.cli.options import Format, OutputFormat
from suite.cli.output import emit
from suite.console import console, err_console, logger, user_errors
from suite.errors import DepthbenchError

if TYPE_CHECKING:
    import pandas as pd

_FRONT_COLUMNS = [
    "model", "method", "budget_value", "seed", "top1", "latency_ms_median", "latency_ms_ci_low",
    "latency_ms_ci_high", "speedup", "accuracy_drop_pp", "global_front",
]  # fmt: skip
_COMPARE_COLUMNS = [
    "method", "budget_value", "seed", "present", "status_a", "status_b", "top1_a", "top1_b",
    "latency_ms_median_a", "latency_ms_median_b", "latency_diff_ms", "latency_ratio",
    "latency_change_pct", "change",
]  # fmt: skip


class XAxis(StrEnum):
    latency = "latency"
    speedup = "speedup"
    macs = "macs"


def register(app: typer.Typer) -> None:
    """Add the ``report`` and ``compare`` commands to ``app``."""
    app.command("report")(report)
    app.command("compare")(compare)
    app.command("export")(export)


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, results/<run-id>.")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the report [default: RUN_DIR/report].")
    ] = None,
    x: Annotated[
        XAxis, typer.Option("--x", help="The accuracy plot's x axis: latency, speed-up or MACs.")
    ] = XAxis.latency,
    log_x: Annotated[bool, typer.Option("--log-x", help="A logarithmic x axis.")] = False,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Report on these methods only, comma-separated (the original network stays as "
            "the reference); fronts are then fronts among them [default: all]."
        ),
    ] = None,
) -> None:
    """Write Pareto tables (CSV, Markdown, LaTeX), plots (PNG, SVG, PDF) and an HTML page per
    profile of a run."""
    from suite.run.report import (
        display_table,
        results_table,
        select_methods,
        table_additivity_table,
        write_report,
    )

    chosen = [name.strip() for name in methods.split(",") if name.strip()] if methods else None
    with user_errors():
        records = select_methods(_load_run(run_dir), chosen)
        written = write_report(records, out or run_dir / "report", x=x.value, log_x=log_x)
        for profile_hash, profile_records in records.groupby("profile_hash"):
            table = results_table(profile_records)
            fronts = table.loc[table["method_front"], _FRONT_COLUMNS]
            # a column with one value goes into the title, so the table fits a terminal
            constant = [c for c in ("model", "seed") if fronts[c].nunique() == 1]
            context = ", ".join(f"{c} {fronts[c].iloc[0]}" for c in constant)
            title = (
                f"Per-method Pareto fronts: {context}, {profile_records['profile_name'].iloc[0]} "
                f"(profile {profile_hash[:12]})"
            )
            console.print(_rich_table(display_table(fronts.drop(columns=constant)), title))
            additivity = table_additivity_table(profile_records)
            if not additivity.empty:
                additivity["relative_error"] = additivity["relative_error"].map("{:+.1%}".format)
                console.print(
                    _rich_table(
                        display_table(additivity),
                        "Latency tables the plans used: their additivity on the base network",
                    )
                )
        console.print(f"wrote {len(written)} files to {out or run_dir / 'report'}")


def compare(
    run_a: Annotated[Path, typer.Argument(help="The reference run directory.")],
    run_b: Annotated[Path, typer.Argument(help="The run directory to compare with it.")],
    factor: Annotated[
        float,
        typer.Option(
            help="A latency change counts only if B/A is at least this ratio (or at most its "
            "inverse) and beyond the measured noise; 1.1 ignores changes under 10%.",
        ),
    ] = 1.0,
    only_changed: Annotated[
        bool, typer.Option("--only-changed", help="Show only the cells that changed.")
    ] = False,
    fail_on_regression: Annotated[
        bool,
        typer.Option(
            "--fail-on-regression",
            help="Exit 1 if a cell got slower or less accurate, failed, or is missing in B.",
        ),
    ] = False,
    output: Format = OutputFormat.table,
) -> None:
    """Show cell-by-cell differences of two runs, flagging those beyond the measured noise."""
    from suite.run.report import compare_runs, display_table

    with user_errors():
        if not (math.isfinite(factor) and factor >= 1):
            raise DepthbenchError(
                f"--factor {factor:g} is not a ratio: give a number >= 1, e.g. 1.1"
            )
        records_a, records_b = _load_run(run_a), _load_run(run_b)
        if not set(records_a["profile_hash"]) & set(records_b["profile_hash"]):
            raise DepthbenchError(
                f"{run_a} was measured under {_profiles(records_a)} and {run_b} under "
                f"{_profiles(records_b)}: latencies of different profiles never compare; compare "
                "two runs of one profile"
            )
        differences = classify_changes(compare_runs(records_a, records_b), factor)
    changed = differences["change"] != ""
    regressions = int(differences["change"].isin(REGRESSIONS).sum())
    if only_changed:
        differences = differences[changed]
    columns = [c for c in differences.columns if c not in ("test_correct_a", "test_correct_b")]
    rows = differences[columns].to_dict(orient="records")

    def table() -> Table:
        shown = display_table(differences[_COMPARE_COLUMNS])
        title = f"{run_b} against {run_a}"
        return _rich_table(shown, title, highlight=(differences["change"] != "").tolist())

    emit(rows, output, table)
    if output is OutputFormat.table:
        console.print(
            f"{int(changed.sum())} of {len(changed)} cells differ beyond the measured noise "
            f"(latency CIs apart, ratio beyond --factor {factor:g}), in accuracy, in status, or are "
            f"in one run only; {regressions} are regressions"
        )
    if fail_on_regression and regressions:
        err_console.print(f"error: {regressions} regressions of {run_b} against {run_a}")
        raise typer.Exit(1)


# the record fields the store keeps as JSON text (suite.run.store.records_frame)
JSON_COLUMNS = ("method_config", "plan", "environment")

# the changes --fail-on-regression fails on
REGRESSIONS = ("slower", "less accurate", "no longer ok", "missing in B")


def classify_changes(differences: pd.DataFrame, factor: float) -> pd.DataFrame:
    """``compare_runs``'s table with the latency ratio B/A, its change in percent, and ``change``:
    what changed beyond the noise and ``factor`` (empty when nothing did)."""
    table = differences.copy()
    table["latency_ratio"] = table["latency_ms_median_b"] / table["latency_ms_median_a"]
    table["latency_change_pct"] = 100 * (table["latency_ratio"] - 1)
    table["change"] = [_change(row, factor) for row in table.itertuples()]
    return table.drop(columns=["flagged"])


def _change(row: object, factor: float) -> str:
    if row.present != "both":
        return "missing in B" if row.present == "A only" else "new in B"
    if row.status_a != row.status_b:
        return "no longer ok" if row.status_a == "ok" else "now ok"
    # top-1 decides the direction; top-5 where top-1 did not move
    accuracy_diff = row.top1_diff_pp or (row.top5_b - row.top5_a)
    if row.accuracy_changed and accuracy_diff < 0:
        return "less accurate"
    if row.latency_changed and row.latency_ratio >= factor and row.latency_ratio > 1:
        return "slower"
    if row.accuracy_changed:
        return "more accurate"
    if row.latency_changed and row.latency_ratio <= 1 / factor and row.latency_ratio < 1:
        return "faster"
    return ""


def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, results/<run-id>.")],
    out: Annotated[
        Path | None, typer.Option(help="CSV file to write (a new file) [default: stdout].")
    ] = None,
) -> None:
    """Write every column of a run's records as CSV, the JSON columns flattened (plan.S, ...)."""
    import pandas as pd

    with user_errors():
        if out is not None and out.exists():
            raise DepthbenchError(f"--out {out} exists; remove it or choose another path")
        if out is not None and not out.parent.is_dir():
            raise DepthbenchError(
                f"--out {out}: the folder {out.parent} does not exist; create it or write elsewhere"
            )
        records = _load_run(run_dir).reset_index(drop=True)
        parts = [records.drop(columns=[c for c in JSON_COLUMNS if c in records])]
        for column in JSON_COLUMNS:
            if column in records:
                nested = [_as_mapping(value) for value in records[column]]
                parts.append(pd.json_normalize(nested).add_prefix(f"{column}."))
        flat = pd.concat(parts, axis=1)
    if out is None:
        flat.to_csv(sys.stdout, index=False)
    else:
        flat.to_csv(out, index=False)
        err_console.print(f"wrote {len(flat)} records, {flat.shape[1]} columns to {out}")


def _as_mapping(value: object) -> dict:
    """A JSON column's cell as a dict (the store keeps them as JSON text; empty for none)."""
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else {}


def _load_run(run_dir: Path) -> pd.DataFrame:
    """The run's records, read without writing anything (see the module docstring)."""
    from suite.run.store import ResultsStore, read_consolidated

    cells = run_dir / "cells"
    stored = {path.stem for path in cells.glob("*.json")} if cells.is_dir() else set()
    if (run_dir / "records.parquet").is_file():
        records = read_consolidated(run_dir)
        if stored <= set(records["cell_hash"]):
            return records
        logger.warning(
            "%s lacks %d of the run's cell files: reading the cells instead; run `depthbench run` "
            "again to consolidate the run", run_dir / "records.parquet",
            len(stored - set(records["cell_hash"])),
        )  # fmt: skip
    elif stored:
        logger.warning(
            "%s has no records.parquet (the run did not finish): reading its %d cell files; run "
            "`depthbench run` again to consolidate the run", run_dir, len(stored),
        )  # fmt: skip
    else:
        return read_consolidated(run_dir)  # its error says what is missing
    return ResultsStore(run_dir.parent).records(run_dir.name)


def _profiles(records: pd.DataFrame) -> str:
    pairs = sorted(set(zip(records["profile_name"], records["profile_hash"], strict=True)))
    return " and ".join(f"{name!r} (hash {profile_hash[:12]})" for name, profile_hash in pairs)


def _rich_table(frame: pd.DataFrame, title: str, highlight: Sequence[bool] | None = None) -> Table:
    table = Table(title=escape(title))
    for position, column in enumerate(frame.columns):
        table.add_column(escape(str(column)), no_wrap=position == 0)  # method names stay whole
    for index, row in enumerate(frame.itertuples(index=False)):
        flagged = highlight is not None and highlight[index]
        cells = [escape(str(value)) for value in row]
        table.add_row(*cells, style="bold yellow" if flagged else None)
    return table
