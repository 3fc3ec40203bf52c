"""relu-reduction: Kundu, Zhang, Chen, Beerel, "Making Models Shallow Again: Jointly Learning to
Reduce Non-Linearity and Depth for Latency-Efficient Private Inference", CVPRW 2023;
documented in docs/methods/relu-reduction.md.

The algorithm box, as ``plan_relu_reduction`` runs it:

    input:  base network, latency budget, held-out training images
    1. candidates   the activations inside blocks: a BasicBlock's middle ReLU, either ReLU6 of a
                    MobileNetV2 block, a VGG ReLU with no pool after it; never the ReLU after a
                    residual addition
    2. score        criterion "sensitivity" (default):
                        s_p = loss(shallow plan without the activation at p) - loss(base)
                    on a class-stratified sample of the held-out images, without fine-tuning;
                    criterion "learned-alpha" (SENet-style):
                        act_p(x) = α_p · σ(x) + (1 - α_p) · x,  α_p ∈ [0, 1] from 1,
                        loss = cross-entropy + λ · Σ_p α_p,  s_p = α_p after the training
    3. shallow      remove activations in ascending s_p; the convs on both sides of a removed
                    activation merge into one (through consecutive removals) — until the
                    measured latency meets the budget; if the candidates run out first, the
                    budget is infeasible (the search space is not extended)

Faithful: block-level ReLU sensitivity deciding which ReLU goes, and the merge of the convs around
it into a shallow block. The paper's formulas could not be checked (no code, no full text), so:

Interpreted:
- sensitivity is the held-out loss increase of the network the cell would fine-tune with that one
  activation removed: its shallow plan, the merged convs' padding moved to the first of them;
  measured on ``holdout_images`` images drawn class-stratified (seeded) from the suite's holdout
  split (a fixed 10k-image held-out part of the training images);
- the learned-α variant gives each candidate one scalar gate (SENet learns them per pixel) on the
  base network, trained with the shared recipe's optimiser for ``alpha_epochs`` (one); the gate
  is α clamped to [0, 1] in the forward pass with a straight-through gradient (α starts at 1,
  where a plain clamp passes no gradient), and the raw α are ranked;
- the merge is exact (the suite's merge); the paper's reported drop in linear operations suggests
  a private-inference cost model or an inexact shallow block, which stays unresolved;
- the distillation of the paper is the shared recipe's KD setting, the same for every method.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset

from methods.depthshrinker import train_gates
from suite.core.budget import Budget, Fidelity
from suite.core.chain import Chain
from suite.core.method import MethodResult, PlanContext, walk_ranking
from suite.core.plan import Plan
from suite.core.realize import trainable_network
from suite.core.registry import applies_where, register_method
from suite.run.data import stratified_subset, train_loader
from suite.run.train import evaluate

PAPER = "Kundu et al., CVPRW 2023: Making Models Shallow Again (ReLU sensitivity, shallow blocks)"
# Step 2's effort below full fidelity (full: the config's holdout_images and alpha_epochs).
SMOKE_HOLDOUT_IMAGES = 256
QUICK_HOLDOUT_IMAGES = 2_000  # at most; a class-stratified sample like full's
SMOKE_ALPHA_STEPS = 5
QUICK_ALPHA_EPOCHS = 1.0  # at most: the default alpha_epochs, a cheap search already

UNSUPPORTED = "it has no activation inside a block that a merge could remove"


class ReluReductionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    criterion: Literal["sensitivity", "learned-alpha"] = Field(
        "sensitivity",
        description="how candidates are ranked: the held-out loss increase of removing each "
        "alone, or a learned per-activation gate α (SENet-style)",
    )
    holdout_images: int = Field(
        10_000, gt=0, description="held-out images the sensitivity is measured on (stratified)"
    )
    batch_size: int = Field(256, gt=0, description="evaluation batch size")
    alpha_epochs: float = Field(
        1.0, gt=0, description="epochs of the training split the learned-α gates train for"
    )
    alpha_penalty: float = Field(1e-3, ge=0, description="λ of the L1 penalty on the gates α")


def candidates(chain: Chain) -> list[int]:
    """Step 1: positions of the activations inside blocks (see the module docstring).

    An activation after a residual addition, or followed by a pool (no merge crosses a pool), or
    at the chain's end (nothing follows to merge with) is not a candidate.
    """
    additions = {r.target for r in chain.residuals}
    return sorted(
        p
        for p in chain.original_activations
        if p < chain.L and p not in chain.barriers and p not in additions
    )


def sensitivity_holdout(ctx: PlanContext, config: ReluReductionConfig) -> Dataset:
    """The held-out images step 2 scores on: a seeded, class-stratified sample of the holdout
    (ImageFolder lists images class by class, so its first images would be a few classes)."""
    images = holdout_images(ctx.fidelity, config)
    return stratified_subset(ctx.data.holdout, images, ctx.seed)


def sensitivities(
    ctx: PlanContext, positions: list[int], config: ReluReductionConfig
) -> list[float]:
    """Step 2 (sensitivity): the held-out loss increase of each candidate's shallow plan, as the
    cell would fine-tune it (merged convs' padding on the first of them), over the base network."""
    holdout = sensitivity_holdout(ctx, config)

    def loss(plan: Plan) -> float:
        network = trainable_network(ctx.traced, plan)
        return evaluate(network, holdout, config.batch_size, ctx.recipe.placement).loss

    base = loss(Plan.original(ctx.chain))
    result = []
    for done, p in enumerate(positions, start=1):
        result.append(loss(shallow_plan(ctx.chain, {p})) - base)
        ctx.report("relu-reduction sensitivity", done, len(positions))
    return result


def learned_alphas(
    ctx: PlanContext, positions: list[int], config: ReluReductionConfig
) -> tuple[list[float], dict[str, int]]:
    """Step 2 (learned-alpha): one gate α_p per candidate, from 1 (the base network), trained with
    the network on cross-entropy + λ Σ α_p; returns the raw α_p and the training's cost."""
    alpha = nn.Parameter(torch.ones(len(positions)))

    def gates() -> torch.Tensor:
        # α clamped to [0, 1] with its gradient passed straight through: α starts at 1, where
        # a plain clamp passes no gradient
        return alpha + (alpha.clamp(0.0, 1.0) - alpha).detach()

    def penalty() -> torch.Tensor:
        return config.alpha_penalty * gates().sum()

    steps = alpha_steps(ctx, config)
    gated = {p: index for index, p in enumerate(positions)}
    cost = train_gates(ctx, gated, gates, alpha, penalty, steps, "relu-reduction learned α")
    return alpha.detach().tolist(), cost


def shallow_plan(chain: Chain, removed: set[int]) -> Plan:
    """Step 3's plan: the activations in ``removed`` gone, and with them the merge boundary at
    each, wherever the merge group that results stays valid (so consecutive removals chain)."""
    boundaries = set(range(1, chain.L + 1))
    for p in sorted(removed):
        before = max((b for b in boundaries if b < p), default=0)
        after = min(b for b in boundaries if b > p)
        if chain.is_valid_segment(before, after):
            boundaries.discard(p)
    return Plan(
        chain.original_activations - removed, frozenset(boundaries), method="relu-reduction"
    )


@register_method(
    "relu-reduction",
    config=ReluReductionConfig,
    paper=PAPER,
    supports=applies_where(candidates, UNSUPPORTED),
)
def plan_relu_reduction(
    ctx: PlanContext, budget: Budget, config: ReluReductionConfig
) -> MethodResult:
    """Candidates → scores → remove in ascending score until the budget is met."""
    chain = ctx.chain
    positions = candidates(chain)
    if config.criterion == "sensitivity":
        scores = sensitivities(ctx, positions, config)
        cost = {
            "search_steps": 0,
            "search_images": (len(positions) + 1) * len(sensitivity_holdout(ctx, config)),
        }
    else:
        scores, cost = learned_alphas(ctx, positions, config)
    ranking = [p for _, p in sorted(zip(scores, positions, strict=True))]  # least needed first
    what = f"relu-reduction, removing up to all {len(ranking)} candidate activations"
    plan, removed = walk_ranking(
        ranking, lambda some: shallow_plan(chain, set(some)), ctx, budget, what
    )
    meta = {
        "criterion": config.criterion,
        "candidates": positions,
        "scores": scores,
        "removed": list(removed),
        **cost,
    }
    return MethodResult(plan, meta=meta)


def holdout_images(fidelity: Fidelity, config: ReluReductionConfig) -> int:
    """The sensitivity's sample size by fidelity (the holdout split may hold fewer)."""
    return {
        "smoke": SMOKE_HOLDOUT_IMAGES,
        "quick": min(QUICK_HOLDOUT_IMAGES, config.holdout_images),
        "full": config.holdout_images,
    }[fidelity]


def alpha_steps(ctx: PlanContext, config: ReluReductionConfig) -> int:
    """The learned-α training's length by fidelity, in batches of the recipe's size."""
    if ctx.fidelity == "smoke":
        return SMOKE_ALPHA_STEPS
    epochs = {"quick": min(QUICK_ALPHA_EPOCHS, config.alpha_epochs), "full": config.alpha_epochs}
    batches = len(train_loader(ctx.data.train, ctx.recipe.batch_size, ctx.seed))
    return math.ceil(epochs[ctx.fidelity] * batches)
