"""The method commands of the ``depthbench`` CLI: ``plan`` and ``compress``.

Both build the context a run gives a method (``suite.core.method.PlanContext``):

- the base network: ``--checkpoint`` (a state dict), or trained from scratch once on the data with
  ``BASE_RECIPE`` and cached (the same cache as ``depthbench run``);
- the data set ``--data`` at ``--resolution`` (default: the data set's own, 32 for digits);
- the chain, traced at the profile's resolution when the profile fixes one, else the data's.

``plan`` runs a method's planning step only and prints the plan. Under a replay profile (e.g.
``rtx2080ti-replay-mbv2-1.0``) the latency side is the replayed upstream table at the profile's
resolution, while whatever the method learns from data, such as dp-depth's importance table, is
computed on ``--data`` at its own resolution, at ``--fidelity``: no upstream importance table is
public, so the plan is upstream's algorithm on upstream latencies with this suite's importance.
``compress`` runs one whole cell (``suite.run.cell.run_cell``): it measures and evaluates the
network, so the data must be at the resolution the profile measures.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from suite.cache import BASE_WEIGHTS, cache_root
from suite.console import console, progress_bar, user_errors
from suite.core.budget import Budget
from suite.core.method import PlanContext
from suite.core.method import Progress as StepProgress
from suite.core.plan import Plan
from suite.core.registry import get_method
from suite.core.trace import TracedModel, trace_model
from suite.errors import DepthbenchError
from suite.measure.profiles import load_profile
from suite.run.cell import plan_context, run_cell
from suite.run.data import load_data
from suite.run.train import FinetuneRecipe, load_checkpoint, train_base

# configs/default.yaml's base recipe: the same model and data reuse the default run's base network
BASE_RECIPE = FinetuneRecipe(epochs=12, lr=0.1, batch_size=64, weight_decay=1e-4)
PLAN_RECIPE = FinetuneRecipe(epochs=1)  # the shared recipe, for methods that train while planning


class BudgetKind(str, Enum):
    fraction = "fraction"
    ms = "ms"
    table = "table"


class Fidelity(str, Enum):
    smoke = "smoke"
    full = "full"


MethodArgument = Annotated[str, typer.Argument(help="A registered method (list-methods).")]
ModelArgument = Annotated[str, typer.Argument(help="mobilenet_v2, resnet18, resnet34, vgg*_bn.")]
ProfileOption = Annotated[str, typer.Option("--profile", "-p", help="Profile name or YAML file.")]
BudgetOption = Annotated[float, typer.Option(help="The latency budget, in --budget-kind units.")]
BudgetKindOption = Annotated[
    BudgetKind,
    typer.Option(help="fraction of the base latency, ms, or table units (dp-depth's T0)."),
]
WidthOption = Annotated[float, typer.Option(help="MobileNetV2 width multiplier.")]
ResolutionOption = Annotated[
    int | None, typer.Option(help="Data resolution (default: the data set's own).")
]
DataOption = Annotated[str, typer.Option(help="digits, cifar10, cifar100, imagenet, imagefolder.")]
DataRootOption = Annotated[Path | None, typer.Option(help="Local data directory (not digits).")]
CheckpointOption = Annotated[
    Path | None,
    typer.Option(help="Base weights (a state dict); default: train once on the data, cached."),
]
FidelityOption = Annotated[
    Fidelity, typer.Option(help="full, or smoke: the methods' cheap settings (no fine-tuning).")
]
SeedOption = Annotated[int, typer.Option(help="Seed of the data split and the recipe.")]


@dataclass(frozen=True)
class CellSetup:
    """What ``plan`` and ``compress`` share: the network, profile, data and base weights."""

    model: str
    profile: str
    width: float
    resolution: int | None
    data: str
    data_root: Path | None
    checkpoint: Path | None
    fidelity: Fidelity
    seed: int


def register(app: typer.Typer) -> None:
    """Add ``plan`` and ``compress`` to ``app``."""
    app.command("plan")(plan_command)
    app.command("compress")(compress_command)


def plan_command(
    method: MethodArgument,
    model: ModelArgument,
    profile: ProfileOption,
    budget: BudgetOption,
    budget_kind: BudgetKindOption = BudgetKind.fraction,
    width: WidthOption = 1.0,
    resolution: ResolutionOption = None,
    data: DataOption = "digits",
    data_root: DataRootOption = None,
    checkpoint: CheckpointOption = None,
    fidelity: FidelityOption = Fidelity.full,
    seed: SeedOption = 0,
    out: Annotated[Path | None, typer.Option(help="Write the plan as JSON here.")] = None,
) -> None:
    """Plan one method at one budget and print the plan: A, S, objective, predicted latency."""
    setup = CellSetup(
        model, profile, width, resolution, data, data_root, checkpoint, fidelity, seed
    )
    with user_errors():
        spec = get_method(method)
        with progress_bar() as bar:
            ctx = setup_context(setup, PLAN_RECIPE.model_copy(update={"seed": seed}), bar)
            unsupported = spec.supports(ctx.chain)
            if unsupported:
                raise DepthbenchError(
                    f"{spec.name} does not apply to {ctx.chain.name}: {unsupported}"
                )
            result = spec.plan(
                ctx, Budget(kind=budget_kind.value, value=budget), spec.make_config()
            )
        plan = result.plan
        plan.validate(ctx.chain)
        if out is not None:
            plan.save(out)
    console.print(_plan_table(plan, ctx))
    if out is not None:
        console.print(f"wrote {escape(str(out))}")


def compress_command(
    method: MethodArgument,
    model: ModelArgument,
    profile: ProfileOption,
    budget: BudgetOption,
    budget_kind: BudgetKindOption = BudgetKind.fraction,
    width: WidthOption = 1.0,
    resolution: ResolutionOption = None,
    data: DataOption = "digits",
    data_root: DataRootOption = None,
    checkpoint: CheckpointOption = None,
    fidelity: FidelityOption = Fidelity.full,
    seed: SeedOption = 0,
    epochs: Annotated[
        float | None, typer.Option(help="Fine-tuning epochs (default 1; or give --steps).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Fine-tuning optimiser steps.")] = None,
) -> None:
    """Plan, fine-tune, merge, measure and evaluate one cell; print its result."""
    setup = CellSetup(
        model, profile, width, resolution, data, data_root, checkpoint, fidelity, seed
    )
    with user_errors():
        if epochs is not None and steps is not None:
            raise DepthbenchError("give the fine-tuning length as --epochs or --steps, not both")
        recipe = FinetuneRecipe(epochs=None if steps else epochs or 1, steps=steps, seed=seed)
        with progress_bar() as bar:
            ctx = setup_context(setup, recipe, bar)
            if ctx.data.resolution != ctx.chain.resolution:
                raise DepthbenchError(
                    f"profile {ctx.profile.name!r} measures at {ctx.chain.resolution} pixels but "
                    f"the data is at {ctx.data.resolution}: pass --resolution "
                    f"{ctx.chain.resolution}, or use a profile with resolution: null"
                )
            outcome = run_cell(ctx, method, None, Budget(kind=budget_kind.value, value=budget))
        if outcome.status != "ok":
            raise DepthbenchError(f"{method} is infeasible at this budget: {outcome.reason}")
    console.print(_plan_table(outcome.plan, ctx))
    console.print(_cell_table(outcome.fields, f"{method} on {ctx.chain.name} ({ctx.data.name})"))


def setup_context(setup: CellSetup, recipe: FinetuneRecipe, bar: Progress) -> PlanContext:
    """The context of one cell, with every step's progress on ``bar``."""
    report = _reporter(bar)
    profile = load_profile(setup.profile)
    data = load_data(setup.data, setup.data_root, setup.resolution, setup.seed)
    size = profile.resolution or data.resolution
    traced = trace_model(setup.model, setup.width, data.num_classes, size)
    checkpoint = setup.checkpoint or train_base(
        setup.model,
        data,
        BASE_RECIPE,
        cache_root() / BASE_WEIGHTS,
        width=setup.width,
        progress=lambda done, total: report("train the base network", done, total),
    )
    _load_weights(traced, checkpoint)
    return plan_context(
        traced,
        profile,
        data,
        recipe,
        fidelity=setup.fidelity.value,
        seed=setup.seed,
        cache_dir=None if profile.is_replay else cache_root(),
        progress=report,
    )


def _load_weights(traced: TracedModel, checkpoint: Path) -> None:
    try:
        traced.model.load_state_dict(load_checkpoint(checkpoint))
    except RuntimeError as error:
        raise DepthbenchError(
            f"checkpoint {checkpoint} does not fit {traced.chain.name}: "
            f"{str(error).splitlines()[0]} ...; pass the weights of that network (--width and "
            "the data set's classes must match)"
        ) from error


def _reporter(bar: Progress) -> StepProgress:
    """A ``(what, done, total)`` callback that keeps one bar per step on ``bar``."""
    tasks: dict[str, TaskID] = {}

    def report(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(escape(what), total=total)
        bar.update(tasks[what], completed=done, total=total)

    return report


def _plan_table(plan: Plan, ctx: PlanContext) -> Table:
    meta = plan.meta
    table = Table("", "value", title=f"{escape(plan.method)} plan for {escape(ctx.chain.name)}")
    table.add_row("A (activations)", _positions(plan.activations))
    table.add_row("S (merge boundaries)", _positions(plan.boundaries))
    if plan.deleted:
        table.add_row("D (deleted units)", _positions(plan.deleted))
    for replacement in plan.replaced:
        table.add_row("R (replaced)", f"({replacement.start}, {replacement.end}]")
    rows = [
        ("objective (Σ normalised importance)", "objective", "{:.4g}"),
        ("predicted latency (table sum, ms)", "table_latency", "{:.4g}"),
        ("T0 (table units)", "T0", "{:g}"),
        ("measured latency (ms)", "measured_ms", "{:.4g}"),
        ("target (ms)", "target_ms", "{:.4g}"),
        ("importance fidelity", "importance_fidelity", "{}"),
    ]
    for label, key, number_format in rows:
        if key in meta:
            table.add_row(label, number_format.format(meta[key]))
    table.add_row("profile", escape(ctx.profile.name))
    return table


def _cell_table(fields: dict, title: str) -> Table:
    table = Table("", "value", title=escape(title))
    rows = [
        ("latency median (ms)", "latency_ms_median", "{:.4g}"),
        ("top-1 (%)", "top1", "{:.2f}"),
        ("top-5 (%)", "top5", "{:.2f}"),
        ("loss", "loss", "{:.4f}"),
        ("parameters", "params", "{:,}"),
        ("MACs", "macs", "{:,}"),
        ("convolutions", "depth", "{}"),
        ("activations", "activations", "{}"),
    ]
    for label, key, number_format in rows:
        if fields.get(key) is not None:
            table.add_row(label, number_format.format(fields[key]))
    return table


def _positions(positions: frozenset[int]) -> str:
    return "{" + ", ".join(map(str, sorted(positions))) + "}" + f"  ({len(positions)})"
