"""The ``depthbench run`` command: run an experiment's grid and say where the results are."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from suite.console import console, user_errors
from suite.errors import DepthbenchError

if TYPE_CHECKING:
    from suite.run.config import Experiment
    from suite.run.executors import Executor


class ExecutorName(str, Enum):
    inprocess = "inprocess"
    ray = "ray"


def register(app: typer.Typer) -> None:
    """Add ``run`` to ``app``."""
    app.command("run")(run_command)


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
) -> None:
    """Run every cell of an experiment that is not stored yet, then consolidate the run."""
    from suite.run.config import DEFAULT_CONFIG, load_experiment
    from suite.run.grid import run_experiment

    with user_errors():
        experiment = load_experiment(config or DEFAULT_CONFIG)
        with _executor(executor, address, experiment) as chosen:
            summary = run_experiment(experiment, results, chosen, run_id)
    counts = ", ".join(f"{count} {status}" for status, count in sorted(summary.by_status.items()))
    # soft_wrap: paths and the command stay on one line, ready to copy
    console.print(
        f"run {escape(summary.run_id)}: {summary.cells} cells ({counts}); "
        f"{summary.reused} were already stored",
        soft_wrap=True,
    )
    console.print(f"results: {escape(str(summary.records))} (+ manifest.json)", soft_wrap=True)
    console.print(f"report:  depthbench report {escape(str(summary.run_dir))}", soft_wrap=True)


def _executor(name: ExecutorName, address: str | None, experiment: Experiment) -> Executor:
    from suite.measure.profiles import load_profile
    from suite.run.executors import InProcessExecutor, RayExecutor
    from suite.run.grid import measurement_resources

    if name is ExecutorName.inprocess:
        if address is not None:
            raise DepthbenchError("--address is the address of a Ray cluster: add --executor ray")
        return InProcessExecutor()
    node_resources = {}
    for profile in experiment.profiles:
        node_resources |= measurement_resources(load_profile(profile))
    return RayExecutor(address, node_resources)
