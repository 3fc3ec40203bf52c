"""The ``report`` and ``compare`` commands of the depthbench CLI.

Both only read a run folder: ``records.parquet``, which ``depthbench run`` writes when it ends.
A run stopped before that (or resumed into a folder with new cells) has cell files that
``records.parquet`` lacks; then they read the cell files instead, in memory, and say so: running
``depthbench run`` again consolidates the folder. No lock is taken, so a read-only run folder
reports fine with ``--out`` pointing elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from suite.console import console, logger, user_errors
from suite.errors import DepthbenchError

if TYPE_CHECKING:
    import pandas as pd

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
    from suite.run.report import (
        display_table,
        results_table,
        table_additivity_table,
        write_report,
    )

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
) -> None:
    """Show cell-by-cell differences of two runs, flagging those beyond the measured noise."""
    from suite.run.report import compare_runs, display_table

    with user_errors():
        records_a, records_b = _load_run(run_a), _load_run(run_b)
        if not set(records_a["profile_hash"]) & set(records_b["profile_hash"]):
            raise DepthbenchError(
                f"{run_a} was measured under {_profiles(records_a)} and {run_b} under "
                f"{_profiles(records_b)}: latencies of different profiles never compare; compare "
                "two runs of one profile"
            )
        differences = compare_runs(records_a, records_b)
    shown = display_table(differences[_COMPARE_COLUMNS])
    shown["flagged"] = differences["flagged"].map({True: "yes", False: ""})
    title = f"{run_b} against {run_a}"
    console.print(_rich_table(shown, title, highlight=differences["flagged"].tolist()))
    console.print(
        f"{int(differences['flagged'].sum())} of {len(differences)} cells differ beyond the "
        "measured noise (latency CIs apart), in accuracy, in status, or are in one run only"
    )


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
