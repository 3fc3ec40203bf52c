"""The runner: an experiment's grid of cells, run by an executor, each cell stored once.

A run goes

    experiment -> grid of cells (method x budget x profile x seed, for the experiment's model)
      -> skip the cells already stored -> data -> base network (checkpoint, or trained once and
      cached) -> per profile: the base latency, measured once and stored (``run/baseline.py``),
      each cell's budget resolved against it -> each remaining cell: ``run_cell`` -> one record
      (+ its deploy network) -> one interleaved session per profile (``run/session.py``)
      -> ``consolidate``

Cells are content-addressed: a cell's hash covers everything its result depends on (model, data
set, base weights, method and full config, budget, profile hash, seed, fine-tune recipe,
fidelity), never the code version nor where the cell trained (device, workers), which are
recorded instead. The run id is the experiment's name
plus a hash of its cells, so running the same experiment again finds its run and skips every
finished cell, while a changed grid starts a new run. A cell is written in one step when it
finishes (``ResultsStore.write``), so a run killed at any point loses only the cells in flight.

Every cell ends as a record: ``ok``, ``infeasible`` (no plan meets the budget, or the method does
not apply to the network; the reason says which) or ``failed`` (an error, with its message). A
failed cell never stops the run; it is stored like the others and skipped by later runs (move its
file out of ``cells/`` to run it again).

What is wrong with the machine rather than with a cell is refused before anything runs, so it
never becomes a stored result: a results folder that cannot be written, a profile whose backend
cannot run here (its ``check_available`` says what to install), a latency cache that cannot be
used, a resolution at which the network's feature maps vanish, a training device this machine
lacks, mixed precision off CUDA. A full disk or Ctrl-C stops the run with a message; the cells
stored so far stay, and running again resumes.

Two runs of one experiment share its cells: each claims a cell (``ResultsStore.claim``) before
computing it, and a run skips the cells another live run has claimed, saying so.

The ``original`` network has no budget to meet: it is one cell per profile and seed, stored with
the budget ``fraction 1.0``, i.e. 100% of the base network's own latency.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from suite.cache import BASE_WEIGHTS, LATENCY_TABLES, cache_root
from suite.console import Steps, duration, logger, step_progress
from suite.core.budget import Budget
from suite.core.items import MapItems, serial_map
from suite.core.method import PlanContext
from suite.core.trace import TracedModel, trace_model
from suite.errors import DepthbenchError
from suite.measure.backends import get_backend
from suite.measure.harness import capture_environment
from suite.measure.profiles import Profile, load_profile, measurement_resources
from suite.measure.tables import TableCache
from suite.provenance import code_version, config_hash
from suite.run.baseline import stored_base_latency
from suite.run.cell import plan_context, run_cell
from suite.run.config import DatasetConfig, Experiment
from suite.run.data import DataSplits, load_data
from suite.run.executors import Executor
from suite.run.session import measure_run_sessions, save_deploy
from suite.run.store import (
    CellRecord,
    Claim,
    ResultsStore,
    StoredDifferently,
    read_consolidated,
)
from suite.run.train import FinetuneRecipe, load_checkpoint, placed, train_base

ORIGINAL = "original"
ORIGINAL_BUDGET = Budget(kind="fraction", value=1.0)
CELL_HASH_LENGTH = 16
RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # what the store accepts as one path component

StepProgress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True)
class Cell:
    """One point of the grid and the hash that names its record."""

    method: str
    method_config: dict[str, Any]
    budget: Budget
    profile: Profile
    seed: int
    cell_hash: str
    base_latency_ms: float | None = None  # the run's stored base measurement (run/baseline.py)
    target_ms: float | None = None  # the budget resolved against it, shipped with the cell

    def with_base(self, base_latency_ms: float | None) -> Cell:
        if base_latency_ms is None:  # no device to measure on: the cell fails and says why
            return self
        target = self.budget.target_ms(base_latency_ms)
        return dataclasses.replace(self, base_latency_ms=base_latency_ms, target_ms=target)

    @property
    def label(self) -> str:
        budget = "" if self.method == ORIGINAL else f" @ {self.budget.kind} {self.budget.value:g}"
        return f"{self.method}{budget} · {self.profile.name} · seed {self.seed}"


def grid(experiment: Experiment) -> list[Cell]:
    """Every cell of the experiment, profiles outermost (the runner runs one profile at a time)."""
    profiles = [load_profile(name) for name in experiment.profiles]
    common = {
        "model": experiment.model,
        "dataset": experiment.dataset.model_dump(exclude={"root"}),  # a local path, not content
        "base": base_identity(experiment),
        "finetune": experiment.finetune,
        "fidelity": experiment.fidelity,
    }
    cells = []
    for profile in profiles:
        for seed in experiment.seeds:
            for method in experiment.methods:
                budgets = [ORIGINAL_BUDGET] if method.name == ORIGINAL else experiment.budgets
                for budget in budgets:
                    content = {
                        **common,
                        "method": method.name,
                        "method_config": method.config,
                        "budget": budget,
                        "profile_hash": profile.hash,
                        "seed": seed,
                    }
                    cell_hash = config_hash(content)[:CELL_HASH_LENGTH]
                    cells.append(Cell(method.name, method.config, budget, profile, seed, cell_hash))
    return cells


def default_run_id(experiment: Experiment, cells: list[Cell]) -> str:
    """``<name>-<hash of the cells>``: the same experiment always finds the same run."""
    return f"{experiment.name}-{config_hash(sorted(cell.cell_hash for cell in cells))[:8]}"


def base_identity(experiment: Experiment) -> dict[str, Any]:
    """What the cell hash records about the base weights: the checkpoint's content, or the recipe
    that trains them (training is seeded, so the recipe determines the weights)."""
    if experiment.base.checkpoint is None:
        return {"train": experiment.base.train}
    checkpoint = experiment.base.checkpoint
    if not checkpoint.is_file():
        raise DepthbenchError(f"base checkpoint {checkpoint} (base.checkpoint) does not exist")
    digest = hashlib.sha256()
    with checkpoint.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return {"checkpoint_sha256": digest.hexdigest()}


@functools.lru_cache(maxsize=1)
def experiment_data(dataset: DatasetConfig) -> DataSplits:
    """The experiment's data, loaded once per process (the driver's, or each Ray lane's)."""
    return load_data(dataset.name, dataset.root, dataset.resolution, dataset.seed)


def base_network(experiment: Experiment, weights: dict[str, torch.Tensor]) -> TracedModel:
    """The traced base network with ``weights`` loaded; a checkpoint of another shape is refused."""
    model, data = experiment.model, experiment_data(experiment.dataset)
    traced = trace_model(model.name, model.width, data.num_classes, data.resolution)
    try:
        traced.model.load_state_dict(weights)
    except RuntimeError as error:
        source = experiment.base.checkpoint or "the trained base network"
        raise DepthbenchError(
            f"base weights {source} do not fit {model.name} (width {model.width:g}) with "
            f"{data.num_classes} classes: {str(error).splitlines()[0]} ...; give the checkpoint "
            "of that network, or fix the model section"
        ) from error
    return traced


def base_weights(
    experiment: Experiment, progress: StepProgress | None = None
) -> dict[str, torch.Tensor]:
    """The base network's state dict: the checkpoint, or trained from scratch once and cached."""
    if experiment.base.checkpoint is not None:
        return load_checkpoint(experiment.base.checkpoint)

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress("train the base network", done, total)

    data = experiment_data(experiment.dataset)
    path = train_base(
        experiment.model.name,
        data,
        placed(experiment.base.train, experiment.compute, data),
        cache_root() / BASE_WEIGHTS,
        width=experiment.model.width,
        progress=report,
    )
    return load_checkpoint(path)


@dataclass
class CellRunner:
    """Runs cells of one run and returns their records; what an executor maps over the grid.

    Picklable, so that a Ray lane can hold one: it carries the base weights, not the data, which
    each process loads itself. A context (the traced base network and the latencies measured so
    far) is kept per profile and seed, so cells that share them measure the base network once.
    """

    experiment: Experiment
    weights: dict[str, torch.Tensor]
    model_label: str
    run_id: str
    code_version: str
    cache_dir: Path  # latency tables and importance entries
    progress: StepProgress | None = None  # the run's display, or a relay to it (Ray lanes)
    started: Callable[[Cell], None] | None = None  # only where cells run in the caller's process
    run_dir: Path | None = None  # results/<run_id>: ok cells' deploy networks are saved there
    map_items: MapItems = serial_map  # how cells' table items run (the executor's item_map)
    _contexts: dict[tuple[str, int], PlanContext] = field(default_factory=dict, repr=False)

    def __call__(self, cell: Cell) -> CellRecord:
        fields: dict[str, Any] = {}
        training: dict[str, Any] = {}  # where the cell trained, once that is known
        if self.started is not None:
            self.started(cell)
        try:
            context = self._context(cell)
            training = context.recipe.placement.record_fields()
            outcome = run_cell(context, cell.method, cell.method_config, cell.budget)
            status, reason, fields = outcome.status, outcome.reason, outcome.fields
            if outcome.deploy is not None and self.run_dir is not None:
                save_deploy(
                    outcome.deploy,
                    cell.profile,
                    context.chain.resolution,
                    self.run_dir,
                    cell.cell_hash,
                )
        except Exception as error:  # whatever went wrong, it is this cell's result; the run goes on
            status, reason = "failed", f"{type(error).__name__}: {error}"
        if "environment" not in fields:  # unmeasured cells still say where they ran
            fields["environment"] = capture_environment(cell.profile)
        return CellRecord(
            run_id=self.run_id,
            cell_hash=cell.cell_hash,
            model=self.model_label,
            dataset=self.experiment.dataset.name,
            method=cell.method,
            method_config=cell.method_config,
            budget=cell.budget,
            seed=cell.seed,
            profile_name=cell.profile.name,
            profile_hash=cell.profile.hash,
            status=status,
            reason=reason,
            fidelity=self.experiment.fidelity,
            code_version=self.code_version,
            base_latency_ms=cell.base_latency_ms,
            target_ms=cell.target_ms,
            **fields,
            **training,
        )

    def _recipe(self, seed: int) -> FinetuneRecipe:
        """The shared fine-tune recipe at ``seed``, placed on this process's device."""
        recipe = self.experiment.finetune.model_copy(update={"seed": seed})
        return placed(recipe, self.experiment.compute, experiment_data(self.experiment.dataset))

    def _context(self, cell: Cell) -> PlanContext:
        key = (cell.profile.hash, cell.seed)
        if key not in self._contexts:
            self._contexts[key] = plan_context(
                base_network(self.experiment, self.weights),
                cell.profile,
                experiment_data(self.experiment.dataset),
                self._recipe(cell.seed),
                fidelity=self.experiment.fidelity,
                seed=cell.seed,
                cache_dir=self.cache_dir,
                base_latency_ms=cell.base_latency_ms,
                map_items=self.map_items,
            )
        context = self._contexts[key]
        if self.progress is not None:
            report, label = self.progress, cell.label
            context.progress = lambda what, done, total: report(f"{label}: {what}", done, total)
        return context


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    run_dir: Path
    records: Path  # records.parquet
    cells: int
    reused: int  # cells found stored and skipped
    by_status: dict[str, int]  # of every cell of the run
    claimed_elsewhere: int = 0  # cells skipped because another live run is computing them


def run_experiment(
    experiment: Experiment,
    results: Path,
    executor: Executor,
    run_id: str | None = None,
) -> RunSummary:
    """Run every cell of ``experiment`` not yet stored under ``results/<run_id>``; consolidate.

    ``run_id`` defaults to ``default_run_id``. Progress goes to the ``depthbench`` logger (see
    ``suite.console``): a line as each cell starts and finishes, with its status, the cells left
    and an ETA; each failed cell's reason as a warning.
    """
    store = ResultsStore(results)
    cells = grid(experiment)
    run_id = run_id or default_run_id(experiment, cells)
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise DepthbenchError(
            f"run id {run_id!r} is not a folder name: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    todo = [cell for cell in cells if not store.has(run_id, cell.cell_hash)]
    logger.info(
        "run %s: %d cells, %d already stored, %d to run", run_id, len(cells), len(cells) - len(todo),
        len(todo),
    )  # fmt: skip
    if todo:
        store.check_writable(run_id)
        check_environment(experiment)
        store.open_run(run_id)
    mine, elsewhere = _claim(store, run_id, todo)
    try:
        with step_progress() as steps:
            if elsewhere:
                _say_claimed(elsewhere)
            display = _Display(steps, total=len(cells), todo=len(mine))
            if mine:
                cell_runner = make_cell_runner(experiment, run_id, display.step)
                cell_runner.run_dir = store.root / run_id
                cell_runner.progress = executor.relay(display.step)
                if executor.in_process:
                    cell_runner.started = display.cell_started
                for profile, profile_cells in _by_profile(mine):
                    base = stored_base_latency(
                        store.root / run_id,
                        base_network(experiment, cell_runner.weights),
                        profile,
                        cell_runner.code_version,
                    )
                    profile_cells = [cell.with_base(base) for cell in profile_cells]
                    resources = measurement_resources(profile)
                    cell_runner.map_items = executor.item_map(resources)
                    for record in executor.map(cell_runner, profile_cells, resources):
                        _store(store, record)
                        store.release(run_id, record.cell_hash)
                        display.cell_done(record)
            measure_run_sessions(
                store.root / run_id,
                store.records(run_id),
                code_version(),
                only_stale=True,
                progress=display.step,
            )
    except KeyboardInterrupt as interrupt:
        raise DepthbenchError(
            f"interrupted: the cells stored so far are kept in {store.root / run_id / 'cells'}; "
            "run the same command again to compute the rest"
        ) from interrupt
    finally:
        for cell in mine:
            store.release(run_id, cell.cell_hash)
    records = store.consolidate(run_id, run_config=experiment.model_dump(mode="json"))
    statuses = Counter(read_consolidated(records.parent)["status"])
    reused = len(cells) - len(todo)
    return RunSummary(
        run_id, records.parent, records, statuses.total(), reused, dict(statuses), len(elsewhere)
    )


def check_environment(experiment: Experiment) -> None:
    """Refuse, before anything runs or is stored, what would fail every cell for a reason outside
    the cells: a profile this machine cannot measure under or at another resolution than the
    data's, a resolution at which the network vanishes, a latency cache that cannot be opened (a
    file that is not SQLite at all is moved aside and a new cache started)."""
    data = experiment_data(experiment.dataset)
    for name in experiment.profiles:
        profile = load_profile(name)
        if profile.is_replay:
            raise DepthbenchError(
                f"profile {name!r} replays an upstream latency table; a run needs a measuring "
                "profile (`depthbench profiles detect`)"
            )
        get_backend(profile.backend).check_available(profile)
        if profile.resolution not in (None, data.resolution):
            raise DepthbenchError(
                f"profile {name!r} measures at {profile.resolution}x{profile.resolution} but the "
                f"data set {data.name!r} is {data.resolution}x{data.resolution}; set "
                f"dataset.resolution: {profile.resolution} or use a profile with resolution: null"
            )
    model = experiment.model
    trace_model(model.name, model.width, data.num_classes, data.resolution)
    for recipe in (experiment.base.train, experiment.finetune):  # a missing device, amp on CPU
        if recipe is not None:
            placed(recipe, experiment.compute, data)
    TableCache(cache_root() / LATENCY_TABLES)


def _claim(store: ResultsStore, run_id: str, todo: list[Cell]) -> tuple[list[Cell], list[Claim]]:
    """Claim every cell of ``todo``: the cells this run computes, and the others' live claims."""
    mine, elsewhere = [], []
    try:
        for cell in todo:
            holder = store.claim(run_id, cell.cell_hash)
            if holder is not None:
                elsewhere.append(holder)
            elif store.has(run_id, cell.cell_hash):  # stored by another run since we looked
                store.release(run_id, cell.cell_hash)
            else:
                mine.append(cell)
    except BaseException:
        for cell in mine:
            store.release(run_id, cell.cell_hash)
        raise
    return mine, elsewhere


def _say_claimed(claims: list[Claim]) -> None:
    holders = ", ".join(
        f"pid {c.pid} on {c.host}" for c in sorted(set(claims), key=lambda c: (c.host, c.pid))
    )
    logger.warning(
        "skipped %d cells another run is computing now (%s); run again once it has finished to "
        "include its cells in this run's records", len(claims), holders,
    )  # fmt: skip


def make_cell_runner(
    experiment: Experiment, run_id: str, progress: StepProgress | None = None
) -> CellRunner:
    """The CellRunner of a run: loads the base weights (training them if needed) and checks
    that they fit the network. ``check_environment`` comes first, as in ``run_experiment``."""
    weights = base_weights(experiment, progress)
    traced = base_network(experiment, weights)
    return CellRunner(experiment, weights, traced.chain.name, run_id, code_version(), cache_root())


def _by_profile(cells: list[Cell]) -> list[tuple[Profile, list[Cell]]]:
    groups: dict[str, tuple[Profile, list[Cell]]] = {}
    for cell in cells:
        groups.setdefault(cell.profile.hash, (cell.profile, []))[1].append(cell)
    return list(groups.values())


def _store(store: ResultsStore, record: CellRecord) -> None:
    """Write the record; a record another run stored meanwhile is kept, and said so."""
    try:
        store.write(record)
    except StoredDifferently as error:
        logger.warning("kept the stored record: %s", error)


class _Display:
    """Where the run is: a log line as each cell starts (in-process runs only) and finishes, with
    the cells left and an ETA; on a terminal also a bar of the cells and of the current step."""

    def __init__(self, steps: Steps, total: int, todo: int) -> None:
        self.steps, self.total, self.todo = steps, total, todo
        self.finished = 0  # cells of this call
        self.begun = time.monotonic()
        self.cell_begun: dict[str, float] = {}
        self.current: list[str] = []  # the current cell's steps, whose bars go when it ends
        self._count()

    def step(self, what: str, done: int, total: int) -> None:
        if what not in self.current:
            self.current.append(what)
        self.steps(what, done, total)

    def cell_started(self, cell: Cell) -> None:
        self.cell_begun[cell.cell_hash] = time.monotonic()
        logger.info("cell %d/%d started: %s", self.finished + 1, self.todo, cell.label)
        logger.debug("cell %s: method config %s", cell.cell_hash, cell.method_config)

    def cell_done(self, record: CellRecord) -> None:
        self.finished += 1
        now = time.monotonic()
        left = self.todo - self.finished
        eta = (now - self.begun) / self.finished * left  # the rate so far, parallel lanes included
        begun = self.cell_begun.pop(record.cell_hash, None)
        took = f" in {duration(now - begun)}" if begun is not None else ""
        budget = (
            "" if record.method == ORIGINAL else f" @ {record.budget.kind} {record.budget.value:g}"
        )
        logger.info(
            "cell %d/%d finished: %s%s · %s · seed %d: %s%s; cells left: %d, ETA %s",
            self.finished, self.todo, record.method, budget, record.profile_name, record.seed,
            record.status, took, left, duration(eta),
        )  # fmt: skip
        if record.status == "failed":
            first_line = (record.reason or "").splitlines()[0]  # the record keeps all of it
            logger.warning("failed %s (%s): %s", record.method, record.cell_hash, first_line)
        for what in self.current:
            self.steps.end(what)
        self.current.clear()
        self._count()

    def _count(self) -> None:
        if self.steps.bars is not None:  # without a terminal, the cell lines say as much
            self.steps("cells", self.total - self.todo + self.finished, self.total)
