"""LayerMerge's table entries and plans against the official code's counts and rules.

- Enumeration: the entry counts of upstream's tables (MobileNetV2-1.0/-1.4: 171 segments, 391
  entries; ResNet-34: 62 segments, 150 entries, plus the suite's stem segment), per-segment
  option histograms, largest kernels, prunable convs and spot-checked option lists.
- The L1 rule against upstream's exhaustive search (``itertools.combinations``, strict ``>``),
  with integer norms that tie.
- Plans: the official demo plan of MobileNetV2-1.0 (T0 = 13.4) builds the listed segments,
  kernels, strides, skip folds and activations; random LayerMerge plans (pruned first convs, a
  pruned depthwise conv in a folded block, an emptied ResNet block) merge exactly.
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import combinations

import pytest
import torch
from torchvision.models import mobilenet_v2, resnet18, resnet34

from methods.layermerge.importance import l1_norms, option_network, option_of, option_plan
from methods.layermerge.method import to_plan
from methods.layermerge.options import (
    Option,
    conv_type,
    kept_units,
    option_spec,
    reducible,
    segment_options,
    table_options,
)
from methods.layermerge.solver import Entry, Solution
from suite.core.plan import Plan
from suite.core.realize import deploy_network, trainable_network
from suite.core.trace import trace
from suite.errors import DepthbenchError
from tests.conftest import randomize_batchnorm

RELATIVE_TOLERANCE = 1e-4  # the suite's merge tolerance (fp32)
MBV2_PRUNABLE = {1, 7, 13, 16, 22, 25, 28, 31, 34, 37, 43, 46, 49}


def chain_of(model, resolution=32):
    return trace(model, resolution).chain


def unit_l1(chain):
    return {p: 1.0 for p in range(1, chain.L + 1)}


@pytest.mark.parametrize("width", [1.0, 1.4])
def test_mobilenet_v2_has_upstreams_171_segments_and_391_entries(width):
    chain = chain_of(mobilenet_v2(width_mult=width), 224)
    options = table_options(chain, unit_l1(chain))
    per_segment = Counter((o.start, o.end) for o in options)
    assert (len(per_segment), len(options)) == (171, 391)
    histogram = Counter(per_segment.values())
    assert histogram == {1: 65, 2: 52, 3: 23, 4: 15, 5: 7, 6: 5, 7: 4}
    assert max(o.kernel for o in options) == 15
    assert (20, 41) in [(o.start, o.end) for o in options if o.kernel == 15]
    assert sum(o.depthwise for o in options) == 17
    assert {p for p in range(1, 51) if reducible(chain, p) and chain.unit(p).conv.stride == 1} == (
        MBV2_PRUNABLE
    )
    kinds = {
        (i, j): [(o.kernel, o.depthwise) for o in segment_options(chain, i, j)]
        for i, j in [(0, 5), (0, 1), (5, 8), (20, 41)]
    }
    assert kinds[(0, 5)] == [(3, False), (5, False)]
    assert kinds[(0, 1)] == [(3, True)]
    assert kinds[(5, 8)] == [(1, False), (3, False)]
    assert kinds[(20, 41)] == [(k, False) for k in range(3, 17, 2)]


def test_resnet34_has_upstreams_62_segments_and_150_entries_besides_the_stem():
    """Upstream keeps the stem out of the DP; the suite's chain has it as unit 1 (a fixed single
    entry: the max-pool after it is a barrier), so upstream's positions are ours minus one."""
    chain = chain_of(resnet34(), 224)
    options = table_options(chain, unit_l1(chain))
    stem = [o for o in options if o.start == 0]
    assert [(o.end, o.kernel, o.keeps_all) for o in stem] == [(1, 7, True)]
    rest = [o for o in options if o.start > 0]
    per_segment = Counter((o.start, o.end) for o in rest)
    assert (len(per_segment), len(rest)) == (62, 150)
    assert Counter(per_segment.values()) == {1: 32, 2: 13, 4: 9, 6: 5, 8: 2, 10: 1}
    assert max(o.kernel for o in rest) == 21
    assert (17, 27) in [(o.start, o.end) for o in rest if o.kernel == 21]
    assert not any(o.depthwise for o in options)
    assert sum(reducible(chain, p) for p in range(2, 34)) == 29
    assert [o.kernel for o in segment_options(chain, 1, 5)] == [3, 5, 7, 9]


def upstream_kept(chain, option: Option, l1) -> tuple[int, ...]:
    """Upstream ``find_candidates_by_comb`` + ``find_max_importance_candidate``: every subset of
    the segment with the option's per-type counts and every irreducible conv, in combinations
    order; the first with the largest Σ L1 wins (strict >)."""
    units = range(option.start + 1, option.end + 1)
    counts = dict(option.counts)
    best, best_score = None, None
    for subset in combinations(units, sum(counts.values())):
        if any(not reducible(chain, p) and p not in subset for p in units):
            continue
        if Counter(conv_type(chain, p) for p in subset) != +Counter(counts):
            continue
        score = sum(l1[p] for p in subset)
        if best is None or score > best_score:
            best, best_score = subset, score
    return best


@pytest.mark.parametrize("model", [mobilenet_v2, resnet18])
def test_the_l1_rule_equals_upstreams_exhaustive_search_including_ties(model):
    chain = chain_of(model())
    rng = random.Random(0)
    checked = 0
    for _ in range(6):
        l1 = {p: float(rng.randint(1, 3)) for p in range(1, chain.L + 1)}  # many ties
        for i, j in chain.segments("upstream"):
            if j - i > 12:
                continue  # combinations grow fast; the long segments add nothing new
            for option in segment_options(chain, i, j):
                assert kept_units(chain, option, l1) == upstream_kept(chain, option, l1)
                checked += 1
    assert checked > 150


def test_the_option_conv_has_the_options_kernel_and_the_segments_shape():
    chain = chain_of(mobilenet_v2(), 224)
    for option in table_options(chain, unit_l1(chain)):
        spec, whole = option_spec(chain, option), chain.merged_spec(option.start, option.end)
        assert (spec.kernel, spec.padding) == (option.kernel, option.kernel // 2)
        assert (spec.in_channels, spec.out_channels, spec.stride) == (
            whole.in_channels,
            whole.out_channels,
            whole.stride,
        )
        assert spec.is_depthwise == option.depthwise


DEMO_SEGMENTS = {(0, 5): 3, (5, 8): 1, (8, 11): 3, (11, 14): 1, (14, 17): 3, (35, 38): 1}


def demo_solution(chain) -> Solution:
    """The official demo's plan (MobileNetV2-1.0, T0 = 13.4): six merged segments, singles else."""
    ends = sorted({*range(17, 36), *range(38, 51), 5, 8, 11, 14})
    entries = []
    for i, j in zip([0, *ends[:-1]], ends, strict=True):
        options = segment_options(chain, i, j)
        kernel = DEMO_SEGMENTS.get((i, j), options[0].kernel)
        option = next(o for o in options if o.kernel == kernel)
        entries.append(Entry(i, j, (option.kernel, int(option.depthwise)), 1.0, 1.0))
    return Solution(tuple(entries), float(len(entries)), float(len(entries)), len(entries))


def test_the_official_demo_plan_builds_the_listed_network():
    traced = trace(randomize_batchnorm(mobilenet_v2(num_classes=10)), 32)
    chain = traced.chain
    options = {o.key: o for o in table_options(chain, l1_norms(traced))}
    plan = to_plan(chain, demo_solution(chain), options)
    boundaries = {5, 8, 11, 14, *range(17, 36), *range(38, 51)}
    assert plan.boundaries == boundaries
    assert plan.activations == boundaries - {20, 23, 26, 29, 32, 35, 41, 44, 47, 50}
    assert plan.deleted == {1, 7, 13, 37}
    trainable = trainable_network(traced, plan).eval()
    deploy = deploy_network(trainable)
    for (i, j), kernel in DEMO_SEGMENTS.items():
        conv = deploy.convs[f"{i}_{j}"]
        assert (conv.kernel_size[0], conv.groups) == (kernel, 1)
        assert conv.stride[0] == (2 if (i, j) in {(0, 5), (8, 11)} else 1)
        assert str(j) not in deploy.skips  # every residual of these segments is folded
    assert len(deploy.convs) == len(boundaries)
    singles = [
        key for key in deploy.convs if key.split("_")[0] not in {"0", "5", "8", "11", "14", "35"}
    ]
    assert all(deploy.convs[k].kernel_size[0] <= 3 for k in deploy.convs)  # LayerMerge's point
    assert len(singles) == len(boundaries) - 6
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trainable(x)
        assert ((deploy(x) - expected).abs().max() / expected.abs().max()) < RELATIVE_TOLERANCE


def random_layermerge_plan(chain, rng: random.Random, longest: int) -> Plan:
    """A random walk of upstream segments, one random option each, kept convs by random L1."""
    l1 = {p: rng.random() for p in range(1, chain.L + 1)}
    chosen, position = [], 0
    while position < chain.L:
        ends = [
            j
            for j in range(position + 1, min(chain.L, position + longest) + 1)
            if chain.is_valid_segment(position, j, "upstream")
        ]
        end = rng.choice(ends)
        option = rng.choice(segment_options(chain, position, end))
        chosen.append(Option(position, end, option.kernel, option.depthwise, option.counts,
                             kept_units(chain, option, l1)))  # fmt: skip
        position = end
    entries = tuple(Entry(o.start, o.end, o.key[2:], 1.0, 1.0) for o in chosen)
    return to_plan(chain, Solution(entries, 0.0, 0.0, 0), {o.key: o for o in chosen})


MODELS = {
    "mobilenet_v2-0.35": (lambda: mobilenet_v2(width_mult=0.35, num_classes=10), 8),
    "mobilenet_v2-1.0": (lambda: mobilenet_v2(num_classes=10), 6),
    "resnet18": (lambda: resnet18(num_classes=10), 4),
}


@pytest.mark.parametrize("name", MODELS)
def test_random_layermerge_plans_merge_exactly(name):
    build, longest = MODELS[name]
    traced = trace(randomize_batchnorm(build()), 32)
    rng = random.Random(name)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pruned = 0
    for _ in range(4):
        plan = random_layermerge_plan(traced.chain, rng, longest)
        pruned += len(plan.deleted)
        with torch.no_grad():
            trainable = trainable_network(traced, plan).eval()
            deploy = deploy_network(trainable)
            expected = trainable(x)
            error = ((deploy(x) - expected).abs().max() / expected.abs().max()).item()
        assert error < RELATIVE_TOLERANCE, (plan.groups(traced.chain), sorted(plan.deleted))
        assert len(deploy.convs) == len(plan.groups(traced.chain))
    assert pruned > 0


@pytest.mark.parametrize(
    "name, group, deleted, kernel",
    [
        ("mobilenet_v2-0.35", (0, 5), {1}, 3),  # pruned first conv of a segment (dw 1)
        ("mobilenet_v2-0.35", (5, 8), {7}, 1),  # pruned dw inside a folded residual block
        ("resnet18", (1, 5), {2, 3}, 5),  # an emptied basic block (x + x), first in the group
        ("resnet18", (1, 5), {4, 5}, 5),  # an emptied basic block, last in the group
        ("resnet18", (1, 5), {2, 5}, 5),  # one conv of each block
    ],
)
def test_pruned_units_inside_a_group_merge_exactly(name, group, deleted, kernel):
    traced = trace(randomize_batchnorm(MODELS[name][0]()), 32)
    chain = traced.chain
    i, j = group
    boundaries = frozenset(range(1, chain.L + 1)) - set(range(i + 1, j))
    plan = Plan((chain.original_activations & boundaries) | {j}, boundaries, frozenset(deleted))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        trainable = trainable_network(traced, plan).eval()
        deploy = deploy_network(trainable)
        expected = trainable(x)
        assert ((deploy(x) - expected).abs().max() / expected.abs().max()) < RELATIVE_TOLERANCE
    assert deploy.convs[f"{i}_{j}"].kernel_size[0] == kernel
    assert not set(trainable.units) & {str(p) for p in deleted}


def test_an_emptied_block_in_a_group_computes_x_plus_x():
    """ResNet-18's block 1->3 with both convs pruned inside group (1, 5] keeps its skip: the group
    is M(x + x) = M(2x), M the merge of block 3->5. The same units deleted as their own group
    (1, 3] remove the block (layer removal, y = x) and leave M alone."""
    traced = trace(randomize_batchnorm(resnet18(num_classes=10)), 32)
    chain = traced.chain
    everything = frozenset(range(1, chain.L + 1))
    pruned = Plan(everything - {2, 3, 4}, everything - {2, 3, 4}, frozenset({2, 3}))
    removed = Plan(everything - {2, 3, 4}, everything - {2, 4}, frozenset({2, 3}))
    with torch.no_grad():
        merged = deploy_network(trainable_network(traced, pruned)).convs["1_5"]
        alone = deploy_network(trainable_network(traced, removed)).convs["3_5"]
    assert torch.allclose(merged.weight, 2 * alone.weight, atol=1e-6)
    assert torch.allclose(merged.bias, alone.bias, atol=1e-6)


def test_a_shape_changing_unit_cannot_be_pruned():
    chain = chain_of(mobilenet_v2(width_mult=0.35))
    boundaries = frozenset(range(1, 51)) - {6, 7}
    with pytest.raises(DepthbenchError, match="pruning unit 6 .* changes the feature shape"):
        Plan(chain.original_activations & boundaries, boundaries, frozenset({6})).validate(chain)


def test_an_entry_network_changes_only_its_segment():
    traced = trace(randomize_batchnorm(mobilenet_v2(width_mult=0.35, num_classes=10)), 32)
    chain = traced.chain
    option = option_of(traced, (14, 17, 1, 0))  # block 14->17 without its dw: K1 + skip
    assert option.kept == (15, 17)
    plan = option_plan(chain, option)
    assert plan.deleted == {16}
    assert plan.activations == (chain.original_activations - {15, 16}) | {17}  # ReLU6 at 17
    assert plan.boundaries == frozenset(range(1, 51)) - {15, 16}
    single = option_plan(chain, option_of(traced, (16, 17, 1, 0)))
    assert single.activations == chain.original_activations  # no activation added at 17
    fresh = option_network(traced, (16, 17, 1, 0), reinitialise=True, seed=0)
    kept = option_network(traced, (16, 17, 1, 0), reinitialise=False, seed=0)
    assert not torch.equal(fresh.units["17"][0].weight, kept.units["17"][0].weight)
    assert torch.equal(kept.units["17"][0].weight, traced.conv(17).weight)
