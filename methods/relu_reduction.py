"""relu-reduction: Kundu, Zhang, Chen, Beerel, "Making Models Shallow Again: Jointly Learning to
Reduce Non-Linearity and Depth for Latency-Efficient Private Inference", CVPRW 2023;
specification: docs/baselines-notes.md §4.

The algorithm box, as ``plan_relu_reduction`` runs it:

    input:  base network, latency budget, held-out training images
    1. candidates   the activations inside blocks: a BasicBlock's middle ReLU, either ReLU6 of a
                    MobileNetV2 block, a VGG ReLU with no pool after it; never the ReLU after a
                    residual addition
    2. sensitivity  s_p = loss(base with the activation at p linearised) - loss(base), on the
                    held-out images, without fine-tuning
    3. shallow      remove activations in ascending s_p; the convs on both sides of a removed
                    activation merge into one (through consecutive removals) — until the
                    measured latency meets the budget; if the candidates run out first, the
                    budget is infeasible (the search space is not extended)

Faithful: block-level ReLU sensitivity deciding which ReLU goes, and the merge of the convs around
it into a shallow block. The paper's formulas could not be checked (no code, no full text; notes
§4), so the rest follows the notes' defaults:

Interpreted:
- sensitivity is the held-out loss increase with one candidate linearised (the notes' default;
  the SENet-style learned α is not implemented), on at most ``holdout_images`` images of the
  suite's holdout split (the notes propose a fixed 10k-image split of the training images);
- the merge is exact (the suite's merge); the paper's reported drop in linear operations suggests
  a private-inference cost model or an inexact shallow block, which the notes leave unresolved;
- the distillation of the paper is the shared recipe's KD setting, the same for every method.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Subset

from suite.core.budget import Budget
from suite.core.chain import Chain
from suite.core.method import MethodResult, PlanContext, meet_budget
from suite.core.plan import Plan
from suite.core.realize import trainable_network
from suite.core.registry import register_method
from suite.run.train import evaluate

PAPER = "Kundu et al., CVPRW 2023: Making Models Shallow Again (ReLU sensitivity, shallow blocks)"
SMOKE_HOLDOUT_IMAGES = 256


class ReluReductionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    holdout_images: int = Field(
        10_000, gt=0, description="held-out training images the sensitivity is measured on"
    )
    batch_size: int = Field(256, gt=0, description="evaluation batch size")


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


def sensitivities(
    ctx: PlanContext, positions: list[int], config: ReluReductionConfig
) -> list[float]:
    """Step 2: the held-out loss increase of linearising each activation alone."""
    chain = ctx.chain
    images = SMOKE_HOLDOUT_IMAGES if ctx.fidelity == "smoke" else config.holdout_images
    holdout = Subset(ctx.data.holdout, range(min(images, len(ctx.data.holdout))))
    every_unit = frozenset(range(1, chain.L + 1))

    def loss(activations: frozenset[int]) -> float:
        network = trainable_network(ctx.traced, Plan(activations, every_unit))
        return evaluate(network, holdout, config.batch_size, ctx.recipe.placement).loss

    base = loss(chain.original_activations)
    result = []
    for done, p in enumerate(positions, start=1):
        result.append(loss(chain.original_activations - {p}) - base)
        ctx.report("relu-reduction sensitivity", done, len(positions))
    return result


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


def _supports(chain: Chain) -> str | None:
    if candidates(chain):
        return None
    return "it has no activation inside a block that a merge could remove"


@register_method("relu-reduction", config=ReluReductionConfig, paper=PAPER, supports=_supports)
def plan_relu_reduction(
    ctx: PlanContext, budget: Budget, config: ReluReductionConfig
) -> MethodResult:
    """Candidates → sensitivity → remove in ascending sensitivity until the budget is met."""
    chain = ctx.chain
    positions = candidates(chain)
    sensitivity = sensitivities(ctx, positions, config)
    ranking = [p for _, p in sorted(zip(sensitivity, positions, strict=True))]

    def shallower() -> Iterator[Plan]:
        for count in range(len(ranking) + 1):
            yield shallow_plan(chain, set(ranking[:count]))

    what = f"relu-reduction, removing up to all {len(ranking)} candidate activations"
    plan = meet_budget(shallower(), ctx, budget, what)
    meta = {
        "candidates": positions,
        "sensitivity": sensitivity,
        "removed": [p for p in ranking if p not in plan.activations],
    }
    return MethodResult(plan, meta=meta)
