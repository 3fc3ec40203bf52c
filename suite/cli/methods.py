"""The method commands of the ``depthbench`` CLI: ``plan`` and ``compress``.

Both build the context a run gives a method (``suite.core.method.PlanContext``):

- the base network: ``--checkpoint`` (a state dict), or trained from scratch once on the data with
  the default experiment's ``base.train`` recipe (``configs/default.yaml``) and cached, in the
  same cache as ``depthbench run``, so the same model and data reuse the default run's network;
- the data set ``--data`` at ``--resolution`` (default: the data set's own, 32 for digits);
- the chain, traced at the profile's resolution when the profile fixes one, else the data's.

``plan`` runs a method's planning step only and prints the plan. Under a replay profile (e.g.
``rtx2080ti-replay-mbv2-1.0``) the latency side is the replayed upstream table at the profile's
resolution, while whatever the method learns from data, such as dp-depth's importance table, is
computed on ``--data`` at its own resolution, at ``--fidelity``: no upstream importance table is
public, so the plan is upstream's algorithm on upstream latencies with this suite's importance.
``compress`` runs one whole cell (``suite.run.cell.run_cell``): it measures and evaluates the
network, so the data must be at the resolution the profile measures.

Both take one parameter set, ``CellOptions``, and check the method, its config and the budget
before any work (training the base network can take minutes).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, get_type_hints

import typer
import yaml
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from suite.cache import BASE_WEIGHTS, cache_root
from suite.cli.options import (
    BudgetKind,
    BudgetKindOption,
    BudgetValue,
    Checkpoint,
    Data,
    DataResolution,
    DataRoot,
    Fidelity,
    FidelityOption,
    Format,
    MethodArgument,
    MethodConfig,
    MethodConfigFile,
    ModelArgument,
    OutputFormat,
    Profile,
    Seed,
    Width,
    check_budget,
    check_new_file,
    check_resolution,
    plan_network,
)
from suite.cli.output import emit
from suite.console import Steps, err_console, step_progress, user_errors
from suite.errors import DepthbenchError

if TYPE_CHECKING:
    import torch
    from pydantic import BaseModel

    from suite.core.budget import Budget
    from suite.core.method import PlanContext
    from suite.core.plan import Plan
    from suite.core.registry import MethodSpec
    from suite.core.trace import TracedModel
    from suite.run.train import FinetuneRecipe


@dataclass(frozen=True)
class CellOptions:
    """The parameters ``plan`` and ``compress`` share: method, network, profile, budget, data."""

    method: MethodArgument
    model: ModelArgument
    profile: Profile
    budget: BudgetValue
    budget_kind: BudgetKindOption = BudgetKind.fraction
    width: Width = 1.0
    resolution: DataResolution = None
    data: Data = "digits"
    data_root: DataRoot = None
    checkpoint: Checkpoint = None
    fidelity: FidelityOption = Fidelity.full
    seed: Seed = 0
    config: MethodConfig = None
    config_file: MethodConfigFile = None
    output: Format = OutputFormat.table


def cell_command(command: Callable[..., None]) -> Callable[..., None]:
    """``command(cell: CellOptions, **own_options)`` as a typer command: its parameters are the
    fields of ``CellOptions`` followed by the command's own options."""
    hints = get_type_hints(CellOptions, include_extras=True)
    shared = [
        parameter.replace(annotation=hints[parameter.name])
        for parameter in inspect.signature(CellOptions).parameters.values()
    ]
    own = list(inspect.signature(command, eval_str=True).parameters.values())[1:]
    parameters = [
        parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY) for parameter in [*shared, *own]
    ]

    def typer_command(**values: object) -> None:
        cell = CellOptions(**{parameter.name: values.pop(parameter.name) for parameter in shared})
        command(cell, **values)

    typer_command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    typer_command.__annotations__ = {p.name: p.annotation for p in parameters}
    typer_command.__doc__, typer_command.__name__ = command.__doc__, command.__name__
    return typer_command


def register(app: typer.Typer) -> None:
    """Add ``plan``, ``compress`` and ``methods show`` to ``app``."""
    app.command("plan")(cell_command(plan_command))
    app.command("compress")(cell_command(compress_command))
    methods = typer.Typer(help="Compression methods: show one's config.", no_args_is_help=True)
    methods.command("show")(show_command)
    app.add_typer(methods, name="methods")


def show_command(method: MethodArgument, output: Format = OutputFormat.table) -> None:
    """Show a method's paper and its config fields with their types, defaults and meaning."""

    from pydantic_core import to_jsonable_python

    from suite.core.registry import get_method

    with user_errors():
        spec = get_method(method)
    schema = spec.config.model_json_schema()
    fields = [
        {
            "field": name,
            "type": _type_name(field.annotation),
            "default": None
            if field.is_required()
            else to_jsonable_python(field.get_default(call_default_factory=True)),
            "required": field.is_required(),
            "description": field.description or "",
        }
        for name, field in spec.config.model_fields.items()
    ]
    about = {"name": spec.name, "aliases": list(spec.aliases), "paper": spec.paper}

    def table() -> Table:
        shown = Table("field", "type", "default", "description", title=escape(spec.paper))
        for row in fields:
            default = "(required)" if row["required"] else json.dumps(row["default"])
            shown.add_row(
                row["field"], escape(row["type"]), escape(default), escape(row["description"])
            )
        return shown

    emit({**about, "fields": fields, "schema": schema}, output, table)


def _type_name(annotation: object) -> str:
    name = getattr(annotation, "__name__", None)
    return (
        name
        if name and not getattr(annotation, "__args__", None)
        else str(annotation).replace("typing.", "")
    )


def method_config(cell: CellOptions) -> dict:
    """The method config fields of ``--config-file`` and then each ``--config key=value``."""
    values: dict = {}
    if cell.config_file is not None:
        if not cell.config_file.is_file():
            raise DepthbenchError(f"--config-file {cell.config_file} does not exist")
        try:
            content = yaml.safe_load(cell.config_file.read_text())
        except yaml.YAMLError as error:
            raise DepthbenchError(
                f"--config-file {cell.config_file}: not valid YAML: {error}"
            ) from None
        if not isinstance(content or {}, dict):
            raise DepthbenchError(
                f"--config-file {cell.config_file}: expected a mapping of config fields "
                f"(key: value), found {type(content).__name__}"
            )
        values |= content or {}
    for item in cell.config or []:
        key, equals, text = item.partition("=")
        if not equals or not key.strip():
            raise DepthbenchError(f"--config {item!r}: give key=value, e.g. --config alpha=1.2")
        try:
            values[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise DepthbenchError(
                f"--config {item!r}: the value is not valid YAML: {error}"
            ) from None
    return values


def plan_command(
    cell: CellOptions,
    out: Annotated[Path | None, typer.Option(help="Write the plan as JSON here.")] = None,
) -> None:
    """Plan one method at one budget and print the plan: A, S, objective, predicted latency."""
    from suite.run.train import FinetuneRecipe

    with user_errors():
        spec, config, budget = _checked(cell)
        if out is not None and not out.parent.is_dir():
            raise DepthbenchError(
                f"--out {out}: the folder {out.parent} does not exist; create it or write elsewhere"
            )
        recipe = FinetuneRecipe(epochs=1, seed=cell.seed)  # for methods that train while planning
        with step_progress() as steps:
            ctx = setup_context(cell, recipe, steps)
            unsupported = spec.supports(ctx.chain)
            if unsupported:
                raise DepthbenchError(
                    f"{spec.name} does not apply to {ctx.chain.name}: {unsupported}"
                )
            result = spec.plan(ctx, budget, config)
        network = plan_network(cell.model, cell.width, ctx.chain.resolution, ctx.data.num_classes)
        plan = replace(result.plan, meta={**result.plan.meta, "network": network})
        plan.validate(ctx.chain)
        if out is not None:
            plan.save(out)
    emit(
        {**plan.to_json(), "profile": ctx.profile.name, "profile_hash": ctx.profile.hash},
        cell.output,
        lambda: _plan_table(plan, ctx),
    )
    if out is not None:
        err_console.print(f"wrote {escape(str(out))}")


def compress_command(
    cell: CellOptions,
    epochs: Annotated[
        float | None, typer.Option(help="Fine-tuning epochs (default 1; or give --steps).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Fine-tuning optimiser steps.")] = None,
    save_onnx: Annotated[
        Path | None,
        typer.Option(
            help="Write the deploy network as ONNX here (a new file).", show_default=False
        ),
    ] = None,
    save_state_dict: Annotated[
        Path | None,
        typer.Option(
            help="Write the deploy network's state dict here (a new file).", show_default=False
        ),
    ] = None,
) -> None:
    """Plan, fine-tune, merge, measure and evaluate one cell; print its result."""
    from suite.run.cell import run_cell
    from suite.run.train import FinetuneRecipe

    with user_errors():
        spec, config, budget = _checked(cell)
        check_new_file(save_onnx, "--save-onnx")
        check_new_file(save_state_dict, "--save-state-dict")
        if epochs is not None and steps is not None:
            raise DepthbenchError("give the fine-tuning length as --epochs or --steps, not both")
        if (epochs is not None and epochs <= 0) or (steps is not None and steps <= 0):
            raise DepthbenchError("--epochs and --steps count fine-tuning: give a positive number")
        recipe = FinetuneRecipe(epochs=None if steps else epochs or 1, steps=steps, seed=cell.seed)
        with step_progress() as progress:
            ctx = setup_context(cell, recipe, progress)
            if ctx.data.resolution != ctx.chain.resolution:
                raise DepthbenchError(
                    f"profile {ctx.profile.name!r} measures at {ctx.chain.resolution} pixels but "
                    f"the data is at {ctx.data.resolution}: pass --resolution "
                    f"{ctx.chain.resolution}, or use a profile with resolution: null"
                )
            outcome = run_cell(ctx, spec.name, config.model_dump(mode="json"), budget)
        if outcome.status != "ok":
            raise DepthbenchError(f"{cell.method} is infeasible at this budget: {outcome.reason}")
        _save_artefacts(outcome.deploy, ctx, save_onnx, save_state_dict)
    emit(
        {"plan": outcome.plan.to_json(), **outcome.fields},
        cell.output,
        lambda: Group(
            _plan_table(outcome.plan, ctx),
            _cell_table(outcome.fields, f"{cell.method} on {ctx.chain.name} ({ctx.data.name})"),
        ),
    )


def _save_artefacts(
    deploy: torch.nn.Module, ctx: PlanContext, onnx_path: Path | None, state_path: Path | None
) -> None:
    """The deploy network as the profile measured it: ONNX at its batch and resolution, and its
    state dict."""
    import torch

    from suite.core.export import export_onnx

    size = ctx.chain.resolution
    if onnx_path is not None:
        export_onnx(deploy, (ctx.profile.batch, 3, size, size), onnx_path)
        err_console.print(f"wrote {escape(str(onnx_path))}")
    if state_path is not None:
        torch.save(deploy.state_dict(), state_path)
        err_console.print(f"wrote {escape(str(state_path))}")


def _checked(cell: CellOptions) -> tuple[MethodSpec, BaseModel, Budget]:
    """The method, its config (validated) and the budget, checked before any work."""
    from suite.core.budget import Budget
    from suite.core.registry import get_method

    spec = get_method(cell.method)
    config = spec.make_config(method_config(cell))
    check_resolution(cell.resolution)
    return spec, config, Budget(kind=cell.budget_kind.value, value=check_budget(cell.budget))


def setup_context(cell: CellOptions, recipe: FinetuneRecipe, steps: Steps) -> PlanContext:
    """The context of one cell, with every step's progress on ``steps``."""
    from suite.core.trace import trace_model
    from suite.measure.profiles import load_profile
    from suite.run.cell import plan_context
    from suite.run.data import load_data
    from suite.run.train import train_base

    profile = load_profile(cell.profile)
    data = load_data(cell.data, cell.data_root, cell.resolution, cell.seed)
    size = profile.resolution or data.resolution
    traced = trace_model(cell.model, cell.width, data.num_classes, size)
    checkpoint = cell.checkpoint or train_base(
        cell.model,
        data,
        _base_recipe(),
        cache_root() / BASE_WEIGHTS,
        width=cell.width,
        progress=lambda done, total: steps("train the base network", done, total),
    )
    load_weights(traced, checkpoint)
    return plan_context(
        traced,
        profile,
        data,
        recipe,
        fidelity=cell.fidelity.value,
        seed=cell.seed,
        cache_dir=None if profile.is_replay else cache_root(),
        progress=steps,
    )


def _base_recipe() -> FinetuneRecipe:
    """The default experiment's ``base.train``: one recipe for the base network everywhere."""
    from suite.run.config import DEFAULT_CONFIG, load_experiment

    recipe = load_experiment(DEFAULT_CONFIG).base.train
    if recipe is None:
        raise DepthbenchError(
            f"{DEFAULT_CONFIG} gives the base network as a checkpoint, not a base.train recipe; "
            "pass the base weights with --checkpoint"
        )
    return recipe


def load_weights(traced: TracedModel, checkpoint: Path) -> None:
    from suite.run.train import load_checkpoint

    try:
        traced.model.load_state_dict(load_checkpoint(checkpoint))
    except RuntimeError as error:
        raise DepthbenchError(
            f"checkpoint {checkpoint} does not fit {traced.chain.name}: "
            f"{str(error).splitlines()[0]} ...; pass the weights of that network (--width and "
            "the data set's classes must match)"
        ) from error


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
