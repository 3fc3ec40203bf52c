"""Importance I(i, j, c) of LayerMerge's entries (docs/methods/layermerge.md).

One entry measures the network in which only segment (i, j] is changed to option c
(``option_plan``): original activations outside (i, j), none strictly inside, an activation at j
when the segment spans two or more units (upstream inserts one at an originally linear
MobileNetV2 block end, exactly as the plan will), (i, j] one merge group, and the units option c
does not keep (the L1 rule) pruned to the identity. Then, as in the 2023 method's tables (whose
machinery this reuses: ``methods.dp_depth.importance``, its cache):

1. single-unit entries (j = i + 1) re-initialise that conv and its BN (upstream ``reset_layers``);
2. the network is fine-tuned with ``UPSTREAM_RECIPE`` on ``data.train`` (upstream: 1 epoch on a
   4 % train subset, SGD lr 0.1, Nesterov 0.9, weight decay 1e-5, batch 256, cosine to 0);
3. it is scored on ``data.holdout`` (never the test split): Δ top-1 in percentage points against
   the base network, and I = exp(Δ top-1 / 100) (upstream ``normalize_imp``; no α).

The fidelity sets step 2's length exactly as for dp-depth (``methods.dp_depth.importance.
entry_recipe``): ``full`` the recipe, ``quick`` its first ``QUICK_STEPS`` steps of
``QUICK_BATCH`` images (steps 1-3 all run), ``smoke`` no steps 1 and 2 (scored right after the
change).
Entries are cached one file each under ``importance/layermerge/`` of the cache, keyed like
dp-depth's by base weights, data, fidelity and recipe; the file name is the entry's (i, j, K, dw).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from methods.dp_depth.importance import (
    UPSTREAM_RECIPE,
    ImportanceTable,
    entry_plan,
    importance_table,
    reinitialise_unit,
)
from methods.layermerge.options import Option, kept_units, segment_options
from suite.core.budget import Fidelity
from suite.core.chain import Chain
from suite.core.items import MapItems, serial_map
from suite.core.plan import Plan
from suite.core.realize import TrainableNetwork, trainable_network
from suite.core.trace import TracedModel
from suite.run.data import DataSplits
from suite.run.train import FinetuneRecipe

CACHE_NAME = "layermerge"  # under the importance cache, beside dp-depth's tables
Key = tuple[int, int, int, int]  # (i, j, K, dw): Option.key


def l1_norms(traced: TracedModel) -> dict[int, float]:
    """Σ|W| of every unit's raw conv weights (BN not folded), the L1 rule's score."""
    return {
        p: float(traced.conv(p).weight.detach().abs().sum()) for p in range(1, traced.chain.L + 1)
    }


def option_of(traced: TracedModel, key: Key) -> Option:
    """The option with key (i, j, K, dw), its kept convs chosen by the L1 rule."""
    i, j, kernel, depthwise = key
    chain = traced.chain
    option = next(
        o
        for o in segment_options(chain, i, j)
        if (o.kernel, int(o.depthwise)) == (kernel, depthwise)
    )
    kept = kept_units(chain, option, l1_norms(traced))
    return Option(i, j, option.kernel, option.depthwise, option.counts, kept)


def option_plan(chain: Chain, option: Option) -> Plan:
    """The network of one entry: only (i, j] changed, to ``option`` (see the module docstring)."""
    i, j = option.start, option.end
    start_act = int(i in chain.original_activations)
    end_act = int(j - i >= 2 or j in chain.original_activations)
    plan = entry_plan(chain, (i, j, start_act, end_act))
    return Plan(plan.activations, plan.boundaries, deleted=option.pruned(), method="layermerge")


def option_network(
    traced: TracedModel, key: Key, reinitialise: bool, seed: int
) -> TrainableNetwork:
    """The trainable network of entry ``key``; a single unit re-initialised when asked."""
    option = option_of(traced, key)
    network = trainable_network(traced, option_plan(traced.chain, option))
    if reinitialise and option.end == option.start + 1:
        reinitialise_unit(network, option.end, seed)
    return network


def measure(
    traced: TracedModel,
    data: DataSplits,
    options: list[Option],
    fidelity: Fidelity,
    cache_dir: Path,
    recipe: FinetuneRecipe = UPSTREAM_RECIPE,
    progress: Callable[[int, int], None] | None = None,
    map_items: MapItems = serial_map,
) -> ImportanceTable:
    """Δ top-1 and Δ loss of every option's network, measured (as work items, through
    ``map_items``) or read from ``cache_dir``."""
    return importance_table(
        traced,
        data,
        [option.key for option in options],
        recipe,
        fidelity,
        cache_dir,
        progress=progress,
        build=option_network,
        map_items=map_items,
    )


def importance(table: ImportanceTable) -> dict[Key, float]:
    """Upstream's objective: I = exp(Δ top-1 / 100), Δ top-1 in percentage points."""
    return {key: math.exp(delta / 100) for key, delta in table.top1_delta.items()}
