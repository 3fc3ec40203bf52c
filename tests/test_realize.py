"""From a plan to networks: the original plan is the original model, and deploy equals trainable."""

from __future__ import annotations

import random

import pytest
import torch
from torchvision.models import mobilenet_v2, resnet18, resnet34, vgg11_bn

from suite.core.plan import Plan, Replacement
from suite.core.realize import deploy_network, trainable_network
from suite.core.trace import trace
from suite.errors import DepthbenchError
from tests.conftest import randomize_batchnorm

RELATIVE_TOLERANCE = 1e-4
MODELS = {
    "mobilenet_v2-0.35": lambda: mobilenet_v2(width_mult=0.35, num_classes=10),
    "mobilenet_v2-1.0": lambda: mobilenet_v2(num_classes=10),
    "resnet18": lambda: resnet18(num_classes=10),
    "resnet34": lambda: resnet34(num_classes=10),
    "vgg11_bn": lambda: vgg11_bn(num_classes=10),
}


def traced_model(name: str, resolution: int = 32):
    return trace(randomize_batchnorm(MODELS[name]()), resolution, name)


def images(resolution: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))


def relative_error(actual, expected) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def random_plan(chain, rng: random.Random, longest: int = 6) -> Plan:
    """Walk the chain through random valid segments (of at most ``longest`` units); random A ⊆ S."""
    boundaries, position = [], 0
    while position < chain.L:
        ends = [
            j
            for j in range(position + 1, min(chain.L, position + longest) + 1)
            if chain.is_valid_segment(position, j)
        ]
        position = rng.choice(ends)
        boundaries.append(position)
    return Plan(frozenset(p for p in boundaries if rng.random() < 0.6), frozenset(boundaries))


@pytest.mark.parametrize("name", MODELS)
def test_the_original_plan_reproduces_the_original_model(name):
    traced = traced_model(name)
    x = images()
    with torch.no_grad():
        expected = traced.model(x)
        trainable = trainable_network(traced, Plan.original(traced.chain)).eval()
        assert torch.equal(trainable(x), expected)
        assert relative_error(deploy_network(trainable)(x), expected) < RELATIVE_TOLERANCE


# Dense merging of wide 3x3 runs costs O(C^3 K^2 k^2): ResNet/VGG groups stay short to keep tests fast.
LONGEST_GROUP = {"resnet18": 3, "resnet34": 2, "vgg11_bn": 3}


@pytest.mark.parametrize("name", MODELS)
def test_deploy_equals_trainable_for_random_valid_plans(name):
    traced = traced_model(name)
    rng = random.Random(name)
    x = images()
    for _ in range(3):
        plan = random_plan(traced.chain, rng, LONGEST_GROUP.get(name, 6))
        with torch.no_grad():
            trainable = trainable_network(traced, plan).eval()
            deploy = deploy_network(trainable)
            assert relative_error(deploy(x), trainable(x)) < RELATIVE_TOLERANCE, plan.groups(
                traced.chain
            )
        assert len(deploy.convs) == len(plan.groups(traced.chain))


def test_whole_inverted_residual_block_becomes_one_dense_conv():
    """Upstream's example: pw 24->144, dw 3x3, pw 144->24 with its skip folded = one 3x3 24->24 conv."""
    traced = trace(randomize_batchnorm(mobilenet_v2(num_classes=10)), 32)
    chain = traced.chain
    boundaries = frozenset(range(1, 51)) - {6, 7}
    plan = Plan(chain.original_activations - {6, 7}, boundaries)
    deploy = deploy_network(trainable_network(traced, plan))
    conv = deploy.convs["5_8"]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.groups) == (
        24,
        24,
        (3, 3),
        1,
    )
    assert "8" not in deploy.skips  # the residual 5->8 is inside the group: folded


def test_general_rule_merges_across_strides_exactly():
    """A 3x3 conv after a stride-2 conv (not allowed upstream) merges into a 7x7 stride-2 conv."""
    traced = traced_model("resnet18", 64)
    plan = Plan(
        frozenset({1, 3, 5, 7, 9, 11, 13, 15, 17}), frozenset({1, 3, 5, 7, 9, 11, 13, 15, 17})
    )
    trainable = trainable_network(traced, plan).eval()
    deploy = deploy_network(trainable)
    assert deploy.convs["5_7"].kernel_size == (7, 7) and deploy.convs["5_7"].stride == (2, 2)
    x = images(64)
    with torch.no_grad():
        assert relative_error(deploy(x), trainable(x)) < RELATIVE_TOLERANCE


def test_deleting_whole_blocks_and_replacing_segments():
    traced = traced_model("resnet18")
    chain = traced.chain
    plan = Plan(chain.original_activations, frozenset(range(1, 18)), deleted=frozenset({4, 5}))
    x = images()
    with torch.no_grad():
        trainable = trainable_network(traced, plan).eval()
        assert relative_error(deploy_network(trainable)(x), trainable(x)) < RELATIVE_TOLERANCE
    vgg = traced_model("vgg11_bn")
    plan = Plan(
        vgg.chain.original_activations,
        frozenset(range(1, 9)),
        replaced=(Replacement(0, 1, absorb_pool=True),),
    )
    with torch.no_grad():
        trainable = trainable_network(vgg, plan).eval()
        assert trainable.replacement((0, 1))[0].stride == (2, 2)
        assert relative_error(deploy_network(trainable)(x), trainable(x)) < RELATIVE_TOLERANCE


def test_training_the_trainable_network_reaches_every_kept_unit():
    traced = traced_model("mobilenet_v2-0.35")
    plan = random_plan(traced.chain, random.Random(0))
    trainable = trainable_network(traced, plan).train()
    trainable(images()).sum().backward()
    assert all(p.grad is not None for p in trainable.units.parameters())
    assert traced.model.features[1].conv[0][0].weight.grad is None  # the base network is untouched


@pytest.mark.parametrize(
    "plan, message",
    [
        (Plan(frozenset({3}), frozenset({5})), "activation at position 3 is not a merge boundary"),
        (Plan(frozenset(), frozenset({6})), r"merge group \(0, 6\] is invalid: residual rule"),
        (Plan(frozenset(), frozenset({60})), "outside the chain"),
        (
            Plan(frozenset(), frozenset(range(1, 51)), deleted=frozenset({9})),
            "changes the feature shape",
        ),
        (Plan(frozenset(), frozenset(range(1, 51)), deleted=frozenset({7})), "only whole blocks"),
        (
            Plan(frozenset(), frozenset(range(1, 51)), replaced=(Replacement(3, 6),)),
            "exactly one merge group",
        ),
    ],
)
def test_malformed_plans_are_rejected_naming_position_and_rule(plan, message):
    chain = traced_model("mobilenet_v2-0.35").chain
    with pytest.raises(DepthbenchError, match=message):
        plan.validate(chain)


def test_plan_json_round_trip_and_malformed_files(tmp_path):
    plan = Plan(
        frozenset({1, 3}), frozenset({1, 3, 4}), replaced=(Replacement(4, 5, True),), method="x"
    )
    plan.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json") == plan
    (tmp_path / "bad.json").write_text('{"boundaries": [1]}')
    with pytest.raises(DepthbenchError, match="malformed plan"):
        Plan.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DepthbenchError, match="not valid JSON"):
        Plan.load(tmp_path / "broken.json")
    with pytest.raises(DepthbenchError, match="cannot read plan"):
        Plan.load(tmp_path / "missing.json")


@pytest.mark.parametrize("resolution", [32, 64])
def test_vgg_below_224_exports_to_onnx_and_computes_the_same(tmp_path, resolution):
    """torchvision VGG pools to 7x7, which the ONNX exporter refuses for a 1x1 or 2x2 map; the
    tracer's matrix form of that pool must export and compute what the original model computes."""
    import onnxruntime

    from suite.core.export import export_onnx

    traced = traced_model("vgg11_bn", resolution)
    deploy = deploy_network(trainable_network(traced, Plan.original(traced.chain))).eval()
    path = export_onnx(deploy, (1, 3, resolution, resolution), tmp_path / "vgg.onnx")
    x = images(resolution)[:1]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = traced.model(x)
    assert relative_error(torch.from_numpy(output), expected) < RELATIVE_TOLERANCE
