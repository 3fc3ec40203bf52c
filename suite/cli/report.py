"""The ``report`` and ``compare`` commands of the depthbench CLI."""

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from suite.console import console, user_errors
from suite.run.report import compare_runs, display_table, results_table, write_report
from suite.run.store import ResultsStore, read_consolidated

_FRONT_COLUMNS = [
    "model", "method", "budget_value", "seed", "top1", "latency_ms_median", "latency_ms_ci_low",
    "latency_ms_ci_high", "speedup", "accuracy_drop_pp", "global_front",
]  # fmt: skip
_COMPARE_COLUMNS = [
    "method", "budget_value", "seed", "present", "status_a", "status_b", "top1_a", "top1_b",
    "latency_ms_median_a", "latency_ms_median_b", "latency_diff_ms", "flagged",
]  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add the ``report`` and ``compare`` commands to ``app``."""
    app.command("report")(report)
    app.command("compare")(compare)


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, results/<run-id>.")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the report [default: RUN_DIR/report].")
    ] = None,
) -> None:
    """Write Pareto tables (Markdown, CSV, LaTeX, HTML) and plots (PNG, SVG) of a run."""
    with user_errors():
        records = _load_run(run_dir)
        written = write_report(records, out or run_dir / "report")
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
        console.print(f"wrote {len(written)} files to {out or run_dir / 'report'}")


def compare(
    run_a: Annotated[Path, typer.Argument(help="The reference run directory.")],
    run_b: Annotated[Path, typer.Argument(help="The run directory to compare with it.")],
) -> None:
    """Show cell-by-cell differences of two runs, flagging those beyond the measured noise."""
    with user_errors():
        differences = compare_runs(_load_run(run_a), _load_run(run_b))
    shown = display_table(differences[_COMPARE_COLUMNS])
    shown["flagged"] = differences["flagged"].map({True: "yes", False: ""})
    title = f"{run_b} against {run_a}"
    console.print(_rich_table(shown, title, highlight=differences["flagged"].tolist()))
    console.print(
        f"{int(differences['flagged'].sum())} of {len(differences)} cells differ beyond the "
        "measured noise (latency CIs apart), in accuracy, in status, or are in one run only"
    )


def _load_run(run_dir: Path) -> pd.DataFrame:
    """Bring ``records.parquet`` up to date with the cell files when they are there (a run may
    have been interrupted), then read the run from it."""
    if (run_dir / "cells").is_dir():
        ResultsStore(run_dir.parent).consolidate(run_dir.name)
    return read_consolidated(run_dir)


def _rich_table(frame: pd.DataFrame, title: str, highlight: Sequence[bool] | None = None) -> Table:
    table = Table(title=escape(title))
    for position, column in enumerate(frame.columns):
        table.add_column(escape(str(column)), no_wrap=position == 0)  # method names stay whole
    for index, row in enumerate(frame.itertuples(index=False)):
        flagged = highlight is not None and highlight[index]
        cells = [escape(str(value)) for value in row]
        table.add_row(*cells, style="bold yellow" if flagged else None)
    return table
