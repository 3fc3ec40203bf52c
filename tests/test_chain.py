"""The chain against upstream data: positions, valid segments, and real feature shapes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.models import (
    mobilenet_v2,
    mobilenet_v3_small,
    resnet18,
    resnet34,
    vgg11_bn,
    vgg19_bn,
)

from suite.core.trace import trace
from suite.errors import DepthbenchError

REFERENCE = "suite/reference/"
UPSTREAM_TABLES = {
    "mbv2-1.0": (
        lambda: mobilenet_v2(width_mult=1.0),
        "ecdc__utils_table_mbv2_1.0_time_fish_gpu1_1228.csv",
    ),
    "mbv2-1.4": (
        lambda: mobilenet_v2(width_mult=1.4),
        "ecdc__utils_table_mbv2_1.4_time_fish_gpu1_0103.csv",
    ),
    "vgg19": (vgg19_bn, "ecdc__utils_table_vgg19_no_trt_time_fish_gpu1_0317.csv"),
}


@pytest.mark.parametrize("name", UPSTREAM_TABLES)
def test_upstream_rule_gives_exactly_the_upstream_table_rows(name):
    build, table = UPSTREAM_TABLES[name]
    chain = trace(build(), 224).chain
    rows = pd.read_csv(REFERENCE + table)
    assert set(chain.segments("upstream")) == set(zip(rows.st, rows.end, strict=True))
    assert len(chain.segments("upstream")) == len(rows)


@pytest.mark.parametrize("width", [1.0, 1.4])
def test_mobilenet_v2_positions_match_the_upstream_position_map(width):
    chain = trace(mobilenet_v2(width_mult=width), 224).chain
    expected = pd.read_csv(REFERENCE + "derived_mbv2_position_map.csv")
    expected = expected[expected.width == width]
    assert chain.L == 50 == len(expected)
    for row in expected.itertuples():
        unit = chain.unit(row.position)
        assert (unit.conv.in_channels, unit.conv.out_channels) == (row.in_ch, row.out_ch)
        assert (unit.conv.kernel, unit.conv.stride, unit.conv.groups) == (
            row.kernel,
            row.stride,
            row.groups,
        )
        assert (unit.act is not None) == bool(row.default_act)


def test_mobilenet_v2_residuals_and_stride_boundaries_are_the_upstream_ones():
    chain = trace(mobilenet_v2(), 224).chain
    pairs = {(r.source, r.target) for r in chain.residuals}
    assert pairs == {
        (5, 8),
        (11, 14),
        (14, 17),
        (20, 23),
        (23, 26),
        (26, 29),
        (32, 35),
        (35, 38),
        (41, 44),
        (44, 47),
    }
    assert chain.stride_boundaries == {5, 11, 20, 41}
    assert chain.act_kind == "relu6"


def test_general_rule_admits_more_segments_and_keeps_the_residual_rule():
    chain = trace(mobilenet_v2(), 224).chain
    upstream, general = set(chain.segments("upstream")), set(chain.segments("general"))
    assert upstream < general
    assert (3, 8) in general and (3, 8) not in upstream  # a 3x3 dw conv after the stride-2 block
    assert "residual rule" in chain.segment_violation(6, 9)
    assert "stride rule" in chain.segment_violation(3, 8, "upstream")


def test_resnets_have_stem_pool_barrier_and_projection_shortcuts():
    chain = trace(resnet18(), 224).chain
    assert chain.L == 17 and chain.barriers == {1}
    projections = [(r.source, r.target) for r in chain.residuals if r.projection is not None]
    assert projections == [(5, 7), (9, 11), (13, 15)]
    assert "barrier rule" in chain.segment_violation(0, 2)
    assert trace(resnet34(), 224).chain.L == 33


def _real_shapes(model: nn.Module, traced, resolution: int) -> list[tuple[int, int, int]]:
    """Shapes as the torch modules really produce them (hooks), independent of the chain's arithmetic."""
    seen = {}
    hooks = [
        conv.register_forward_hook(lambda m, i, o, p=p: seen.__setitem__(p, tuple(i[0].shape[1:])))
        for p, conv in enumerate(traced.convs, start=1)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    for hook in hooks:
        hook.remove()
    return [seen[p] for p in sorted(seen)]


@pytest.mark.parametrize(
    "build, resolution",
    [
        (lambda: mobilenet_v2(width_mult=0.35, num_classes=10), 32),
        (lambda: mobilenet_v2(width_mult=1.4), 96),
        (lambda: resnet18(num_classes=10), 64),
        (lambda: vgg11_bn(num_classes=10), 32),
    ],
)
def test_chain_shapes_are_the_inputs_each_conv_really_sees(build, resolution):
    model = build()
    traced = trace(model, resolution)
    assert list(traced.chain.shapes[:-1]) == _real_shapes(model, traced, resolution)


def test_a_network_the_tracer_cannot_represent_is_named():
    with pytest.raises(DepthbenchError, match="MobileNetV3"):
        trace(mobilenet_v3_small(), 224)
    model = mobilenet_v2()
    model.features[3].conv[0][2] = nn.Hardswish()
    with pytest.raises(DepthbenchError, match=r"features\[3\]\.conv\[0\].*Hardswish"):
        trace(model, 224)


def test_blocks_are_the_inverted_residuals_or_the_residual_blocks():
    mbv2 = trace(mobilenet_v2(), 224).chain
    assert len(mbv2.blocks) == 17 and mbv2.blocks[0] == (0, 2) and mbv2.blocks[-1] == (47, 50)
    assert mbv2.block_ends == frozenset(end for _, end in mbv2.blocks)
    resnet = trace(resnet18(num_classes=10), 64).chain
    assert resnet.block_ends == frozenset() and len(resnet.blocks) == 8
    assert trace(vgg11_bn(num_classes=10), 32).chain.blocks == []
