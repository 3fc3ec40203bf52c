"""layerprune: Elkerdawy et al., "To Filter Prune, or to Layer Prune, That Is The Question",
ACCV 2020; documented in docs/methods/layerprune.md.

The algorithm box, as ``plan_layerprune`` runs it:

    input:  base network, latency budget, a criterion
    1. candidates  the blocks whose removal keeps every feature shape: residual blocks with an
                   identity shortcut, or (in a chain without blocks, VGG) single convs that keep
                   their input's shape (C_in = C_out, stride 1), a pool after one kept
    2. importance  one score per block, by the criterion:
                   filter criteria, per filter f of every gated conv l, on the frozen network:
                       taylor_gate       (∂L/∂g_f)², g = 1 a per-channel gate on the BN output,
                                         averaged over mini-batches of the training split
                       weight_magnitude  Σ w_f²
                       bn_scale          |γ_f|
                   then I_l = mean_f I_{l,f};  I_block = mean of I_l over the block's gated convs
                   imprinting  at the block's input and output, imprint one weight per class
                               (the mean normalised pooled feature of its training images) and
                               measure their accuracy on the holdout; I_block = the accuracy gain
                   ensemble    each of the above ranks the blocks; I_block = the mean rank
    3. rank        the blocks in ascending importance
    4. prune       remove blocks along the ranking, each replaced by the identity, until the
                   measured latency meets the budget; nothing else changes

The method is not latency-aware: the budget only decides how far down the ranking it goes.

Faithful: the filter criteria (upstream's methods 22, 2 and 30), Taylor-gate as the default, the
mean over filters and over a block's gated convs, the imprinting criterion of the authors' ICIP'20
paper (accuracy of imprinted class weights, a layer scored by its gain), the ensemble by rank,
removal in ascending importance, identity in place of a removed block, the ResNet candidates
(every block but the first of each later stage, which changes shape), no merging.

Interpreted:
- a block's gated convs are those whose output meets an activation inside the block (all but the
  last: its channels are tied to the residual sum), as upstream gates two of a bottleneck's
  three convs; a single VGG conv is its own gated conv;
- taylor_gate is accumulated on the frozen base network in eval mode over at most one pass of
  ``batches`` mini-batches (upstream accumulates during one epoch of training at lr 1e-3);
- imprinting: features globally average-pooled and L2-normalised, class weights imprinted from
  the same ``batches`` mini-batches of the training split, accuracy by cosine on the whole
  holdout (never the test split); a block's score is the accuracy at its output minus that at
  its input (the paper's details are not at hand);
- ensemble: the mean over taylor_gate, weight_magnitude, bn_scale (where every scored conv has a
  BN) and imprinting of each block's rank (ties share the mean rank);
- MobileNetV2's candidates are its ten blocks with a skip; in VGG a removed conv keeps the pool
  after it (upstream reshapes weights instead; out of scope).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import rankdata
from torch import nn

from suite.core.budget import Budget
from suite.core.chain import Chain
from suite.core.method import MethodResult, PlanContext, walk_ranking
from suite.core.plan import Plan
from suite.core.realize import TrainableNetwork, trainable_network
from suite.core.registry import applies_where, register_method
from suite.errors import DepthbenchError
from suite.run.data import eval_loader, train_loader
from suite.run.train import train_batches

PAPER = "Elkerdawy et al., ACCV 2020: To Filter Prune, or to Layer Prune, That Is The Question"
BATCHES = {"smoke": 2, "quick": 20}  # criteria mini-batches below full fidelity (full: batches)

FilterCriterion = Literal["taylor_gate", "weight_magnitude", "bn_scale"]
Criterion = Literal["taylor_gate", "weight_magnitude", "bn_scale", "imprinting", "ensemble"]
FILTER_CRITERIA: tuple[FilterCriterion, ...] = ("taylor_gate", "weight_magnitude", "bn_scale")

UNSUPPORTED = "it has no block whose removal keeps the feature shapes (an identity-shortcut block)"


class LayerPruneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    criterion: Criterion = Field("taylor_gate", description="how blocks are scored")
    batches: int = Field(
        200,
        gt=0,
        description="mini-batches (of the recipe's size) of the training split that taylor_gate "
        "accumulates over and imprinting imprints from",
    )


@dataclass(frozen=True)
class Candidate:
    """A removable block: the units it removes and the convs whose filters are scored."""

    units: tuple[int, ...]
    gated: tuple[int, ...]

    @property
    def ends(self) -> tuple[int, int]:
        """The positions of the block's input and output feature maps."""
        return self.units[0] - 1, self.units[-1]


@dataclass
class Spent:
    """Images passed through the network to score the blocks (no weight is updated)."""

    images: int = 0


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
    return [Candidate((p,), (p,)) for p in range(1, chain.L + 1) if chain.keeps_shape(p)]


def importance(
    ctx: PlanContext, blocks: list[Candidate], criterion: Criterion, batches: int, spent: Spent
) -> list[float]:
    """Step 2: one importance per block, low = removed first."""
    if criterion == "ensemble":
        return ensemble(
            [
                importance(ctx, blocks, single, batches, spent)
                for single in ensemble_members(ctx, blocks)
            ]
        )
    if criterion == "imprinting":
        return imprinting_gain(ctx, blocks, batches, spent)
    gated = sorted({p for block in blocks for p in block.gated})
    criteria = filter_criteria(ctx, criterion, gated, batches, spent)
    return [block_importance(block, criteria) for block in blocks]


def filter_criteria(
    ctx: PlanContext,
    criterion: FilterCriterion,
    positions: list[int],
    batches: int,
    spent: Spent | None = None,
) -> dict[int, torch.Tensor]:
    """One score per filter (output channel) of the conv at each position."""
    traced = ctx.traced
    if criterion == "weight_magnitude":
        return {p: traced.conv(p).weight.detach().pow(2).sum(dim=(1, 2, 3)) for p in positions}
    if criterion == "bn_scale":
        missing = _without_bn(ctx, positions)
        if missing:
            raise DepthbenchError(
                f"layerprune criterion 'bn_scale' needs a BN after every scored conv, but the conv "
                f"at position {missing[0]} of {ctx.chain.name} has none; use 'taylor_gate' or "
                "'weight_magnitude'"
            )
        return {p: traced.bn(p).weight.detach().abs() for p in positions}
    return _taylor_gate(ctx, positions, batches, spent or Spent())


def _without_bn(ctx: PlanContext, positions: Iterable[int]) -> list[int]:
    return [p for p in positions if not isinstance(ctx.traced.bn(p), nn.BatchNorm2d)]


def _taylor_gate(
    ctx: PlanContext, positions: list[int], batches: int, spent: Spent
) -> dict[int, torch.Tensor]:
    """Mean over mini-batches of (∂L/∂g)², g = 1 multiplying each channel of the BN output."""
    device = ctx.recipe.placement.device
    network = _frozen_base(ctx).to(device)
    gates = {
        p: torch.ones(ctx.chain.unit(p).conv.out_channels, requires_grad=True, device=device)
        for p in positions
    }
    for p, gate in gates.items():
        network.unit(p).register_forward_hook(_gated(gate))
    scores = {p: torch.zeros_like(gate) for p, gate in gates.items()}
    loader = train_batches(ctx.data.train, ctx.recipe, ctx.seed)
    count = min(batches, len(loader))
    for done, (images, labels) in enumerate(itertools.islice(loader, count), start=1):
        loss = F.cross_entropy(network(images), labels)
        for p, grad in zip(gates, torch.autograd.grad(loss, list(gates.values())), strict=True):
            scores[p] += grad.pow(2)
        spent.images += len(labels)
        ctx.report("layerprune criteria", done, count)
    return {p: (score / count).cpu() for p, score in scores.items()}


def _frozen_base(ctx: PlanContext) -> TrainableNetwork:
    return trainable_network(ctx.traced, Plan.original(ctx.chain)).eval().requires_grad_(False)


def _gated(gate: torch.Tensor):
    """A forward hook multiplying each channel of a unit's (conv, BN) output by its gate."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output * gate[:, None, None]

    return hook


def block_importance(block: Candidate, criteria: dict[int, torch.Tensor]) -> float:
    """The mean over the block's gated convs of each conv's mean filter score."""
    return sum(criteria[p].mean().item() for p in block.gated) / len(block.gated)


def imprinting_gain(
    ctx: PlanContext, blocks: list[Candidate], batches: int, spent: Spent
) -> list[float]:
    """Each block's gain in imprinted accuracy on the holdout, from its input to its output."""
    positions = sorted({p for block in blocks for p in block.ends})
    network = _frozen_base(ctx)
    train = train_loader(ctx.data.train, ctx.recipe.batch_size, ctx.seed)
    imprinted, labels = pooled_features(network, positions, itertools.islice(train, batches))
    holdout = eval_loader(ctx.data.holdout, ctx.recipe.batch_size)
    queries, truth = pooled_features(network, positions, holdout)
    spent.images += len(labels) + len(truth)
    accuracy = {
        p: imprinted_accuracy(imprinted[p], labels, queries[p], truth, ctx.data.num_classes)
        for p in positions
    }
    return [accuracy[block.ends[1]] - accuracy[block.ends[0]] for block in blocks]


@torch.no_grad()
def pooled_features(
    network: TrainableNetwork, positions: list[int], batches: Iterable
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """The globally average-pooled feature map at each position, for every image of ``batches``,
    and the labels. The map at position p is what unit p + 1 (or, at the end, the head) reads."""
    pooled: dict[int, list[torch.Tensor]] = {p: [] for p in positions}
    readers = {p: network.unit(p + 1) if p < network.chain.L else network.head for p in positions}
    hooks = [
        reader.register_forward_pre_hook(
            lambda module, inputs, p=p: pooled[p].append(inputs[0].mean(dim=(2, 3)))
        )
        for p, reader in readers.items()
    ]
    labels = []
    try:
        for images, targets in batches:
            network(images)
            labels.append(targets)
    finally:
        for hook in hooks:
            hook.remove()
    return {p: torch.cat(features) for p, features in pooled.items()}, torch.cat(labels)


def imprinted_accuracy(
    features: torch.Tensor,
    labels: torch.Tensor,
    queries: torch.Tensor,
    truth: torch.Tensor,
    classes: int,
) -> float:
    """Accuracy on ``queries`` of the class weights imprinted from ``features``: each class's
    weight is the normalised mean of its normalised features, a query goes to the class of the
    largest cosine (a class without imprinting images has weight 0)."""
    sums = torch.zeros(classes, features.shape[1]).index_add_(
        0, labels, F.normalize(features, dim=1)
    )
    weights = F.normalize(sums, dim=1)
    predicted = (F.normalize(queries, dim=1) @ weights.T).argmax(dim=1)
    return (predicted == truth).float().mean().item()


def ensemble_members(ctx: PlanContext, blocks: list[Candidate]) -> list[Criterion]:
    """The criteria the ensemble ranks by: all, less bn_scale where a scored conv has no BN."""
    gated = {p for block in blocks for p in block.gated}
    members: list[Criterion] = ["taylor_gate", "weight_magnitude", "bn_scale", "imprinting"]
    return [c for c in members if c != "bn_scale" or not _without_bn(ctx, gated)]


def ensemble(scores: list[list[float]]) -> list[float]:
    """Each block's mean over the criteria of its rank (1 = least important; ties share)."""
    ranks = [rankdata(criterion) for criterion in scores]
    return [float(sum(rank[b] for rank in ranks) / len(ranks)) for b in range(len(scores[0]))]


def rank(blocks: list[Candidate], importance: list[float]) -> list[Candidate]:
    """Step 3: the blocks in ascending importance, the least important first (ties: chain order)."""
    return [blocks[b] for b in sorted(range(len(blocks)), key=importance.__getitem__)]


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
    """Candidates → importance → rank → prune the least important first (steps 1-4)."""
    chain = ctx.chain
    blocks = candidates(chain)
    batches = BATCHES.get(ctx.fidelity, config.batches)
    spent = Spent()
    scores = importance(ctx, blocks, config.criterion, batches, spent)
    what = f"layerprune, removing up to all {len(blocks)} candidate blocks"
    plan, removed = walk_ranking(
        rank(blocks, scores), lambda some: prune_plan(chain, some), ctx, budget, what
    )
    meta = {
        "criterion": config.criterion,
        **({"ensemble": ensemble_members(ctx, blocks)} if config.criterion == "ensemble" else {}),
        "candidates": [list(block.units) for block in blocks],
        "importance": scores,
        "removed_blocks": [list(block.units) for block in removed],  # in the order removed
        "search_steps": 0,  # the criteria update no weight
        "search_images": spent.images,
    }
    return MethodResult(plan, meta=meta)
