"""The ``depthbench measure-run`` command: measure a run's final latencies in interleaved sessions.

One session per profile over every ok cell's saved deploy network, the original included
(``suite.run.session``), replacing the profile's stored session; then the run is consolidated, so
reports show the session latencies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from suite.console import console, step_progress, user_errors
from suite.errors import DepthbenchError


def register(app: typer.Typer) -> None:
    """Add ``measure-run`` to ``app``."""
    app.command("measure-run")(measure_run_command)


def measure_run_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, results/<run-id>.")],
    rounds: Annotated[
        int | None,
        typer.Option(min=1, help="Rounds (default: the profile protocol's repeats)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random order of each round.")] = 0,
) -> None:
    """Measure every ok cell of a run again, interleaved, one session per profile; consolidate."""
    from suite.provenance import code_version
    from suite.run.session import measure_run_sessions, read_session
    from suite.run.store import ResultsStore

    with user_errors():
        store = ResultsStore(run_dir.parent)
        records = store.records(run_dir.name)
        with step_progress() as steps:
            written = measure_run_sessions(
                run_dir, records, code_version(), rounds=rounds, seed=seed, progress=steps
            )
        if not written:
            raise DepthbenchError(
                f"run {run_dir} has no ok cell with a saved deploy network ({run_dir}/deploy/): "
                "nothing to measure. Cells stored before deploy networks were saved keep their "
                "cell-time latency"
            )
        store.consolidate(run_dir.name)
    for path in written:
        session = read_session(path)
        console.print(
            f"{escape(session.profile_name)}: {len(session.networks)} networks x "
            f"{session.rounds} rounds, seed {session.seed} -> {escape(str(path))}",
            soft_wrap=True,
        )
    console.print(f"report: depthbench report {escape(str(run_dir))}", soft_wrap=True)
