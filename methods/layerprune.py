"""layerprune: Elkerdawy et al., "To Filter Prune, or to Layer Prune, That Is The Question",
ACCV 2020; documented in docs/methods/layerprune.md.

The algorithm box, as ``plan_layerprune`` runs it:

    input:  base network, latency budget, a filter criterion
    1. candidates  the blocks whose removal keeps every feature shape: residual blocks with an
                   identity shortcut, or (in a chain without blocks, VGG) single convs whose
                   output has their input's shape
    2. criteria    per filter f of every gated conv l, accumulated over mini-batches of the
                   training split with the network frozen:
                       taylor_gate       (∂L/∂g_f)², g = 1 a per-channel gate on the BN output
                       weight_magnitude  Σ w_f²
                       bn_scale          |γ_f|
    3. importance  I_l = mean_f I_{l,f};  I_block = mean of I_l over the block's gated convs
    4. prune       remove blocks in ascending importance, each replaced by the identity, until
                   the measured latency meets the budget; nothing else changes

The method is not latency-aware: the budget only decides how far down the ranking it goes.

Faithful: the three criteria (upstream's methods 22, 2 and 30), Taylor-gate as the default, the
mean over filters and over a block's gated convs, removal in ascending importance, identity in
place of a removed block, the ResNet candidates (every block but the first of each later stage,
which changes shape), no merging.

Interpreted:
- a block's gated convs are those whose output meets an activation inside the block (all but the
  last: its channels are tied to the residual sum), as upstream gates two of a bottleneck's
  three convs; a single VGG conv is its own gated conv;
- the criteria are accumulated on the frozen base network in eval mode over at most one pass of
  ``batches`` mini-batches (upstream accumulates during one epoch of training at lr 1e-3);
- MobileNetV2's candidates are its ten blocks with a skip; VGG's are the convs with C_in = C_out
  not followed by a pool (a pool after a removed conv would change the shape);
- the imprinting criterion and the rank ensemble are left out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from suite.core.budget import Budget
from suite.core.chain import Chain
from suite.core.method import MethodResult, PlanContext, walk_ranking
from suite.core.plan import Plan
from suite.core.realize import trainable_network
from suite.core.registry import applies_where, register_method
from suite.errors import DepthbenchError
from suite.run.data import train_loader

PAPER = "Elkerdawy et al., ACCV 2020: To Filter Prune, or to Layer Prune, That Is The Question"
BATCHES = {"smoke": 2, "quick": 20}  # criteria mini-batches below full fidelity (full: batches)

Criterion = Literal["taylor_gate", "weight_magnitude", "bn_scale"]

UNSUPPORTED = "it has no block whose removal keeps the feature shapes (an identity-shortcut block)"


class LayerPruneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    criterion: Criterion = Field("taylor_gate", description="the per-filter criterion")
    batches: int = Field(
        200, gt=0, description="mini-batches (of the recipe's size) taylor_gate accumulates over"
    )


@dataclass(frozen=True)
class Candidate:
    """A removable block: the units it removes and the convs whose filters are scored."""

    units: tuple[int, ...]
    gated: tuple[int, ...]


def candidates(chain: Chain) -> list[Candidate]:
    """Step 1: the shape-preserving blocks (see the module docstring)."""
    if chain.residuals:
        return [
            Candidate(
                tuple(range(r.source + 1, r.target + 1)), tuple(range(r.source + 1, r.target))
            )
            for r in chain.residuals
            if r.projection is None
        ]
    return [
        Candidate((p,), (p,))
        for p in range(1, chain.L + 1)
        if chain.shapes[p - 1] == chain.shapes[p]
    ]


def filter_criteria(
    ctx: PlanContext, criterion: Criterion, positions: list[int], batches: int
) -> dict[int, torch.Tensor]:
    """Step 2: one score per filter (output channel) of the conv at each position."""
    traced = ctx.traced
    if criterion == "weight_magnitude":
        return {p: traced.conv(p).weight.detach().pow(2).sum(dim=(1, 2, 3)) for p in positions}
    if criterion == "bn_scale":
        missing = [p for p in positions if not isinstance(traced.bn(p), nn.BatchNorm2d)]
        if missing:
            raise DepthbenchError(
                f"layerprune criterion 'bn_scale' needs a BN after every scored conv, but the conv "
                f"at position {missing[0]} of {ctx.chain.name} has none; use 'taylor_gate' or "
                "'weight_magnitude'"
            )
        return {p: traced.bn(p).weight.detach().abs() for p in positions}
    return _taylor_gate(ctx, positions, batches)


def _taylor_gate(ctx: PlanContext, positions: list[int], batches: int) -> dict[int, torch.Tensor]:
    """Mean over mini-batches of (∂L/∂g)², g = 1 multiplying each channel of the BN output."""
    network = trainable_network(ctx.traced, Plan.original(ctx.chain)).eval().requires_grad_(False)
    gates = {
        p: torch.ones(ctx.chain.unit(p).conv.out_channels, requires_grad=True) for p in positions
    }
    for p, gate in gates.items():
        network.unit(p).register_forward_hook(_gated(gate))
    scores = {p: torch.zeros_like(gate) for p, gate in gates.items()}
    loader = train_loader(ctx.data.train, ctx.recipe.batch_size, ctx.seed)
    count = min(batches, len(loader))
    for done, (images, labels) in enumerate(itertools.islice(loader, count), start=1):
        loss = F.cross_entropy(network(images), labels)
        for p, grad in zip(gates, torch.autograd.grad(loss, list(gates.values())), strict=True):
            scores[p] += grad.pow(2)
        ctx.report("layerprune criteria", done, count)
    return {p: score / count for p, score in scores.items()}


def _gated(gate: torch.Tensor):
    """A forward hook multiplying each channel of a unit's (conv, BN) output by its gate."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * gate[:, None, None]

    return hook


def block_importance(block: Candidate, criteria: dict[int, torch.Tensor]) -> float:
    """Step 3: the mean over the block's gated convs of each conv's mean filter score."""
    return sum(criteria[p].mean().item() for p in block.gated) / len(block.gated)


def prune_plan(chain: Chain, removed: list[Candidate]) -> Plan:
    """Step 4's plan: the removed blocks' units deleted (each block becomes the identity)."""
    deleted = frozenset(p for block in removed for p in block.units)
    return Plan(
        activations=chain.original_activations - deleted,  # a removed unit's activation is gone too
        boundaries=frozenset(range(1, chain.L + 1)),
        deleted=deleted,
        method="layerprune",
    )


@register_method(
    "layerprune",
    config=LayerPruneConfig,
    paper=PAPER,
    supports=applies_where(candidates, UNSUPPORTED),
)
def plan_layerprune(ctx: PlanContext, budget: Budget, config: LayerPruneConfig) -> MethodResult:
    """Candidates → criteria → importance → prune the least important first (steps 1-4)."""
    chain = ctx.chain
    blocks = candidates(chain)
    batches = BATCHES.get(ctx.fidelity, config.batches)
    gated = sorted({p for block in blocks for p in block.gated})
    criteria = filter_criteria(ctx, config.criterion, gated, batches)
    importance = [block_importance(block, criteria) for block in blocks]
    ranking = [blocks[b] for b in sorted(range(len(blocks)), key=importance.__getitem__)]
    what = f"layerprune, removing up to all {len(blocks)} candidate blocks"
    plan, removed = walk_ranking(ranking, lambda some: prune_plan(chain, some), ctx, budget, what)
    meta = {
        "criterion": config.criterion,
        "candidates": [list(block.units) for block in blocks],
        "importance": importance,
        "removed_blocks": [list(block.units) for block in removed],
    }
    return MethodResult(plan, meta=meta)
