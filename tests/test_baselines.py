"""The four baselines on tiny real networks, their latencies from the cost-model profile.

For every method and network it applies to: the plan is valid, the deploy network computes what
the trainable network computes, a reachable budget is met by the plan's latency and an
unreachable one is infeasible with a reason. The latencies come from cpu-costmodel, a
deterministic source, so whether a budget is met never depends on how busy the machine is.
Method-specific tests check each method's own step against an independent computation (finite
differences, a hand-linearised torchvision model, the published DepthShrinker patterns, the
paper's candidate counts).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2, resnet18, vgg11_bn

from methods.deeprebirth import join, layerwise_rebirth, operations, rebirth_plan
from methods.depthshrinker import search_keep_scores, shrink_plan
from methods.layerprune import candidates as layerprune_candidates
from methods.layerprune import filter_criteria, prune_plan
from methods.relu_reduction import ReluReductionConfig, sensitivities, shallow_plan
from methods.relu_reduction import candidates as relu_candidates
from suite.core.budget import Budget
from suite.core.chain import Chain
from suite.core.method import Infeasible, PlanContext
from suite.core.plan import Plan, Replacement
from suite.core.realize import deploy_network, trainable_network
from suite.core.registry import get_method
from suite.core.trace import trace
from suite.errors import DepthbenchError
from suite.measure.harness import measure
from suite.measure.profiles import load_profile
from suite.run.cell import plan_context
from suite.run.data import load_data, train_loader
from suite.run.train import FinetuneRecipe, evaluate
from tests.conftest import randomize_batchnorm

RESOLUTION = 32
RELATIVE_TOLERANCE = 1e-4
# Few steps everywhere: the tests check the code paths, not the quality of a search.
CONFIGS = {
    "layerprune": {"batches": 2},
    "relu-reduction": {"holdout_images": 64},
    "depthshrinker": {"search_epochs": 0.05},
    "deeprebirth": {"layerwise_epochs": 0.05},
}
UNREACHABLE = Budget(kind="fraction", value=0.01)


def small_vgg11_bn() -> nn.Module:
    """VGG-11-BN's convs with a CIFAR-style head (global pool, one linear layer), which keeps the
    network small and exportable at 32 px (ONNX has no 1x1 -> 7x7 adaptive pool)."""
    model = vgg11_bn(num_classes=10)
    model.avgpool, model.classifier = nn.AdaptiveAvgPool2d(1), nn.Linear(512, 10)
    return model


NETWORKS = {
    "mobilenet_v2": lambda: mobilenet_v2(width_mult=0.35, num_classes=10),
    "resnet18": lambda: resnet18(num_classes=10),
    "vgg11_bn": small_vgg11_bn,
}
APPLICABLE = [
    (method, network)
    for method in CONFIGS
    for network in NETWORKS
    if (method, network) != ("depthshrinker", "vgg11_bn")
]


@pytest.fixture(scope="module")
def profile():
    return load_profile("cpu-costmodel")


@pytest.fixture(scope="module")
def data():
    return load_data("digits", resolution=RESOLUTION)


@pytest.fixture(scope="module")
def contexts(profile, data):
    """One planning context per network, shared so that its memoised measurements are reused."""
    recipe = FinetuneRecipe(steps=2, lr=0.01, batch_size=32)
    made = {}

    def context(network: str) -> PlanContext:
        if network not in made:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = randomize_batchnorm(NETWORKS[network]())
            traced = trace(model, RESOLUTION, network)
            made[network] = plan_context(traced, profile, data, recipe)
        return made[network]

    return context


def plan_with(ctx: PlanContext, method: str, budget: Budget, **config):
    spec = get_method(method)
    return spec.plan(ctx, budget, spec.make_config({**CONFIGS[method], **config}))


def most_compressed(method: str, chain: Chain) -> Plan:
    """The last plan along a method's ranking: every candidate applied, whatever the order."""
    if method == "layerprune":
        return prune_plan(chain, layerprune_candidates(chain))
    if method == "relu-reduction":
        return shallow_plan(chain, set(relu_candidates(chain)))
    if method == "depthshrinker":
        blocks = chain.blocks
        return shrink_plan(chain, blocks, set(range(len(blocks))))
    return rebirth_plan(chain, functools.reduce(join, operations(chain), ()))


def merge_error(trainable: nn.Module) -> float:
    """Largest relative difference of the deploy network's logits from the trainable network's."""
    images = torch.randn(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trainable.eval()(images)
        return (
            (deploy_network(trainable)(images) - expected).abs().max() / expected.abs().max()
        ).item()


@pytest.mark.parametrize(("method", "network"), APPLICABLE)
def test_the_most_compressed_plan_is_valid_and_merges_exactly(contexts, method, network):
    ctx = contexts(network)
    plan = most_compressed(method, ctx.chain)

    plan.validate(ctx.chain)
    assert merge_error(trainable_network(ctx.traced, plan)) < RELATIVE_TOLERANCE


@pytest.mark.parametrize(("method", "network"), APPLICABLE)
def test_an_unreachable_budget_is_infeasible_with_the_reason(contexts, method, network):
    """The reason says how fast the method gets. (This runs first: it measures every plan along
    the method's ranking, which the reachable budget below then finds measured.)"""
    with pytest.raises(Infeasible, match=r"fastest plan measures .* ms .* above the budget"):
        plan_with(contexts(network), method, UNREACHABLE)


@pytest.mark.parametrize(("method", "network"), APPLICABLE)
def test_a_reachable_budget_is_met_by_the_measured_latency(contexts, method, network):
    """The budget is 0.95 of the base latency, or the most compressed plan's latency where that
    is slower (on a CPU, two merged 3x3 convs are one 5x5, with more work). The chosen plan's
    latency is computed afresh here, not read back from the context that chose it."""
    ctx = contexts(network)
    fastest = ctx.measure_plan(most_compressed(method, ctx.chain)).median_ms
    budget = Budget(kind="ms", value=max(0.95 * ctx.base_latency_ms(), fastest))

    result = plan_with(ctx, method, budget)

    result.plan.validate(ctx.chain)
    trainable = result.trainable or trainable_network(ctx.traced, result.plan)
    deploy = deploy_network(trainable_network(ctx.traced, result.plan))
    assert measure(deploy, ctx.profile, (3, RESOLUTION, RESOLUTION)).median_ms <= budget.value
    assert merge_error(trainable) < RELATIVE_TOLERANCE


@pytest.mark.parametrize("method", CONFIGS)
@pytest.mark.parametrize("network", NETWORKS)
def test_supports_refuses_only_depthshrinker_on_vgg(contexts, method, network):
    reason = get_method(method).supports(contexts(network).chain)

    if (method, network) in APPLICABLE:
        assert reason is None
    else:
        assert "no blocks" in reason


# layerprune


def test_layerprune_candidates_are_the_shape_preserving_blocks(contexts):
    resnet = [c.units for c in layerprune_candidates(contexts("resnet18").chain)]
    mobilenet = layerprune_candidates(contexts("mobilenet_v2").chain)
    vgg = [c.units for c in layerprune_candidates(contexts("vgg11_bn").chain)]

    # every BasicBlock but the first of stages 2-4, whose projection changes the shape (LayerPrune's shape rule)
    assert resnet == [(2, 3), (4, 5), (8, 9), (12, 13), (16, 17)]
    assert len(mobilenet) == 10 and all(len(c.units) == 3 and len(c.gated) == 2 for c in mobilenet)
    assert vgg == [(4,), (6,), (7,), (8,)]  # C_in = C_out, a pool after 4, 6 and 8 kept


def test_layerprune_taylor_gate_is_the_squared_gate_gradient(contexts):
    """(∂L/∂g_c)² on one batch against a central difference, in float64, of the torchvision
    model's loss with channel c of the BN output scaled by 1 ± ε (γ_c and β_c scaled)."""
    ctx = contexts("resnet18")
    scores = filter_criteria(ctx, "taylor_gate", [2], batches=1)[2]
    channel = int(scores.argmax())
    images, labels = next(iter(train_loader(ctx.data.train, ctx.recipe.batch_size, ctx.seed)))

    def loss(scale: float) -> float:
        twin = copy.deepcopy(ctx.traced)
        twin.model.double().eval()
        with torch.no_grad():
            twin.bn(2).weight[channel] *= scale
            twin.bn(2).bias[channel] *= scale
            return F.cross_entropy(twin.model(images.double()), labels).item()

    epsilon = 1e-6
    gradient = (loss(1 + epsilon) - loss(1 - epsilon)) / (2 * epsilon)
    assert scores[channel].item() == pytest.approx(gradient**2, rel=1e-3)


# relu-reduction


def test_relu_reduction_candidates_are_the_activations_inside_blocks(contexts):
    assert relu_candidates(contexts("resnet18").chain) == list(range(2, 17, 2))
    assert len(relu_candidates(contexts("mobilenet_v2").chain)) == 2 * 17 - 1  # block 0 has one
    assert relu_candidates(contexts("vgg11_bn").chain) == [3, 5, 7]  # the others precede a pool


def test_relu_reduction_sensitivity_is_the_loss_increase_of_the_linearised_network(contexts):
    ctx = contexts("mobilenet_v2")
    config = ReluReductionConfig(holdout_images=len(ctx.data.holdout))
    linearised = copy.deepcopy(ctx.traced.model)
    linearised.features[17].conv[1][2] = nn.Identity()  # block 16's depthwise ReLU6: position 49
    expected = (
        evaluate(linearised, ctx.data.holdout).loss
        - evaluate(ctx.traced.model, ctx.data.holdout).loss
    )

    (sensitivity,) = sensitivities(ctx, [49], config)

    assert abs(expected) > 1e-4
    assert sensitivity == pytest.approx(expected, abs=1e-5)


def test_relu_reduction_merges_through_consecutive_removals(contexts):
    mobilenet, resnet = contexts("mobilenet_v2").chain, contexts("resnet18").chain

    both = shallow_plan(mobilenet, {6, 7})  # the whole block 5 -> 8, its skip fused
    across = shallow_plan(mobilenet, {7, 9})  # block end 8 has no activation but stays a boundary
    middle = shallow_plan(resnet, {2})

    assert (5, 8) in both.groups(mobilenet) and not {6, 7} & both.activations
    assert {(6, 8), (8, 10)} <= set(across.groups(mobilenet))
    assert (1, 3) in middle.groups(resnet)
    for plan, chain in ((both, mobilenet), (across, mobilenet), (middle, resnet)):
        plan.validate(chain)


# depthshrinker


@pytest.mark.parametrize(
    ("pattern", "kept"),
    [
        ("A", {0, 3, 4, 6, 8, 10, 11, 13, 14, 15, 16}),  # Fu et al.'s pattern A
        ("A10", {2, 4, 5, 6, 9, 10, 11, 12, 13, 14, 15, 16}),  # Kim et al.'s port
    ],
)
def test_depthshrinker_pattern_keeps_the_published_blocks(contexts, pattern, kept):
    ctx = contexts("mobilenet_v2")
    plan = plan_with(ctx, "depthshrinker", Budget(kind="ms", value=1e6), pattern=pattern).plan
    blocks = ctx.chain.blocks

    assert len(blocks) == 17
    for b, (start, end) in enumerate(blocks):
        inner = set(range(start + 1, end))
        if b in kept:
            assert inner <= plan.activations and end not in plan.activations
        else:
            assert (start, end) in plan.groups(ctx.chain) and end in plan.activations


def test_depthshrinker_pattern_over_the_budget_is_infeasible(contexts):
    with pytest.raises(Infeasible, match="pattern F measures"):
        plan_with(contexts("mobilenet_v2"), "depthshrinker", UNREACHABLE, pattern="F")


def test_depthshrinker_pattern_needs_a_mobilenet_v2(contexts):
    with pytest.raises(DepthbenchError, match="not a MobileNetV2"):
        plan_with(contexts("resnet18"), "depthshrinker", UNREACHABLE, pattern="A")


def test_depthshrinker_latency_regulariser_lowers_the_keep_score_of_a_slow_block(contexts):
    """The correct sign: a large λ on one block's saving makes that block the first to shrink."""
    ctx = contexts("resnet18")
    blocks = ctx.chain.blocks
    savings = [0.0] * len(blocks)
    savings[3] = 1.0

    scores, _ = search_keep_scores(ctx, blocks, savings, keep=4, steps=3, latency_weight=100.0)

    assert scores[3] < 0.0 < min(score for b, score in enumerate(scores) if b != 3)


# deeprebirth


def test_deeprebirth_operations(contexts):
    resnet = operations(contexts("resnet18").chain)
    vgg = operations(contexts("vgg11_bn").chain)
    mobilenet = operations(contexts("mobilenet_v2").chain)

    assert resnet == [Replacement(0, 1, True)] + [Replacement(s, s + 2) for s in range(1, 17, 2)]
    absorptions = [Replacement(p - 1, p, True) for p in (1, 2, 4, 6, 8)]
    assert vgg == absorptions + [Replacement(2, 4), Replacement(4, 6), Replacement(6, 8)]
    assert all(not op.absorb_pool for op in mobilenet) and len(mobilenet) == 17


def test_deeprebirth_overlapping_operations_join_into_one_new_conv():
    pair_then_pool = join((Replacement(2, 4),), Replacement(3, 4, True))
    overlapping_pairs = join((Replacement(0, 2), Replacement(4, 6)), Replacement(1, 3))

    assert pair_then_pool == (Replacement(2, 4, True),)
    assert overlapping_pairs == (Replacement(0, 3), Replacement(4, 6))


def test_deeprebirth_rebirth_trains_the_network_with_its_new_layers(contexts):
    ctx = contexts("resnet18")
    plan = rebirth_plan(ctx.chain, (Replacement(0, 1, True), Replacement(1, 3)))

    network = layerwise_rebirth(ctx, plan, steps=1, lr_scale=10.0)

    assert network.plan == plan and len(network.replacements) == 2
    assert network.replacement((0, 1)) is not None and network.replacement((1, 3)) is not None
    assert not torch.equal(network.unit(4)[0].weight, ctx.traced.conv(4).weight)
    assert merge_error(network) < RELATIVE_TOLERANCE
