"""The ``depthbench`` command line: one typer app; each step of the flow adds its commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from suite.cli import env as cli_env
from suite.cli import measure as cli_harness
from suite.cli import methods as cli_methods
from suite.cli import report as cli_report
from suite.cli import run as cli_run
from suite.cli import session as cli_session
from suite.cli.options import (
    DEFAULT_RESOLUTION,
    Checkpoint,
    Format,
    ModelArgument,
    NumClasses,
    OutputFormat,
    Resolution,
    Width,
    check_plan_network,
    check_resolution,
    plan_network,
)
from suite.cli.output import emit
from suite.console import configure_logging, console, user_errors
from suite.errors import DepthbenchError

# Commands import torch and the rest of the suite when they run, so that `--help` and the light
# commands start at once.

app = typer.Typer(
    name="depthbench",
    help="Benchmark CNN depth-compression methods fairly: one chain, exact merging, one latency harness.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _print_version(requested: bool) -> None:
    """``--version``: the package version and the code version every record carries."""
    if not requested:
        return
    from importlib import metadata

    from suite.provenance import code_version

    console.print(f"depthbench {metadata.version('depthbench')}", highlight=False)
    console.print(f"code version {code_version()}", highlight=False)
    raise typer.Exit()


@app.callback()
def main_options(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Show only warnings and errors.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show debug detail too.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Show the package version and the code version (git commit) records carry.",
        ),
    ] = False,
) -> None:
    # Progress and warnings go to stderr: bars on a terminal, one line per step otherwise.
    with user_errors():
        if quiet and verbose:
            raise DepthbenchError("give --quiet or --verbose, not both")
    configure_logging("quiet" if quiet else "verbose" if verbose else "normal")


@app.command()
def inspect(
    model: ModelArgument,
    width: Width = 1.0,
    resolution: Resolution = None,
    num_classes: NumClasses = 1000,
) -> None:
    """Show a model's chain: positions, convs, activations, residuals and valid segments."""
    from suite.core.chain import MERGE_RULES
    from suite.core.trace import trace_model

    with user_errors():
        resolution = check_resolution(resolution) or DEFAULT_RESOLUTION
        chain = trace_model(
            model, width=width, num_classes=num_classes, resolution=resolution
        ).chain
    table = Table(title=f"{chain.name} at {resolution}x{resolution}: L = {chain.L}")
    for column in (
        "pos",
        "conv (in->out, k, s, p, groups)",
        "act",
        "output (C, H, W)",
        "residual",
        "pool",
    ):
        table.add_column(column)
    pools = {pool.position: pool for pool in chain.pools}
    for unit in chain.units:
        c, p = unit.conv, unit.position
        residual = chain.residual_into(p)
        skip = ""
        if residual is not None:
            skip = f"{residual.source}->{p}" + (" (1x1 projection)" if residual.projection else "")
        pool = pools.get(p)
        table.add_row(
            str(p),
            f"{c.in_channels}->{c.out_channels}, {c.kernel}, {c.stride}, {c.padding}, {c.groups}",
            unit.act or "-",
            str(chain.shapes[p]),
            skip,
            f"{pool.kind} {pool.kernel}/{pool.stride}" if pool else "",
        )
    console.print(table)
    console.print(f"stride boundaries (upstream rule): {sorted(chain.stride_boundaries)}")
    for rule in MERGE_RULES:
        console.print(f"valid segments under the {rule} rule: {len(chain.segments(rule))}")


@app.command()
def merge(
    model: ModelArgument,
    plan: Annotated[Path, typer.Option(help="Plan JSON (activations, boundaries, ...).")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")],
    width: Width = 1.0,
    resolution: Resolution = None,
    num_classes: NumClasses = 1000,
    checkpoint: Checkpoint = None,
) -> None:
    """Build a plan's deploy network (BN folded, groups merged) and export it to ONNX, checked."""
    from suite.cli.methods import load_weights
    from suite.core.export import export_onnx
    from suite.core.plan import Plan
    from suite.core.realize import deploy_network, trainable_network
    from suite.core.trace import trace_model

    with user_errors():
        resolution = check_resolution(resolution) or DEFAULT_RESOLUTION
        if not out.parent.is_dir():
            raise DepthbenchError(
                f"--out {out}: the folder {out.parent} does not exist; create it or write elsewhere"
            )
        the_plan = Plan.load(plan)
        check_plan_network(the_plan.meta, plan, plan_network(model, width, resolution, num_classes))
        traced = trace_model(model, width=width, num_classes=num_classes, resolution=resolution)
        if checkpoint is not None:
            load_weights(traced, checkpoint)
        deploy = deploy_network(trainable_network(traced, the_plan))
        export_onnx(deploy, (1, 3, resolution, resolution), out)
    groups = the_plan.groups(traced.chain)
    console.print(
        f"wrote {escape(str(out))}: {len(groups)} merged convs, {len(the_plan.activations)} activations",
        soft_wrap=True,  # the path stays on one line, ready to copy
    )


@app.command("list-methods")
def list_methods_command(output: Format = OutputFormat.table) -> None:
    """List the registered compression methods."""
    from suite.core.registry import list_methods

    with user_errors():
        rows = [
            {"name": spec.name, "aliases": list(spec.aliases), "paper": spec.paper}
            for spec in list_methods()
        ]

    def table() -> Table:
        shown = Table("name", "aliases", "paper", title="registered methods")
        for row in rows:
            shown.add_row(row["name"], ", ".join(row["aliases"]), escape(row["paper"]))
        return shown

    emit(rows, output, table)


for module in (cli_harness, cli_methods, cli_run, cli_report, cli_session, cli_env):
    module.register(app)


def main() -> None:
    app()
