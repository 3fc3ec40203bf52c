"""Tracing: turn a torchvision network into a ``Chain`` plus the modules behind each position.

Supported families: MobileNetV2 (any width; the 17 inverted-residual blocks form the chain, the stem
conv and the final 1x1 conv stay outside it, as upstream, so L = 50), ResNet (BasicBlock and
Bottleneck, identity and 1x1 projection shortcuts; the stem conv is position 1 and its max-pool a
barrier) and VGG (with or without BN; every max-pool is a barrier). A module the tracer does not
understand is an error that names it.

Feature shapes are computed for one input resolution, which must be a positive integer at which
no feature map vanishes (VGG's five pools need 32x32); a smaller one is refused naming the smallest
that works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import VGG, MobileNetV2, ResNet
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from suite.core.chain import Chain, ConvSpec, Pool, Residual, Unit
from suite.errors import DepthbenchError


@dataclass
class TracedModel:
    """A network cut along its chain: stem -> units 1..L (with skips and pools) -> head."""

    chain: Chain
    model: nn.Module
    stem: nn.Module
    convs: list[nn.Conv2d]
    bns: list[nn.Module]
    shortcuts: dict[int, nn.Module | None]
    pools: dict[int, nn.Module]
    head: nn.Module

    def conv(self, position: int) -> nn.Conv2d:
        return self.convs[position - 1]

    def bn(self, position: int) -> nn.Module:
        return self.bns[position - 1]


class _Builder:
    """Collects units, residuals and pools in chain order while a family walks its modules."""

    def __init__(self) -> None:
        self.convs: list[nn.Conv2d] = []
        self.bns: list[nn.Module] = []
        self.acts: list[str | None] = []
        self.residuals: list[Residual] = []
        self.shortcuts: dict[int, nn.Module | None] = {}
        self.pools: dict[int, nn.Module] = {}
        self.pool_specs: list[Pool] = []

    @property
    def position(self) -> int:
        return len(self.convs)

    def unit(
        self, conv: nn.Module, bn: nn.Module | None, act: nn.Module | None, where: str
    ) -> None:
        if not isinstance(conv, nn.Conv2d):
            raise DepthbenchError(
                f"cannot trace {where}: expected a Conv2d, found {type(conv).__name__}"
            )
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.dilation != (1, 1):
            raise DepthbenchError(
                f"cannot trace {where}: only square, undilated convs are supported"
            )
        if bn is not None and not isinstance(bn, nn.BatchNorm2d):
            raise DepthbenchError(
                f"cannot trace {where}: expected a BatchNorm2d, found {type(bn).__name__}"
            )
        self.convs.append(conv)
        self.bns.append(bn if bn is not None else nn.Identity())
        self.acts.append(_act_name(act, where))

    def residual(self, source: int, shortcut: nn.Module | None, where: str) -> None:
        projection = None
        if shortcut is not None:
            projection = _spec(_projection(shortcut, where))
        self.residuals.append(Residual(source, self.position, projection))
        self.shortcuts[self.position] = shortcut

    def pool(self, module: nn.Module, where: str) -> None:
        if not isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
            raise DepthbenchError(
                f"cannot trace {where}: unsupported pooling {type(module).__name__}"
            )
        kernel, stride, padding = (
            _int(getattr(module, a)) for a in ("kernel_size", "stride", "padding")
        )
        kind = "max" if isinstance(module, nn.MaxPool2d) else "avg"
        self.pools[self.position] = module
        self.pool_specs.append(Pool(self.position, kind, kernel, stride, padding))


def trace(model: nn.Module, resolution: int, name: str | None = None) -> TracedModel:
    """Cut ``model`` into a chain; feature shapes are computed for a ``resolution`` x ``resolution`` input."""
    name = name or type(model).__name__
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise DepthbenchError(
            f"resolution must be a positive whole number of pixels, got {resolution!r}"
        )
    builder = _Builder()
    if isinstance(model, MobileNetV2):
        stem, head, act_kind = _walk_mobilenet_v2(model, builder)
    elif isinstance(model, ResNet):
        stem, head, act_kind = _walk_resnet(model, builder)
    elif isinstance(model, VGG):
        stem, head, act_kind = _walk_vgg(model, builder)
    else:
        raise DepthbenchError(
            f"cannot trace {type(model).__name__}: supported families are MobileNetV2, ResNet and VGG"
        )
    units = tuple(
        Unit(p + 1, _spec(conv), act)
        for p, (conv, act) in enumerate(zip(builder.convs, builder.acts, strict=True))
    )
    shapes = _feature_shapes(stem, units, builder.pool_specs, resolution)
    if _vanishes(shapes):
        smallest = _smallest_resolution(stem, units, builder.pool_specs, resolution)
        position = next(p for p, shape in enumerate(shapes) if _vanishes([shape]))
        raise DepthbenchError(
            f"{name} at resolution {resolution}: the feature map vanishes (shape {shapes[position]} "
            f"at position {position}); the smallest resolution that works is {smallest}"
        )
    pool = head[0]
    if isinstance(pool, nn.AdaptiveAvgPool2d) and shapes[-1][1] % _int(pool.output_size) != 0:
        head[0] = MatrixAdaptiveAvgPool2d(_int(pool.output_size))
    chain = Chain(
        name,
        units,
        tuple(builder.residuals),
        tuple(builder.pool_specs),
        act_kind,
        resolution,
        shapes,
    )
    return TracedModel(
        chain, model, stem, builder.convs, builder.bns, builder.shortcuts, builder.pools, head
    )


def trace_model(
    name: str, width: float = 1.0, num_classes: int = 1000, resolution: int = 224
) -> TracedModel:
    """Build a torchvision network by name (see ``suite.core.models``) and trace it."""
    from suite.core.models import build_model

    model = build_model(name, num_classes=num_classes, width=width).eval()
    return trace(model, resolution, model_label(name, width))


def model_label(name: str, width: float = 1.0) -> str:
    """The chain name ``trace_model`` gives: the model, and MobileNetV2's width multiplier."""
    return f"{name}-{width:g}" if name == "mobilenet_v2" else name


def _walk_mobilenet_v2(model: MobileNetV2, builder: _Builder) -> tuple[nn.Module, nn.Module, str]:
    stem, *blocks, last = model.features
    for b, block in enumerate(blocks):
        where = f"features[{b + 1}]"
        if not isinstance(block, InvertedResidual):
            raise DepthbenchError(
                f"cannot trace {where}: expected an InvertedResidual, found {type(block).__name__}"
            )
        source = builder.position
        *activated, project, project_bn = block.conv
        for k, layer in enumerate(activated):
            conv, bn, act = _conv_norm_act(layer, f"{where}.conv[{k}]")
            builder.unit(conv, bn, act, f"{where}.conv[{k}]")
        builder.unit(project, project_bn, None, f"{where}.conv[{len(activated)}]")
        if block.use_res_connect:
            builder.residual(source, None, where)
    head = nn.Sequential(last, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier)
    return stem, head, "relu6"


def _walk_resnet(model: ResNet, builder: _Builder) -> tuple[nn.Module, nn.Module, str]:
    builder.unit(model.conv1, model.bn1, model.relu, "conv1")
    builder.pool(model.maxpool, "maxpool")
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for b, block in enumerate(getattr(model, stage)):
            where = f"{stage}[{b}]"
            source = builder.position
            if isinstance(block, BasicBlock):
                pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
            elif isinstance(block, Bottleneck):
                pairs = [
                    (block.conv1, block.bn1),
                    (block.conv2, block.bn2),
                    (block.conv3, block.bn3),
                ]
            else:
                raise DepthbenchError(
                    f"cannot trace {where}: unsupported block {type(block).__name__}"
                )
            for k, (conv, bn) in enumerate(pairs):
                # every conv of a block is followed by block.relu; the last one after the addition
                builder.unit(conv, bn, block.relu, f"{where}.conv{k + 1}")
            builder.residual(source, block.downsample, where)
    head = nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)
    return nn.Identity(), head, "relu"


def _walk_vgg(model: VGG, builder: _Builder) -> tuple[nn.Module, nn.Module, str]:
    layers = list(model.features)
    k = 0
    while k < len(layers):
        where = f"features[{k}]"
        if isinstance(layers[k], nn.MaxPool2d | nn.AvgPool2d):
            builder.pool(layers[k], where)
            k += 1
            continue
        conv = layers[k]
        bn = (
            layers[k + 1]
            if k + 1 < len(layers) and isinstance(layers[k + 1], nn.BatchNorm2d)
            else None
        )
        act_index = k + (2 if bn is not None else 1)
        act = layers[act_index] if act_index < len(layers) else None
        builder.unit(conv, bn, act, where)
        k = act_index + 1
    head = nn.Sequential(model.avgpool, nn.Flatten(1), model.classifier)
    return nn.Identity(), head, "relu"


class MatrixAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` written as two averaging matrices: the same numbers, but exportable
    to ONNX at any input size (the exporter refuses adaptive pooling whose input is not a multiple
    of its output, e.g. torchvision VGG's 7x7 pool of the 1x1 map a 32x32 image leaves)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _averaging_matrix(self.size, x.shape[-2], x)
        cols = _averaging_matrix(self.size, x.shape[-1], x)
        return rows @ x @ cols.T


def _averaging_matrix(out: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """Row i averages input cells floor(i*size/out) .. ceil((i+1)*size/out), as PyTorch does.

    Built from Python numbers, so an ONNX export records it as a constant.
    """
    rows = []
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        rows.append([1.0 / (end - start) if start <= k < end else 0.0 for k in range(size)])
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _conv_norm_act(layer: nn.Module, where: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    if not isinstance(layer, nn.Sequential) or len(layer) != 3:
        raise DepthbenchError(
            f"cannot trace {where}: expected conv-BN-activation, found {type(layer).__name__}"
        )
    return layer[0], layer[1], layer[2]


def _projection(shortcut: nn.Module, where: str) -> nn.Conv2d:
    """The conv of a 1x1 conv + BN projection shortcut (checked: the merge handles no other)."""
    ok = isinstance(shortcut, nn.Sequential) and len(shortcut) == 2
    conv, bn = (shortcut[0], shortcut[1]) if ok else (None, None)
    if not (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and conv.kernel_size == (1, 1)
    ):
        raise DepthbenchError(
            f"cannot trace {where}.downsample: only 1x1 conv + BN projections are supported"
        )
    if conv.padding != (0, 0) or conv.groups != 1:
        raise DepthbenchError(
            f"cannot trace {where}.downsample: the projection must be unpadded and dense"
        )
    return conv


def _act_name(act: nn.Module | None, where: str) -> str | None:
    if act is None:
        return None
    if isinstance(act, nn.ReLU6):
        return "relu6"
    if isinstance(act, nn.ReLU):
        return "relu"
    raise DepthbenchError(
        f"cannot trace {where}: unsupported activation {type(act).__name__} (ReLU or ReLU6 only)"
    )


def _spec(conv: nn.Conv2d) -> ConvSpec:
    return ConvSpec(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[0],
        conv.stride[0],
        conv.padding[0],
        conv.groups,
    )


def _int(value: int | tuple[int, ...]) -> int:
    return value if isinstance(value, int) else value[0]


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _vanishes(shapes: list[tuple[int, int, int]] | tuple[tuple[int, int, int], ...]) -> bool:
    return any(height < 1 or width < 1 for _, height, width in shapes)


def _smallest_resolution(
    stem: nn.Module, units: tuple[Unit, ...], pools: list[Pool], too_small: int
) -> int:
    """The least resolution above ``too_small`` with no vanishing feature map (sizes only grow
    with the resolution, so doubling then bisecting finds it)."""
    low, high = too_small, 2 * too_small
    while _vanishes(_feature_shapes(stem, units, pools, high)):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        if _vanishes(_feature_shapes(stem, units, pools, middle)):
            low = middle
        else:
            high = middle
    return high


def _feature_shapes(
    stem: nn.Module, units: tuple[Unit, ...], pools: list[Pool], resolution: int
) -> tuple[tuple[int, int, int], ...]:
    """(C, H, W) at positions 0..L as the next unit sees them (after any pool at that position)."""
    with torch.no_grad():
        start = stem.eval()(torch.zeros(1, 3, resolution, resolution))
    _, channels, size, _ = start.shape
    shapes = [(channels, size, size)]
    pool_at = {pool.position: pool for pool in pools}
    for unit in units:
        size = _conv_out(size, unit.conv.kernel, unit.conv.stride, unit.conv.padding)
        if unit.position in pool_at:
            pool = pool_at[unit.position]
            size = _conv_out(size, pool.kernel, pool.stride, pool.padding)
        shapes.append((unit.conv.out_channels, size, size))
    return tuple(shapes)
