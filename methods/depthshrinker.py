"""depthshrinker: Fu et al., "DepthShrinker: A New Compression Paradigm Towards Boosting
Real-Hardware Efficiency of Compact Neural Networks", ICML 2022; documented in
docs/methods/depthshrinker.md.

The algorithm box, as ``plan_depthshrinker`` runs it:

    input:  base network, its blocks b = 1..N, latency budget
    1. savings    lat_b = 1000 · (latency(base) - latency(base with block b shrunk)) / latency(base),
                  both measured: per mille of the base latency
    2. search     keep scores m_b (learnable, from 0.5); the k blocks with the highest m_b keep
                  their activations (h_b = 1), the others are linear (h_b = 0):
                      act_b(x) = a_b · σ(x) + (1 - a_b) · x,   a_b = h_b + c_b - sg(c_b),
                      c_b = clamp(m_b, 0, 1)
                      loss     = cross-entropy + λ · Σ_b lat_b · a_b
                  trained with the network from the base weights for one epoch of the training data
    3. shrink     a linear block's convs merge into one conv, its skip fused, and an activation
                  is appended at the block end (upstream's ADD_FINAL_ACT)
    4. budget     k steps down along the ranking by raw m_b (highest kept longest) until the
                  measured latency meets the budget

The search only ranks blocks: its weights are thrown away and the plan is fine-tuned from the base
weights with the shared recipe, as upstream's stage 2 starts from the pretrained network.

Faithful: one mask per block, shared by all its activations; the straight-through top-k with the
score clamped to [0, 1] in the forward pass and the raw scores ranked (upstream's ``slope_param``);
the shrunk block as one dense conv with its residual fused and an activation appended; the
published patterns A-F (MobileNetV2-1.4, DepthShrinker's configs) and A10-D10 (MobileNetV2-1.0,
Kim et al.'s port), read from ``suite/reference/depthshrinker_mbv2_activation_patterns.csv``.

Interpreted:
- the latency regulariser is Kim et al.'s λ·Σ lat_b·a_b on *keep* gates; upstream's
  +λ·Δlat_b·m_b on linearisation scores has the inverted sign;
- lat_b is measured end to end under the cell's profile and expressed per mille of the base
  latency, so that λ = 1e-4 weighs savings of the size of upstream's per-block tables (about
  7-133 units) whatever the network's speed; upstream reads its tables from its configs;
- upstream fixes k by hand; here the search runs at the k that the savings suggest (shrink the
  fewest blocks whose savings add up to what the budget asks) and k then steps down as above,
  without searching again;
- upstream searches during its whole training run; here the search is ``search_epochs`` (one) of
  the training split with the shared recipe's optimiser settings at a constant learning rate;
  upstream's optional Gumbel noise and gradual linearisation are left out;
- the stem's activation stays (Kim et al.'s port; the stem is outside the chain): DepthShrinker's
  own configs for patterns A, D and E also linearise it;
- ResNet: a BasicBlock is the shrink unit (its middle ReLU goes, conv1 and conv2 merge with the
  shortcut embedded; the post-addition ReLU is the appended activation). VGG has no blocks and is
  not supported.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from suite.core.budget import Budget
from suite.core.chain import Chain
from suite.core.method import Infeasible, MethodResult, PlanContext, walk_ranking
from suite.core.plan import Plan
from suite.core.realize import ACTIVATIONS, trainable_network
from suite.core.registry import applies_where, register_method
from suite.errors import DepthbenchError
from suite.measure.profiles import REFERENCE_DIR
from suite.run.data import train_loader
from suite.run.train import train_batches

PAPER = (
    "Fu et al., ICML 2022: DepthShrinker, compressing compact networks for real-hardware efficiency"
)
PATTERNS_FILE = REFERENCE_DIR / "depthshrinker_mbv2_activation_patterns.csv"
MOBILENET_V2_BLOCKS = 17
# The stem's output channels of MobileNetV2 at the widths the patterns were published for.
STEM_CHANNELS = {1.4: 48, 1.0: 32}
INITIAL_SCORE = 0.5
SMOKE_SEARCH_STEPS = 5
QUICK_SEARCH_EPOCHS = 1.0  # at least one epoch of the training split, whatever search_epochs says
UNSUPPORTED = (
    "it has no blocks: DepthShrinker decides per inverted-residual (or residual) block, and a "
    "plain chain of convs such as VGG has none"
)

Block = tuple[int, int]  # the segment (start, end] of a block's units
PublishedPattern = Literal["A", "B", "C", "D", "E", "F", "A10", "B10", "C10", "D10"]


class PatternWidthWarning(UserWarning):
    """A published pattern applied to a MobileNetV2 of another width than it was searched for."""


class DepthShrinkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: PublishedPattern | None = Field(
        None,
        description="a published MobileNetV2 pattern instead of a search: A-F (width 1.4) or "
        "A10-D10 (width 1.0); it ignores the budget but is measured against it",
    )
    search_epochs: float = Field(
        1.0, gt=0, description="epochs of the training split the mask search trains for"
    )
    latency_weight: float = Field(
        1e-4, ge=0, description="λ of the latency regulariser, per per-mille of base latency saved"
    )


def shrink_plan(chain: Chain, blocks: list[Block], shrunk: set[int]) -> Plan:
    """Every block in ``shrunk`` (indices into ``blocks``) as one merge group with an activation at
    its end; every other block as in the base network."""
    inner = {p for b in shrunk for p in range(blocks[b][0] + 1, blocks[b][1])}
    ends = {blocks[b][1] for b in shrunk}
    return Plan(
        activations=(chain.original_activations - inner) | ends,
        boundaries=frozenset(range(1, chain.L + 1)) - inner,
        method="depthshrinker",
        meta={"shrunk_blocks": sorted(shrunk)},
    )


def published_pattern(name: str) -> frozenset[int]:
    """The 0-based MobileNetV2 blocks that keep their activations in a published pattern."""
    patterns = pd.read_csv(PATTERNS_FILE, dtype=str, keep_default_na=False).set_index("pattern")
    kept = patterns.loc[name, "kept_ir_blocks_0based"]
    return frozenset(int(b) for b in kept.split(";") if b)


@register_method(
    "depthshrinker",
    config=DepthShrinkerConfig,
    paper=PAPER,
    supports=applies_where(lambda chain: chain.blocks, UNSUPPORTED),
)
def plan_depthshrinker(
    ctx: PlanContext, budget: Budget, config: DepthShrinkerConfig
) -> MethodResult:
    """A published pattern, or savings → search → step k down along the ranking."""
    chain = ctx.chain
    blocks = chain.blocks
    if config.pattern is not None:
        return _apply_pattern(ctx, budget, config.pattern, blocks)
    savings = block_savings(ctx, blocks)
    needed = 1000 * (1 - ctx.target_ms(budget) / ctx.base_latency_ms())
    keep = len(blocks) - _blocks_to_shrink(savings, needed)
    steps = search_steps(ctx, config)
    scores, cost = search_keep_scores(ctx, blocks, savings, keep, steps, config.latency_weight)
    ranking = keep_ranking(scores)
    what = "depthshrinker, shrinking blocks along the learned ranking"
    plan, _ = walk_ranking(  # k steps down: the block kept shortest is shrunk first
        ranking[::-1], lambda some: shrink_plan(chain, blocks, set(some)), ctx, budget, what
    )
    meta = {
        "block_savings_per_mille": savings,
        "search_keep": keep,
        "keep_scores": scores,
        "ranking": ranking,
        **cost,
    }
    return MethodResult(plan, meta=meta)


def block_savings(ctx: PlanContext, blocks: list[Block]) -> list[float]:
    """Step 1: what shrinking each block alone saves, per mille of the measured base latency."""
    base = ctx.base_latency_ms()
    shrunk = [
        ctx.measure_plan(shrink_plan(ctx.chain, blocks, {b})).median_ms for b in range(len(blocks))
    ]
    return [1000 * (base - latency) / base for latency in shrunk]


def keep_ranking(scores: list[float]) -> list[int]:
    """Step 4's order: blocks by descending raw keep score, the block kept longest first."""
    return sorted(range(len(scores)), key=lambda b: -scores[b])


def _apply_pattern(
    ctx: PlanContext, budget: Budget, pattern: str, blocks: list[Block]
) -> MethodResult:
    chain = ctx.chain
    if len(blocks) != MOBILENET_V2_BLOCKS or not chain.block_ends:
        raise DepthbenchError(
            f"depthshrinker pattern {pattern!r} names MobileNetV2's {MOBILENET_V2_BLOCKS} "
            f"inverted-residual blocks, but {chain.name} is not a MobileNetV2; leave 'pattern' "
            "unset to search instead"
        )
    warn_on_pattern_width(chain, pattern)
    kept = published_pattern(pattern)
    plan = shrink_plan(chain, blocks, set(range(len(blocks))) - kept)
    latency, target = ctx.measure_plan(plan).median_ms, ctx.target_ms(budget)
    if latency > target:
        raise Infeasible(
            f"depthshrinker pattern {pattern} measures {latency:.3f} ms under {ctx.profile.name}, "
            f"above the budget {target:.3f} ms (a published pattern is fixed and cannot be "
            "shrunk further)"
        )
    meta = {
        "pattern": pattern,
        "kept_blocks": sorted(kept),
        "latency_ms": latency,
        "search_steps": 0,
        "search_images": 0,
    }
    return MethodResult(plan, meta=meta)


def warn_on_pattern_width(chain: Chain, pattern: str) -> None:
    """Patterns A-F were searched on MobileNetV2-1.4, A10-D10 on MobileNetV2-1.0."""
    width = 1.0 if pattern.endswith("10") else 1.4
    channels = chain.unit(1).conv.in_channels
    if channels != STEM_CHANNELS[width]:
        warnings.warn(
            PatternWidthWarning(
                f"depthshrinker pattern {pattern} was searched on MobileNetV2-{width:.1f} "
                f"({STEM_CHANNELS[width]} stem channels), but {chain.name} has {channels}: the "
                "pattern is applied as published, not searched for this network; leave "
                "'pattern' unset to search"
            ),
            stacklevel=2,
        )


def _blocks_to_shrink(savings: list[float], needed: float) -> int:
    """The fewest blocks whose savings add up to ``needed`` (all of them if none do)."""
    total, count = 0.0, 0
    for saving in sorted(savings, reverse=True):
        if total >= needed:
            break
        total, count = total + saving, count + 1
    return count


def search_steps(ctx: PlanContext, config: DepthShrinkerConfig) -> int:
    """Step 2's length by fidelity: ``SMOKE_SEARCH_STEPS`` (smoke), ``QUICK_SEARCH_EPOCHS`` of
    the training split (quick), ``search_epochs`` of it (full), in batches of the recipe's size."""
    if ctx.fidelity == "smoke":
        return SMOKE_SEARCH_STEPS
    epochs = {"quick": QUICK_SEARCH_EPOCHS, "full": config.search_epochs}[ctx.fidelity]
    batches = len(train_loader(ctx.data.train, ctx.recipe.batch_size, ctx.seed))
    return math.ceil(epochs * batches)


def search_keep_scores(
    ctx: PlanContext,
    blocks: list[Block],
    savings: list[float],
    keep: int,
    steps: int,
    latency_weight: float,
) -> tuple[list[float], dict[str, int]]:
    """Step 2: train a copy of the base network with masked activations; the raw keep score m_b
    of every block afterwards, and what the search cost."""
    inner = {p: b for b, (start, end) in enumerate(blocks) for p in range(start + 1, end)}
    mask = _TopKMask(len(blocks), keep).to(ctx.recipe.placement.device)
    latency = torch.tensor(savings, device=ctx.recipe.placement.device)

    def penalty() -> torch.Tensor:
        return latency_weight * (latency * mask()).sum()

    cost = train_gates(ctx, inner, mask, mask.scores, penalty, steps, "depthshrinker search")
    return mask.scores.detach().tolist(), cost


def train_gates(
    ctx: PlanContext,
    gated: dict[int, int],
    gates: Callable[[], torch.Tensor],
    scores: nn.Parameter,
    penalty: Callable[[], torch.Tensor],
    steps: int,
    what: str,
) -> dict[str, int]:
    """Train a copy of the base network whose activation after each unit p of ``gated`` is
    g · σ(x) + (1 - g) · x with g = ``gates()[gated[p]]``, together with ``scores``, for ``steps``
    SGD steps of cross-entropy + ``penalty()`` on the training split (the shared recipe's lr,
    momentum, Nesterov and batch size; weight decay on the network, none on the scores).

    Returns the cost: ``search_steps`` and ``search_images`` (training images seen).
    """
    chain = ctx.chain
    # The gated activations leave the plan and come back as gated activations right after their
    # unit: none follows a residual addition, so that is where the plan applies them.
    linear = Plan(chain.original_activations - gated.keys(), frozenset(range(1, chain.L + 1)))
    recipe = ctx.recipe
    images_seen = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        network = trainable_network(ctx.traced, linear).to(recipe.placement.device).train()
        scores.data = scores.data.to(recipe.placement.device)  # the same parameter, on the device
        activation = ACTIVATIONS[chain.act_kind]()
        for position, index in gated.items():
            network.unit(position).register_forward_hook(_gated(gates, index, activation))
        optimizer = torch.optim.SGD(
            [
                {"params": network.parameters(), "weight_decay": recipe.weight_decay},
                {"params": [scores], "weight_decay": 0.0},
            ],
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
        )
        loader = train_batches(ctx.data.train, recipe, ctx.seed)
        batches = itertools.chain.from_iterable(itertools.repeat(loader))
        for step, (images, labels) in enumerate(itertools.islice(batches, steps), start=1):
            loss = F.cross_entropy(network(images), labels) + penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images_seen += len(labels)
            ctx.report(what, step, steps)
    return {"search_steps": steps, "search_images": images_seen}


class _TopKMask(nn.Module):
    """Keep scores m and the straight-through top-k gate a = h + c - sg(c), c = clamp(m, 0, 1):
    its value is the hard mask h (1 for the ``keep`` highest raw scores), its gradient reaches m
    while m is within [0, 1] (upstream's ``torch.clamp`` of ``slope_param``)."""

    def __init__(self, blocks: int, keep: int) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.full((blocks,), INITIAL_SCORE))
        self.keep = keep

    def forward(self) -> torch.Tensor:
        hard = torch.zeros_like(self.scores)
        hard[self.scores.topk(self.keep).indices] = 1.0
        clamped = self.scores.clamp(0.0, 1.0)
        return hard + clamped - clamped.detach()


def _gated(gates: Callable[[], torch.Tensor], index: int, activation: nn.Module):
    """A forward hook that applies gate ``index`` of ``gates()`` to a unit's activation."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        gate = gates()[index]
        return gate * activation(output) + (1 - gate) * output

    return hook
