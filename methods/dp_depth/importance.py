"""Importance tables h(i, j, a_i, a_j) of the dp-depth method (docs/methods/dp-depth.md, "Importance entries").

One entry measures what it costs to fuse the segment (i, j] into one conv with activation states
a_i and a_j at its ends (``entry_plan``): the base network keeps its original activations outside
(i, j), loses every activation strictly inside it, and (i, j] becomes one merge group with its
padding on the first conv, so the network is exactly what the fused conv would compute. Then:

1. single-conv entries (j = i + 1) re-initialise that conv and its BN (upstream ``reset_layers``);
2. the network is fine-tuned with a short recipe on ``data.train`` (upstream: 1 epoch of SGD,
   lr 0.1, Nesterov 0.9, weight decay 1e-5, batch 256, cosine to 0; ``UPSTREAM_RECIPE``);
3. it is scored on ``data.holdout``: h = Δ top-1 (percentage points) against the base network;
   Δ loss is kept too.

The fidelity sets step 2's length (``entry_recipe``, the one place that maps it):

    full   the recipe as given (upstream: 1 epoch at batch 256)
    quick  steps 1-3 with the recipe cut to ``QUICK_STEPS`` steps of ``QUICK_BATCH`` images each
           (same lr, momentum, weight decay, KD; its cosine schedule over those steps)
    smoke  no steps 1 and 2: scored right after the change. Without training a re-initialised
           conv scores at chance whatever conv it is, so the entry would measure the data set's
           chance level and not the conv; a smoke single-conv entry with its original end states
           is the base network itself (h = 0), the others measure removing or adding that one
           activation. A test setting, not the paper's algorithm.

Normalisation (``normalise``, upstream ``--norm single --alph α``): subtract α·mean(h over the
single-conv entries) from every entry. Those means are negative at full fidelity, so this is a
constant bonus per segment that favours keeping activations. Upstream's α: 1.6 (MobileNetV2-1.0),
1.2 (MobileNetV2-1.4), 1.4 (VGG19).

Entries are independent work items (``suite.core.items``): under Ray they are scored on any node
with a free CPU core (or GPU, for a network on CUDA) and their scores come back to the caller.
Each entry is cached as one JSON file as soon as its score arrives, under a directory keyed by the
base weights, the data, the fidelity and the recipe its entries were trained with (none at smoke
fidelity). An interrupted table
resumes from there without measuring a stored entry again.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from methods.dp_depth.solver import Entry, Segment, measured_entries
from suite.core.budget import Fidelity
from suite.core.chain import Chain
from suite.core.items import MapItems, Resources, serial_map
from suite.core.plan import Plan
from suite.core.realize import TrainableNetwork, trainable_network
from suite.core.trace import TracedModel
from suite.files import atomic_write
from suite.provenance import config_hash
from suite.run.data import DataSplits
from suite.run.train import Accuracy, FinetuneRecipe, evaluate, finetune

Progress = Callable[[int, int], None]  # (entries done, entries in the table)
# (base network, entry, reinitialise a single conv?, seed) -> the entry's trainable network
EntryBuilder = Callable[[TracedModel, tuple, bool, int], TrainableNetwork]

UPSTREAM_RECIPE = FinetuneRecipe(
    epochs=1, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-5, batch_size=256
)
QUICK_STEPS = 4  # optimiser steps of each entry's fine-tune at quick fidelity
QUICK_BATCH = 32  # images per step at quick fidelity: 128 images per entry in all


def entry_recipe(fidelity: Fidelity, recipe: FinetuneRecipe) -> FinetuneRecipe | None:
    """Each entry's fine-tune (step 2) at ``fidelity``: ``recipe`` (full), its first
    ``QUICK_STEPS`` steps of ``QUICK_BATCH`` images (quick), or none at all (smoke, which also
    skips step 1's re-initialisation)."""
    quick = recipe.model_copy(
        update={"epochs": None, "steps": QUICK_STEPS, "batch_size": QUICK_BATCH}
    )
    return {"smoke": None, "quick": quick, "full": recipe}[fidelity]


class CorruptImportanceEntryWarning(UserWarning):
    """A cached importance entry could not be read; it is measured again and replaced."""


class EntryScore(BaseModel):
    """One measured entry: holdout top-1 (pp) and loss of the entry network minus the base's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top1_delta: float
    loss_delta: float
    fidelity: Fidelity


@dataclass(frozen=True)
class ImportanceTable:
    """Every requested entry's score; ``computed`` of them were measured now, ``cached`` read."""

    scores: dict[Entry, EntryScore]
    fidelity: Fidelity
    computed: int
    cached: int

    @property
    def top1_delta(self) -> dict[Entry, float]:
        """h(i, j, a_i, a_j): the change of holdout top-1, the score the DP maximises."""
        return {entry: score.top1_delta for entry, score in self.scores.items()}


def importance_entries(
    segments: Iterable[Segment], chain: Chain, add_block_end_activations: bool
) -> list[Entry]:
    """The entries to measure for the valid ``segments``.

    With ``add_block_end_activations`` (the a=0 extension, upstream ``--exclude-zeros True``): the
    entries of ``solver.measured_entries``, where a block end may gain an activation. Without it,
    one entry per segment with the original states at its ends, so A stays within the original
    activations.
    """
    ends = chain.block_ends  # only block ends may carry either activation state
    if add_block_end_activations:
        return measured_entries(segments, ends)
    return [(i, j, int(i not in ends), int(j not in ends)) for i, j in sorted(segments)]


def entry_plan(chain: Chain, entry: Entry) -> Plan:
    """The network of one entry: original activations outside (i, j), none inside, a_i and a_j
    at the ends (a_0 is the stem's and always on), and (i, j] as one merge group."""
    i, j, start_act, end_act = entry
    activations = set(chain.original_activations) - set(range(i, j + 1))
    activations |= {p for p, on in ((i, start_act), (j, end_act)) if on and p > 0}
    boundaries = frozenset(range(1, chain.L + 1)) - frozenset(range(i + 1, j))
    return Plan(frozenset(activations), boundaries, method="dp-depth importance entry")


def entry_network(
    traced: TracedModel, entry: Entry, reinitialise: bool, seed: int
) -> TrainableNetwork:
    """The trainable network of ``entry``; a single conv's conv and BN freshly initialised when
    ``reinitialise`` (with ``seed``, leaving the caller's random state untouched)."""
    network = trainable_network(traced, entry_plan(traced.chain, entry))
    i, j = entry[:2]
    if reinitialise and j == i + 1:
        reinitialise_unit(network, j, seed)
    return network


def reinitialise_unit(network: TrainableNetwork, position: int, seed: int) -> None:
    """Upstream ``reset_layers``: fresh conv and BN at ``position``, seeded with ``seed``, leaving
    the caller's random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in network.unit(position).modules():
            if isinstance(module, nn.Conv2d | nn.BatchNorm2d):
                module.reset_parameters()


@dataclass(frozen=True)
class EntryScorer:
    """Scores the entries of one table against the base network's holdout accuracy."""

    traced: TracedModel
    data: DataSplits
    recipe: FinetuneRecipe
    fidelity: Fidelity
    base: Accuracy  # of the base network on the holdout
    build: EntryBuilder = entry_network  # a module-level function, so that workers can unpickle it

    def __call__(self, entry: Entry) -> tuple[Entry, EntryScore]:
        """Build, re-initialise and fine-tune (unless at smoke fidelity), and score one entry."""
        recipe = entry_recipe(self.fidelity, self.recipe)
        network = self.build(self.traced, entry, recipe is not None, self.recipe.seed)
        if recipe is not None:
            teacher = self.traced.model if recipe.kd_weight > 0 else None
            finetune(network, self.data, recipe, teacher=teacher)
        accuracy = evaluate(network, self.data.holdout, placement=self.recipe.placement)
        score = EntryScore(
            top1_delta=accuracy.top1 - self.base.top1,
            loss_delta=accuracy.loss - self.base.loss,
            fidelity=self.fidelity,
        )
        return entry, score


def importance_table(
    traced: TracedModel,
    data: DataSplits,
    entries: list[Entry],
    recipe: FinetuneRecipe,
    fidelity: Fidelity,
    cache_dir: Path,
    progress: Progress | None = None,
    build: EntryBuilder = entry_network,
    map_items: MapItems = serial_map,
) -> ImportanceTable:
    """Measure (or read from the cache) every entry of ``entries`` for the base network ``traced``.

    ``recipe`` is the short fine-tune of each entry at full fidelity (``entry_recipe`` cuts it
    at quick, drops it at smoke); each missing
    entry is cached as soon as it is scored, so an interrupted table resumes where it stopped.
    ``build`` makes an entry's network (another method's entries: LayerMerge's). The missing
    entries are scored as work items through ``map_items`` (default: here, one after another),
    each asking for ``entry_resources``; their scores come back here, where they are cached.
    """
    cache = EntryCache(table_cache_dir(cache_dir, traced, data, recipe, fidelity))
    scores = {entry: score for entry in entries if (score := cache.read(entry)) is not None}
    cached = len(scores)
    missing = [entry for entry in entries if entry not in scores]
    if progress:
        progress(cached, len(entries))
    if missing:
        base = evaluate(traced.model, data.holdout, placement=recipe.placement)
        scorer = EntryScorer(traced, data, recipe, fidelity, base, build)
        for entry, score in map_items(scorer, missing, entry_resources(traced)):
            cache.write(entry, score)
            scores[entry] = score
            if progress:
                progress(len(scores), len(entries))
    return ImportanceTable(
        {entry: scores[entry] for entry in entries}, fidelity, len(missing), cached
    )


def entry_resources(traced: TracedModel) -> Resources:
    """What scoring one entry needs: a GPU when the base network (and so every entry network
    built from it) lives on one, else one CPU core (an entry's fine-tune is small)."""
    on_gpu = next(traced.model.parameters()).device.type == "cuda"
    return {"GPU": 1} if on_gpu else {"CPU": 1}


def normalise(importance: dict[Entry, float], alpha: float) -> dict[Entry, float]:
    """h − α·mean(h over the single-conv entries), upstream's ``--norm single --alph α``."""
    singles = [h for (i, j, _, _), h in importance.items() if j == i + 1]
    offset = alpha * sum(singles) / len(singles) if singles else 0.0
    return {entry: h - offset for entry, h in importance.items()}


def table_cache_dir(
    root: Path, traced: TracedModel, data: DataSplits, recipe: FinetuneRecipe, fidelity: Fidelity
) -> Path:
    """The directory of one table's entries: a hash of everything an entry's score depends on."""
    key = config_hash(
        {
            "chain": traced.chain.name,
            "weights": weights_digest(traced.model),
            "data": [data.name, data.resolution, data.num_classes, data.seed],
            "sizes": [len(data.train), len(data.holdout)],
            "fidelity": fidelity,
            "recipe": entry_recipe(fidelity, recipe),
        }
    )
    return Path(root) / key[:24]


def weights_digest(model: nn.Module) -> str:
    """sha256 over the model's parameter and buffer names, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class EntryCache:
    """One JSON file per entry in ``directory``, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, entry: Entry) -> Path:
        return self.directory / ("-".join(map(str, entry)) + ".json")

    def read(self, entry: Entry) -> EntryScore | None:
        """The cached score; None when there is none or it is unreadable (then with a warning)."""
        path = self.path(entry)
        if not path.exists():
            return None
        try:
            return EntryScore.model_validate_json(path.read_bytes())
        except ValidationError as error:
            warnings.warn(
                f"importance cache {path} is unreadable ({error.error_count()} errors: "
                f"{error.errors()[0]['msg']}); measuring entry {entry} again",
                CorruptImportanceEntryWarning,
                stacklevel=3,
            )
            return None

    def write(self, entry: Entry, score: EntryScore) -> None:
        atomic_write(self.path(entry), score.model_dump_json())
