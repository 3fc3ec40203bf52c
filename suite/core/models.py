"""The torchvision networks the suite compresses, built by name.

Every experiment names its network by a short string (``mobilenet_v2``, ``resnet18``...), so that a
configuration file, a cache key and a results record all say the same thing.
"""

from collections.abc import Callable

import torchvision.models as tvm
from torch import nn

from suite.errors import DepthbenchError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v2": tvm.mobilenet_v2,
    "resnet18": tvm.resnet18,
    "resnet34": tvm.resnet34,
    "vgg11_bn": tvm.vgg11_bn,
    "vgg16_bn": tvm.vgg16_bn,
    "vgg19_bn": tvm.vgg19_bn,
}
KNOWN_MODELS: tuple[str, ...] = tuple(_BUILDERS)
_IMAGENET_CLASSES = 1000


def build_model(
    name: str, num_classes: int, width: float = 1.0, pretrained: bool = False
) -> nn.Module:
    """Build the torchvision network ``name`` with ``num_classes`` outputs.

    ``width`` is MobileNetV2's width multiplier; the other networks have a single width.
    ``pretrained`` loads torchvision's ImageNet weights (downloaded on first use), so it needs
    1000 classes and the width those weights were trained at.
    """
    if name not in _BUILDERS:
        raise DepthbenchError(f"unknown model {name!r}: use one of {', '.join(KNOWN_MODELS)}")
    if name != "mobilenet_v2" and width != 1.0:
        raise DepthbenchError(
            f"model {name!r} has no width option (got width={width}); only mobilenet_v2 does"
        )
    if width <= 0:
        raise DepthbenchError(f"model width must be positive, got {width}")
    if num_classes < 2:
        raise DepthbenchError(f"num_classes must be at least 2, got {num_classes}")
    if pretrained:
        return _build_pretrained(name, num_classes, width)
    if name == "mobilenet_v2":
        return tvm.mobilenet_v2(num_classes=num_classes, width_mult=width)
    return _BUILDERS[name](num_classes=num_classes)


def _build_pretrained(name: str, num_classes: int, width: float) -> nn.Module:
    if num_classes != _IMAGENET_CLASSES or width != 1.0:
        raise DepthbenchError(
            f"pretrained {name!r} exists only with {_IMAGENET_CLASSES} classes and width 1.0 "
            f"(asked for {num_classes} classes, width {width}); train a base network instead"
        )
    return _BUILDERS[name](weights="DEFAULT")
