"""The cost-model backend: hand-computed roofline values, zero-spread statistics through the real
harness, precision, profile validation, and the direction of its answer on real merged networks."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torchvision.models import mobilenet_v2

from suite.core.plan import Plan
from suite.core.realize import deploy_network, trainable_network
from suite.core.trace import trace, trace_model
from suite.errors import DepthbenchError
from suite.measure.backends.costmodel import count_ops, predict_ms
from suite.measure.harness import measure
from suite.measure.profiles import PROJECT_PROFILE_DIR, load_profile, read_profile
from tests.conftest import randomize_batchnorm

# The shipped profile's parameters, written out: the hand computations below use these numbers.
PEAK, BANDWIDTH, OVERHEAD = 100e9, 30e9, 0.5e-6
DENSE, DEPTHWISE, LINEAR = 0.85, 0.16, 0.85


@pytest.fixture(scope="module")
def profile():
    loaded = load_profile("cpu-costmodel")
    settings = loaded.costmodel
    assert (settings.peak_gmacs, settings.bandwidth_gbs, settings.launch_overhead_us) == (
        100.0,
        30.0,
        0.5,
    )
    assert settings.efficiency.model_dump() == {
        "dense_conv": DENSE,
        "depthwise_conv": DEPTHWISE,
        "linear": LINEAR,
    }
    return loaded


def ms(seconds: float) -> float:
    return seconds * 1e3


def test_a_dense_conv_is_compute_bound_as_computed_by_hand(profile):
    conv = nn.Conv2d(3, 8, 3, padding=1)
    macs = 16 * 16 * 8 * (3 * 3 * 3)  # output elements x C_in x kernel area = 55296
    moved = 4 * (3 * 16 * 16 + 8 * 3 * 3 * 3 + 8 + 8 * 16 * 16)  # input, weight, bias, output
    compute, memory = macs / (PEAK * DENSE), moved / BANDWIDTH
    assert compute > memory

    result = measure(conv, profile, (3, 16, 16))

    assert result.median_ms == pytest.approx(ms(compute + OVERHEAD), rel=1e-12)


def test_a_depthwise_conv_uses_the_depthwise_efficiency(profile):
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    macs = 16 * 16 * 8 * (1 * 3 * 3)
    moved = 4 * (8 * 16 * 16 + 8 * 3 * 3 + 8 + 8 * 16 * 16)

    [op] = count_ops(conv, (1, 8, 16, 16), torch.float32)

    assert (op.kind, op.macs, op.bytes) == ("depthwise_conv", macs, moved)
    expected = max(macs / (PEAK * DEPTHWISE), moved / BANDWIDTH) + OVERHEAD
    assert predict_ms(conv, (1, 8, 16, 16), torch.float32, profile.costmodel) == pytest.approx(
        ms(expected), rel=1e-12
    )


def test_a_linear_layer_at_batch_1_is_memory_bound_and_views_are_free(profile):
    head = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    moved = 4 * (64 + 64 * 10 + 10 + 10)  # input, weight, bias, output; flatten moves nothing

    [op] = count_ops(head, (1, 64, 1, 1), torch.float32)

    assert (op.kind, op.macs, op.bytes) == ("linear", 640, moved)
    assert moved / BANDWIDTH > 640 / (PEAK * LINEAR)
    assert predict_ms(head, (1, 64, 1, 1), torch.float32, profile.costmodel) == pytest.approx(
        ms(moved / BANDWIDTH + OVERHEAD), rel=1e-12
    )


def test_residual_additions_and_functional_pools_count_and_folded_bn_does_not():
    """MobileNetV2 adds its residuals and pools in forward(), where no module hook sees them."""
    ops = count_ops(mobilenet_v2(width_mult=0.5), (1, 3, 32, 32), torch.float32)
    names = [op.name for op in ops]

    assert names.count("aten.convolution.default") == 52
    assert names.count("aten.add.Tensor") == 10
    assert names.count("aten.mean.dim") == 1
    assert not any("batch_norm" in name for name in names)


def test_every_sample_is_the_prediction_and_the_statistics_have_no_spread(profile):
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    protocol = profile.protocol.model_copy(update={"min_iterations": 7, "repeats": 3})

    result = measure(module, profile, (3, 16, 16), protocol=protocol)

    assert result.n == 21 and np.all(result.samples == result.median_ms)
    assert result.ci_low_ms == result.median_ms == result.ci_high_ms == result.p99_ms
    assert (result.iqr_ms, result.robust_cov) == (0.0, 0.0)
    assert result.cov == pytest.approx(0.0, abs=1e-12)  # numpy's mean rounds in the last bit
    assert result.stable and result.attempts == 1
    assert result.environment["backend"] == "costmodel"


def test_measuring_keeps_the_module_in_its_mode_and_refuses_onnx_files(profile, tmp_path):
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout()).train()

    measure(module, profile, (3, 8, 8))

    assert all(m.training for m in module.modules())
    with pytest.raises(DepthbenchError, match="backend 'costmodel' .* measures torch modules"):
        measure(Path(tmp_path / "model.onnx"), profile)


def test_fp16_moves_half_the_bytes(profile, tmp_path):
    content = yaml.safe_load((PROJECT_PROFILE_DIR / "cpu-costmodel.yaml").read_text())
    content.update(name="half", precision="fp16")
    path = tmp_path / "half.yaml"
    path.write_text(yaml.safe_dump(content))
    relu = nn.ReLU()  # memory-bound: its time is its bytes

    fp32 = measure(relu, profile, (64, 32, 32)).median_ms
    fp16 = measure(relu, read_profile(path), (64, 32, 32)).median_ms

    assert fp16 - ms(OVERHEAD) == pytest.approx((fp32 - ms(OVERHEAD)) / 2, rel=1e-12)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"efficiency": {"dense_conv": 1.5}}, r"costmodel.efficiency.dense_conv.*less than or"),
        ({"bandwidth_gbs": 0}, r"costmodel.bandwidth_gbs.*greater than 0"),
        ({"launch_overhead_us": -1}, r"costmodel.launch_overhead_us.*greater than or equal"),
        ({"flops": 1}, r"costmodel.flops.*unknown field"),
    ],
)
def test_invalid_parameters_are_named_with_the_rule(tmp_path, change, expected):
    content = yaml.safe_load((PROJECT_PROFILE_DIR / "cpu-costmodel.yaml").read_text())
    section = content["costmodel"]
    if "efficiency" in change:
        section["efficiency"].update(change["efficiency"])
    else:
        section.update(change)
    path = tmp_path / "cpu-costmodel.yaml"
    path.write_text(yaml.safe_dump(content))

    with pytest.raises(DepthbenchError, match=expected):
        read_profile(path)


def totals(network: nn.Module, resolution: int) -> tuple[int, int, int]:
    ops = count_ops(network, (1, 3, resolution, resolution), torch.float32)
    return sum(op.macs for op in ops), sum(op.bytes for op in ops), len(ops)


def merged(traced, removed: set[int]) -> nn.Module:
    """The deploy network with the activations at ``removed`` gone and their units merged."""
    original = Plan.original(traced.chain)
    plan = Plan(original.activations - removed, original.boundaries - removed)
    plan.validate(traced.chain)
    return deploy_network(trainable_network(traced, plan))


def test_merging_an_inverted_residual_block_is_predicted_faster(profile):
    """Expand 1x1, depthwise 3x3 and project 1x1 (16 -> 96 -> 24 channels) become one dense 3x3
    conv, DepthShrinker's move: fewer MACs, fewer bytes, two convs and two activations fewer."""
    torch.manual_seed(0)
    traced = trace(randomize_batchnorm(mobilenet_v2(num_classes=10)), 32, "mbv2")
    base = deploy_network(trainable_network(traced, Plan.original(traced.chain)))
    shrunk = merged(traced, {3, 4})  # block (2, 5)

    (base_macs, base_bytes, base_ops), (macs, moved, ops) = totals(base, 32), totals(shrunk, 32)
    assert macs < base_macs and moved < base_bytes and ops == base_ops - 4

    assert measure(shrunk, profile, (3, 32, 32)).median_ms < (
        measure(base, profile, (3, 32, 32)).median_ms
    )


def test_merging_two_3x3_convs_into_a_5x5_is_predicted_slower(profile):
    """A ResNet-18 basic block's two 3x3 convs become one 5x5 with 25/18 of the work: the MACs it
    adds outweigh the conv, activation and residual addition it removes (the bytes barely change: a bigger kernel,
    one 8x8 map fewer), as on a CPU."""
    traced = trace_model("resnet18", num_classes=10, resolution=32)
    base = deploy_network(trainable_network(traced, Plan.original(traced.chain)))
    fused = merged(traced, {2})  # the first basic block, units 2 and 3

    (base_macs, base_bytes, base_ops), (macs, moved, ops) = totals(base, 32), totals(fused, 32)
    assert macs > base_macs and ops == base_ops - 3  # a conv, a ReLU, the residual add folded
    assert moved == pytest.approx(base_bytes, rel=1e-4)

    assert measure(fused, profile, (3, 32, 32)).median_ms > (
        measure(base, profile, (3, 32, 32)).median_ms
    )
