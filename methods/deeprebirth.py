"""deeprebirth: Li, Wang, Kong, "DeepRebirth: Accelerating Deep Neural Network Execution on Mobile
Devices", AAAI 2018; documented in docs/methods/deeprebirth.md.

The algorithm box, as ``plan_deeprebirth`` runs it:

    input:  base network, latency budget
    1. operations  streamline slimming: a conv and the pool after it become one new conv whose
                   stride absorbs the pool's; a run of convs becomes one new conv (on VGG: two
                   adjacent convs with no pool between them)
                   branch slimming: a block is replaced whole, its skip absorbed by the new conv
                   (ResNet's residual blocks; MobileNetV2's inverted-residual blocks)
    2. greedy      apply operations by largest measured latency saving until the measured
                   latency meets the budget (overlapping operations join into one new conv)
    3. rebirth     bottom to top, one new layer at a time: build it with a standard random
                   initialisation, train the network for a short while with 10x the learning
                   rate on the new layer, and go on from the weights it reached
    returns the plan and the network of step 3, which the shared recipe then fine-tunes

Schedule (``schedule``): under ``compute-matched`` (the default) the layer-wise steps come out of
the shared recipe's: each new layer trains for ``layerwise_epochs``, but all of them together for
at most ``layerwise_share`` of the recipe's steps, and the shared fine-tune runs the rest
(``meta["recipe_steps_used"]``), so DeepRebirth trains for as many steps as every other method.
Under ``paper`` the layer-wise stage comes on top of the shared recipe (``meta["search_steps"]``).

Faithful: pool absorption (stride multiplied, channels kept), new layers from a random
initialisation with a 10x learning rate, slimming and fine-tuning one layer at a time from the
bottom up, a residual block replaced whole as the chain's form of branch slimming.

Interpreted (the paper chooses its layers by hand and has no budget, and no code is public):
- the operations are ranked once, each by the saving it gives alone on the base network (one
  measurement per operation instead of re-measuring every operation after every step); an
  operation measured as no saving still comes last rather than never, so that one noisy
  measurement does not take it out of reach;
- an absorbed pool grows the kernel to k' = K + (k_pool - 1) * S (K + k_pool - 1 for VGG's
  stride-1 convs), padding P + p_pool * S, stride S * s_pool, which keeps the receptive field
  (``suite.core.realize``); the alternative k' = K is not offered;
- the layer-wise fine-tune length is not given in the paper: ``layerwise_epochs`` (1 by
  default) per new layer, with the shared recipe's optimiser settings and a fresh cosine schedule
  from the recipe's lr for each new layer; compute-matched caps the stage at ``layerwise_share``
  (a quarter by default) of the recipe's steps, split evenly over the new layers (a recipe too
  short to give each new layer a step leaves them to the shared fine-tune);
- MobileNetV2 has no pools, so only its 17 blocks can be replaced (each by one new linear conv,
  as the block ends linearly): few budget points, and no steps are invented to add more. The
  replacement of a ResNet block keeps the post-addition ReLU after the new conv.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from suite.core.budget import Budget
from suite.core.chain import Chain
from suite.core.method import MethodResult, PlanContext, walk_ranking
from suite.core.plan import Plan, Replacement
from suite.core.realize import TrainableNetwork, trainable_network
from suite.core.registry import applies_where, register_method
from suite.run.train import finetune, finetune_steps

PAPER = "Li, Wang, Kong, AAAI 2018: DeepRebirth: Accelerating DNN Execution on Mobile Devices"
SMOKE_LAYERWISE_STEPS = 2  # per new layer at smoke fidelity; quick and full: layerwise_epochs

UNSUPPORTED = "it has no pool to absorb, no block and no pair of adjacent convs to replace"


class DeepRebirthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule: Literal["compute-matched", "paper"] = Field(
        "compute-matched",
        description="compute-matched: the layer-wise stage comes out of the shared recipe's steps; "
        "paper: on top of them",
    )
    layerwise_epochs: float = Field(
        1.0, gt=0, description="training per new layer (not given in the paper)"
    )
    layerwise_share: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="compute-matched: the largest share of the recipe's steps the layer-wise stage "
        "takes from the shared fine-tune",
    )
    new_layer_lr_scale: float = Field(10.0, gt=0, description="learning-rate factor of a new layer")


def operations(chain: Chain) -> list[Replacement]:
    """Step 1: every pool absorption, then every block (or, without blocks, adjacent pair)."""
    absorptions = [
        Replacement(p - 1, p, absorb_pool=True) for p in sorted(chain.barriers) if p >= 1
    ]
    blocks = chain.blocks
    if blocks:
        return absorptions + [Replacement(start, end) for start, end in blocks]
    pairs = [
        Replacement(p - 1, p + 1) for p in range(1, chain.L) if chain.is_valid_segment(p - 1, p + 1)
    ]
    return absorptions + pairs


def rank(saving: dict[Replacement, float]) -> list[Replacement]:
    """Step 2's order: the largest measured saving first (ties: chain order)."""
    return sorted(saving, key=lambda op: -saving[op])


def join(replaced: tuple[Replacement, ...], operation: Replacement) -> tuple[Replacement, ...]:
    """Apply ``operation`` to the replacements so far: the ones it overlaps and it become one
    new conv over their union, which absorbs the pool at its end if any of them did."""
    overlapping = [r for r in replaced if r.start < operation.end and operation.start < r.end]
    joined = [operation, *overlapping]
    start, end = min(r.start for r in joined), max(r.end for r in joined)
    absorb = any(r.absorb_pool for r in joined if r.end == end)
    kept = [r for r in replaced if r not in overlapping]
    return tuple(sorted([*kept, Replacement(start, end, absorb)], key=lambda r: r.start))


def rebirth_plan(chain: Chain, replaced: tuple[Replacement, ...]) -> Plan:
    """Each replacement is one merge group; activations inside it go, the one at its end stays."""
    inner = {p for r in replaced for p in range(r.start + 1, r.end)}
    return Plan(
        activations=chain.original_activations - inner,
        boundaries=frozenset(range(1, chain.L + 1)) - inner,
        replaced=replaced,
        method="deeprebirth",
    )


def layerwise_steps(ctx: PlanContext, config: DeepRebirthConfig, layers: int) -> int:
    """Step 3's optimiser steps per new layer, under the configured schedule."""
    if ctx.fidelity == "smoke":
        per_layer = SMOKE_LAYERWISE_STEPS
    else:
        per_epoch = ctx.recipe.model_copy(update={"epochs": config.layerwise_epochs, "steps": None})
        per_layer = finetune_steps(per_epoch, ctx.data.train)
    if config.schedule == "paper":
        return per_layer
    share = math.floor(config.layerwise_share * finetune_steps(ctx.recipe, ctx.data.train))
    return min(per_layer, share // layers)


def layerwise_rebirth(
    ctx: PlanContext, plan: Plan, steps: int, lr_scale: float
) -> TrainableNetwork:
    """Step 3: add the plan's new layers bottom to top, training the network for ``steps`` after
    each, the new layer's learning rate scaled by ``lr_scale``."""
    recipe = ctx.recipe.model_copy(update={"epochs": None, "steps": steps}) if steps else None
    teacher = ctx.traced.model if ctx.recipe.kd_weight > 0 else None
    network = None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)  # the new layers' random initialisation
        for done, new in enumerate(plan.replaced, start=1):
            step = trainable_network(ctx.traced, rebirth_plan(ctx.chain, plan.replaced[:done]))
            if network is not None:
                wanted = step.state_dict().keys()
                reached = {k: v for k, v in network.state_dict().items() if k in wanted}
                step.load_state_dict(reached, strict=False)  # only the new layer starts afresh
            network = step
            if recipe is not None:
                new_layer = network.replacement((new.start, new.end))
                scale = {parameter: lr_scale for parameter in new_layer.parameters()}
                finetune(network, ctx.data, recipe, teacher=teacher, lr_scale=scale)
            ctx.report("deeprebirth layer-wise", done, len(plan.replaced))
    return network


@register_method(
    "deeprebirth",
    config=DeepRebirthConfig,
    paper=PAPER,
    supports=applies_where(operations, UNSUPPORTED),
)
def plan_deeprebirth(ctx: PlanContext, budget: Budget, config: DeepRebirthConfig) -> MethodResult:
    """Operations → greedy by measured saving → layer-wise rebirth of the chosen plan."""
    chain = ctx.chain
    base = ctx.measure_plan(rebirth_plan(chain, ())).median_ms  # screened like the operations
    saving = {
        op: base - ctx.measure_plan(rebirth_plan(chain, (op,))).median_ms
        for op in operations(chain)
    }
    what = f"deeprebirth, applying up to all {len(saving)} operations"
    plan, applied = walk_ranking(
        rank(saving),
        lambda ops: rebirth_plan(chain, functools.reduce(join, ops, ())),
        ctx,
        budget,
        what,
    )
    steps = layerwise_steps(ctx, config, len(plan.replaced)) if plan.replaced else 0
    layerwise = steps * len(plan.replaced)
    extra = layerwise if config.schedule == "paper" else 0
    meta = {
        "savings_ms": [[op.start, op.end, op.absorb_pool, ms] for op, ms in saving.items()],
        "applied": [[op.start, op.end, op.absorb_pool] for op in applied],  # in the order applied
        "schedule": config.schedule,
        "layerwise_steps": layerwise,
        "recipe_steps_used": layerwise - extra,
        "search_steps": extra,
        "search_images": extra * ctx.recipe.batch_size,
    }
    if not plan.replaced:
        return MethodResult(plan, meta=meta)
    network = layerwise_rebirth(ctx, plan, steps, config.new_layer_lr_scale)
    return MethodResult(plan, trainable=network, meta=meta)
