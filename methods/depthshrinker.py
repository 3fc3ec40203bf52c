"""depthshrinker: Fu et al., "DepthShrinker: A New Compression Paradigm Towards Boosting
Real-Hardware Efficiency of Compact Neural Networks", ICML 2022; specification:
docs/baselines-notes.md §1.

The algorithm box, as ``plan_depthshrinker`` runs it:

    input:  base network, its blocks b = 1..N, latency budget
    1. savings    lat_b = latency(base) - latency(base with block b shrunk), both measured
    2. search     keep scores m_b (learnable, in [0, 1]); the k blocks with the highest m_b keep
                  their activations (h_b = 1), the others are linear (h_b = 0):
                      act_b(x) = a_b * σ(x) + (1 - a_b) * x,   a_b = h_b + m_b - sg(m_b)
                      loss     = cross-entropy + λ * Σ_b lat_b * a_b
                  trained with the network for a short run from the base weights
    3. shrink     a linear block's convs merge into one conv, its skip fused, and an activation
                  is appended at the block end (upstream's ADD_FINAL_ACT)
    4. budget     k steps down along the learned ranking (highest m_b kept longest) until the
                  measured latency meets the budget

The search only ranks blocks: its weights are thrown away and the plan is fine-tuned from the base
weights with the shared recipe, as upstream's stage 2 starts from the pretrained network.

Faithful: one mask per block, shared by all its activations; the straight-through top-k; the
shrunk block as one dense conv with its residual fused and an activation appended; the published
patterns A-F (MobileNetV2-1.4, DepthShrinker's configs) and A10-D10 (MobileNetV2-1.0, Kim et al.'s
port), read from ``suite/reference/depthshrinker_mbv2_activation_patterns.csv``.

Interpreted (the notes' proposals):
- the latency regulariser is Kim et al.'s λ·Σ lat_b·a_b on *keep* scores; upstream's
  +λ·Δlat_b·m_b on linearisation scores has the inverted sign (notes §1);
- lat_b is measured end to end under the cell's profile (upstream reads per-block tables);
- upstream fixes k by hand; here the search runs at the k that the savings suggest (shrink the
  fewest blocks whose savings add up to what the budget asks) and k then steps down as above,
  without searching again;
- ResNet: a BasicBlock is the shrink unit (its middle ReLU goes, conv1 and conv2 merge with the
  shortcut embedded; the post-addition ReLU is the appended activation). VGG has no blocks and is
  not supported;
- the search runs ``search_steps`` SGD steps with the shared recipe's optimiser settings, from
  scores of 0.5 clamped to [0, 1] after each step (upstream clamps its ``slope_param`` the same
  way); upstream's optional Gumbel noise and gradual linearisation are left out.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from suite.core.budget import Budget
from suite.core.chain import Chain
from suite.core.method import Infeasible, MethodResult, PlanContext, meet_budget
from suite.core.plan import Plan
from suite.core.realize import ACTIVATIONS, trainable_network
from suite.core.registry import register_method
from suite.errors import DepthbenchError
from suite.measure.profiles import REFERENCE_DIR
from suite.run.train import train_batches

PAPER = (
    "Fu et al., ICML 2022: DepthShrinker, compressing compact networks for real-hardware efficiency"
)
PATTERNS_FILE = REFERENCE_DIR / "depthshrinker_mbv2_activation_patterns.csv"
MOBILENET_V2_BLOCKS = 17
INITIAL_SCORE = 0.5
SMOKE_SEARCH_STEPS = 5

Block = tuple[int, int]  # the segment (start, end] of a block's units
PublishedPattern = Literal["A", "B", "C", "D", "E", "F", "A10", "B10", "C10", "D10"]


class DepthShrinkerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: PublishedPattern | None = Field(
        None,
        description="a published MobileNetV2 pattern instead of a search: A-F (width 1.4) or "
        "A10-D10 (width 1.0); it ignores the budget but is measured against it",
    )
    search_steps: int = Field(500, gt=0, description="SGD steps of the mask search")
    latency_weight: float = Field(1e-4, ge=0, description="λ of the latency regulariser (per ms)")


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


def _supports(chain: Chain) -> str | None:
    if chain.blocks:
        return None
    return (
        "it has no blocks: DepthShrinker decides per inverted-residual (or residual) block, and a "
        "plain chain of convs such as VGG has none"
    )


@register_method("depthshrinker", config=DepthShrinkerConfig, paper=PAPER, supports=_supports)
def plan_depthshrinker(
    ctx: PlanContext, budget: Budget, config: DepthShrinkerConfig
) -> MethodResult:
    """A published pattern, or savings → search → step k down along the ranking."""
    chain = ctx.chain
    blocks = chain.blocks
    if config.pattern is not None:
        return _apply_pattern(ctx, budget, config.pattern, blocks)
    base = ctx.base_latency_ms()
    savings = [
        base - ctx.measure_plan(shrink_plan(chain, blocks, {b})).median_ms
        for b in range(len(blocks))
    ]
    keep = len(blocks) - _blocks_to_shrink(savings, base - ctx.target_ms(budget))
    steps = SMOKE_SEARCH_STEPS if ctx.fidelity == "smoke" else config.search_steps
    scores = search_keep_scores(ctx, blocks, savings, keep, steps, config.latency_weight)
    ranking = sorted(range(len(blocks)), key=lambda b: -scores[b])  # kept longest first

    def shrinking() -> Iterator[Plan]:
        for k in range(len(blocks), -1, -1):
            yield shrink_plan(chain, blocks, set(ranking[k:]))

    plan = meet_budget(
        shrinking(), ctx, budget, "depthshrinker, shrinking blocks along the learned ranking"
    )
    meta = {
        "block_savings_ms": savings,
        "search_keep": keep,
        "keep_scores": scores,
        "ranking": ranking,
    }
    return MethodResult(plan, meta=meta)


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
    kept = published_pattern(pattern)
    plan = shrink_plan(chain, blocks, set(range(len(blocks))) - kept)
    latency, target = ctx.measure_plan(plan).median_ms, ctx.target_ms(budget)
    if latency > target:
        raise Infeasible(
            f"depthshrinker pattern {pattern} measures {latency:.3f} ms under {ctx.profile.name}, "
            f"above the budget {target:.3f} ms (a published pattern is fixed and cannot be "
            "shrunk further)"
        )
    return MethodResult(
        plan, meta={"pattern": pattern, "kept_blocks": sorted(kept), "latency_ms": latency}
    )


def _blocks_to_shrink(savings: list[float], needed_ms: float) -> int:
    """The fewest blocks whose savings add up to ``needed_ms`` (all of them if none do)."""
    total, count = 0.0, 0
    for saving in sorted(savings, reverse=True):
        if total >= needed_ms:
            break
        total, count = total + saving, count + 1
    return count


def search_keep_scores(
    ctx: PlanContext,
    blocks: list[Block],
    savings: list[float],
    keep: int,
    steps: int,
    latency_weight: float,
) -> list[float]:
    """Step 2: train a copy of the base network with masked activations; the keep score m_b of
    every block afterwards."""
    chain = ctx.chain
    inner = {p: b for b, (start, end) in enumerate(blocks) for p in range(start + 1, end)}
    # The inner activations leave the plan and come back as masked activations right after their
    # unit: no residual addition ends inside a block, so that is where the plan applies them.
    linear = Plan(chain.original_activations - inner.keys(), frozenset(range(1, chain.L + 1)))
    recipe = ctx.recipe
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        network = trainable_network(ctx.traced, linear).to(recipe.placement.device).train()
        mask = _TopKMask(len(blocks), keep).to(recipe.placement.device)
        activation = ACTIVATIONS[chain.act_kind]()
        for position, block in inner.items():
            network.units[str(position)].register_forward_hook(_masked(mask, block, activation))
        optimizer = torch.optim.SGD(
            [
                {"params": network.parameters(), "weight_decay": recipe.weight_decay},
                {"params": mask.parameters(), "weight_decay": 0.0},
            ],
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov,
        )
        latency = torch.tensor(savings, device=recipe.placement.device)
        loader = train_batches(ctx.data.train, recipe, ctx.seed)
        batches = itertools.chain.from_iterable(itertools.repeat(loader))
        for step, (images, labels) in enumerate(itertools.islice(batches, steps), start=1):
            loss = (
                F.cross_entropy(network(images), labels) + latency_weight * (latency * mask()).sum()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                mask.scores.clamp_(0.0, 1.0)
            ctx.report("depthshrinker search", step, steps)
    return mask.scores.detach().tolist()


class _TopKMask(nn.Module):
    """Keep scores m and the straight-through top-k gate a = h + m - sg(m): its value is the hard
    mask h (1 for the ``keep`` highest scores), its gradient reaches m."""

    def __init__(self, blocks: int, keep: int) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.full((blocks,), INITIAL_SCORE))
        self.keep = keep

    def forward(self) -> torch.Tensor:
        hard = torch.zeros_like(self.scores)
        hard[self.scores.topk(self.keep).indices] = 1.0
        return hard + self.scores - self.scores.detach()


def _masked(mask: _TopKMask, block: int, activation: nn.Module):
    """A forward hook that applies block ``block``'s masked activation to a unit's output."""

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        gate = mask()[block]
        return gate * activation(output) + (1 - gate) * output

    return hook
