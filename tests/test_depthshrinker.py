"""DepthShrinker's own steps: savings per mille of the base latency, the mask clamped in the
forward pass, raw scores ranked and shrunk in ascending order, a latency term that matters at the
default λ, the search's cost, and the warning for a pattern of another width.

The networks (fixture ``networks``), data and profile are ``tests/test_baselines.py``'s.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torchvision.models import mobilenet_v2

import methods.depthshrinker as depthshrinker
from methods.depthshrinker import (
    DepthShrinkerConfig,
    PatternWidthWarning,
    _TopKMask,
    keep_ranking,
    search_keep_scores,
    shrink_plan,
    warn_on_pattern_width,
)
from suite.core.budget import Budget
from suite.core.trace import trace
from tests.test_baselines import contexts, data, plan_with, profile  # noqa: F401 (fixtures)

GENEROUS = Budget(kind="ms", value=1e6)  # met by the base network: the walk measures only it


@pytest.fixture(scope="module")
def networks(contexts):  # noqa: F811 (test_baselines' fixture, by its name)
    return contexts


def test_savings_are_per_mille_of_the_base_latency_and_the_search_cost_is_reported(networks):
    ctx = networks("resnet18")

    meta = plan_with(ctx, "depthshrinker", GENEROUS).meta

    base, blocks = ctx.base_latency_ms(), ctx.chain.blocks
    for b, saving in enumerate(meta["block_savings_per_mille"]):
        shrunk = ctx.measure_plan(shrink_plan(ctx.chain, blocks, {b})).median_ms
        assert saving == pytest.approx(1000 * (base - shrunk) / base)
    assert (meta["search_steps"], meta["search_images"]) == (2, 2 * 32)  # 0.05 of 40 batches


def test_blocks_are_shrunk_in_ascending_raw_keep_score(networks, monkeypatch):
    """Controlled scores in place of the search, two above 1 and two below 0 in the opposite
    order of their indices: clamped, they would tie and fall back to index order."""
    ctx = networks("resnet18")
    scores = [1.1, 0.2, 1.3, -0.1, 0.6, 0.9, -0.4, 0.5]
    monkeypatch.setattr(depthshrinker, "search_keep_scores", lambda *_: (scores, {}))
    walked = []
    walk = depthshrinker.walk_ranking

    def spy(ranking, *args):
        walked.append(list(ranking))
        return walk(ranking, *args)

    monkeypatch.setattr(depthshrinker, "walk_ranking", spy)

    meta = plan_with(ctx, "depthshrinker", GENEROUS).meta

    assert walked == [[6, 3, 1, 7, 4, 5, 0, 2]]  # the lowest keep score is shrunk first
    assert meta["ranking"] == [2, 0, 5, 4, 7, 1, 3, 6]
    assert keep_ranking(scores) == meta["ranking"]


def test_mask_value_is_the_hard_top_k_and_its_gradient_stops_outside_0_1():
    mask = _TopKMask(4, keep=2)
    with torch.no_grad():
        mask.scores.copy_(torch.tensor([1.3, 0.5, -0.2, 0.9]))
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0])

    gate = mask()
    (weights * gate).sum().backward()

    assert gate.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert mask.scores.grad.tolist() == [0.0, 2.0, 0.0, 4.0]


def test_the_default_latency_weight_moves_a_block_whose_saving_dominates(networks):
    """At λ = 0 the savings play no part. The block in the middle of that ranking is given a
    saving of 600 per mille (the others 20): at the default λ it must be shrunk earlier. Savings in
    ms of a fast network (a few thousandths) would leave the ranking as it is."""
    ctx = networks("resnet18")
    blocks = ctx.chain.blocks
    keep, steps = len(blocks) // 2, 10
    flat = [20.0] * len(blocks)
    unweighted = keep_ranking(search_keep_scores(ctx, blocks, flat, keep, steps, 0.0)[0])
    block = unweighted[len(blocks) // 2]
    savings = [600.0 if b == block else 20.0 for b in range(len(blocks))]

    default = DepthShrinkerConfig().latency_weight
    weighted = keep_ranking(search_keep_scores(ctx, blocks, savings, keep, steps, default)[0])

    assert weighted.index(block) > unweighted.index(block)


def test_a_pattern_on_a_network_of_another_width_warns():
    def chain(width: float):
        return trace(mobilenet_v2(width_mult=width, num_classes=10), 32, "mobilenet_v2").chain

    with pytest.warns(PatternWidthWarning, match="MobileNetV2-1.4 .48 stem channels.*has 16"):
        warn_on_pattern_width(chain(0.35), "A")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_on_pattern_width(chain(1.4), "A")
        warn_on_pattern_width(chain(1.0), "A10")
