"""Exact merging: a run of convs with no activation between them is one affine conv.

Every unit (conv + folded BN), every shortcut and every identity skip is an ``AffineConv``: a dense
kernel, a bias, a stride and the zero padding applied to its input. Two such maps compose into one
(``compose``) and two maps of the same input add into one (``add``); a merge group is a fold of those
two operations, so residual blocks, strided convs and grouped convs need no special case.

Composition of A then B, with all padding moved to A's input (Kim et al., ``conv_with_new``):

    W[o, i, r] = sum_{m, s_A*u + t = r} W_B[o, m, u] * W_A[m, i, t]    (a transposed conv of W_B by W_A)
    K = k_A + (k_B - 1) * s_A,   stride = s_A * s_B,   padding = p_A + p_B * s_A
    b = (sum_u W_B[:, :, u]) @ b_A + b_B

The padding rule is only exact because the trainable network moves each group's padding onto its
first conv (``suite.core.realize``); with zero padding between the convs the borders would differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from suite.errors import DepthbenchError


@dataclass
class AffineConv:
    """y = conv2d(pad(x, padding), weight, stride) + bias, with a dense weight (out, in, K, K).

    ``groups`` remembers a block-diagonal structure shared by every merged conv, so that depthwise
    convs merged with depthwise convs stay depthwise; it is 1 once anything dense was merged in.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    padding: int
    groups: int = 1

    @property
    def kernel(self) -> int:
        return self.weight.shape[-1]

    @staticmethod
    def from_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> AffineConv:
        """Fold BN into the conv: W <- W * gamma / sqrt(var + eps), b <- (b - mean) * that + beta."""
        _check_square(conv)
        weight = _dense_weight(conv.weight.detach(), conv.groups)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(conv.out_channels)
        if bn is not None:
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            weight = weight * scale[:, None, None, None]
            bias = (bias - bn.running_mean) * scale + bn.bias.detach()
        return AffineConv(weight, bias, conv.stride[0], conv.padding[0], conv.groups)

    @staticmethod
    def identity(channels: int, like: torch.Tensor) -> AffineConv:
        """The identity skip as a 1x1 conv; diagonal, so it keeps any group structure."""
        weight = torch.eye(channels, dtype=like.dtype, device=like.device)[:, :, None, None]
        return AffineConv(weight, torch.zeros(channels, dtype=like.dtype), 1, 0, channels)

    def to_conv(self) -> nn.Conv2d:
        """The deployable nn.Conv2d; grouped when the merged convs all shared a group structure."""
        out_channels, in_channels = self.weight.shape[:2]
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            self.kernel,
            stride=self.stride,
            padding=self.padding,
            groups=self.groups,
            bias=True,
        )
        with torch.no_grad():
            conv.weight.copy_(_grouped_weight(self.weight, self.groups))
            conv.bias.copy_(self.bias)
        return conv

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding)


def compose(first: AffineConv, second: AffineConv) -> AffineConv:
    """The single conv equal to ``second(first(x))`` when padding sits on the first conv's input."""
    weight = F.conv_transpose2d(second.weight, first.weight, stride=first.stride)
    bias = second.weight.sum(dim=(2, 3)) @ first.bias + second.bias
    return AffineConv(
        weight,
        bias,
        stride=first.stride * second.stride,
        padding=first.padding + second.padding * first.stride,
        groups=first.groups if first.groups == second.groups else 1,
    )


def add(main: AffineConv, skip: AffineConv) -> AffineConv:
    """The single conv equal to ``main(x) + skip(x)``: the skip kernel embedded into main's.

    Tap r of a kernel with padding P reads input offset r - P, so the skip's taps go to
    r + (P_main - P_skip). The skip must fit inside main's window (true for residual blocks: an
    identity lands on the centre tap, a 1x1 strided projection on tap P_main).
    """
    if main.stride != skip.stride:
        raise DepthbenchError(
            f"cannot fold a stride-{skip.stride} skip into a stride-{main.stride} path"
        )
    offset = main.padding - skip.padding
    if offset < 0 or offset + skip.kernel > main.kernel:
        raise DepthbenchError(
            f"cannot fold a {skip.kernel}x{skip.kernel} skip (padding {skip.padding}) into a "
            f"{main.kernel}x{main.kernel} path (padding {main.padding}): it does not fit the window"
        )
    weight = main.weight.clone()
    weight[:, :, offset : offset + skip.kernel, offset : offset + skip.kernel] += skip.weight
    groups = main.groups if skip.groups % main.groups == 0 else 1
    return AffineConv(weight, main.bias + skip.bias, main.stride, main.padding, groups)


def _check_square(conv: nn.Conv2d) -> None:
    if (
        conv.kernel_size[0] != conv.kernel_size[1]
        or conv.stride[0] != conv.stride[1]
        or conv.padding[0] != conv.padding[1]
        or conv.dilation != (1, 1)
        or conv.padding_mode != "zeros"
    ):
        raise DepthbenchError(
            f"cannot merge {conv}: only square kernels, strides and zero paddings with dilation 1 are supported"
        )


def _dense_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Expand a grouped kernel (out, in/groups, k, k) to the equivalent block-diagonal dense one."""
    if groups == 1:
        return weight
    out_channels, in_per_group, *kernel = weight.shape
    out_per_group = out_channels // groups
    dense = weight.new_zeros(groups, out_per_group, groups, in_per_group, *kernel)
    diagonal = torch.arange(groups)
    dense[diagonal, :, diagonal] = weight.view(groups, out_per_group, in_per_group, *kernel)
    return dense.view(out_channels, groups * in_per_group, *kernel)


def _grouped_weight(dense: torch.Tensor, groups: int) -> torch.Tensor:
    """Inverse of ``_dense_weight``: keep only the diagonal blocks."""
    if groups == 1:
        return dense
    out_channels, in_channels, *kernel = dense.shape
    blocks = dense.view(groups, out_channels // groups, groups, in_channels // groups, *kernel)
    diagonal = torch.arange(groups)
    return blocks[diagonal, :, diagonal].reshape(out_channels, in_channels // groups, *kernel)
