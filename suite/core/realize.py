"""From a plan to networks.

``TrainableNetwork`` is what every method fine-tunes: the original units, activations outside A are
identities, and each merge group's padding sits on its first conv (``adjust_padding`` in Kim et
al.'s code). Inside a group the feature maps are therefore larger than usual by a border e_p, and
the network computes *exactly* what the merged conv computes. ``deploy_network`` folds BN, fuses
each group into one conv and folds the residuals that a group contains; its output equals the
trainable network's (in eval mode) up to fp32 rounding.

Borders: a group (i, j] ends with border e_j = 0, and an unpadded conv with stride s and original
padding p turns border e into (e - p) / s, so e_{p-1} = s_p * e_p + p_p, and the group's padding is
e_i. A skip x_s -> x_t inside a group reads x_s (zero-padded by e_i when s = i) from offset
e_s - stride * e_t, which is where the merged kernel's skip tap lands (``suite.core.merge.add``).

Pruned units (deleted units inside a group that keeps a unit, LayerMerge) are the identity: they
leave the border unchanged (e_{p-1} = e_p), the group's padding goes to its first *kept* conv, and
the maps before that conv carry no border yet; in the deploy network each is an identity 1x1 conv
(diagonal, so it keeps a depthwise group depthwise), composed like any unit. A removed group
(every unit deleted, layer removal) is the identity in both networks; a pool after it stays.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from suite.core.merge import AffineConv, add, compose
from suite.core.plan import Plan
from suite.core.trace import TracedModel

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6}


def group_borders(
    traced: TracedModel, i: int, j: int, pruned: frozenset[int] = frozenset()
) -> dict[int, int]:
    """e_p for p in i..j of merge group (i, j]; e_i is the padding of the group's first kept conv.

    ``pruned`` units are the identity and leave the border unchanged."""
    borders = {j: 0}
    for p in range(j, i, -1):
        conv = traced.chain.unit(p).conv
        borders[p - 1] = borders[p] if p in pruned else conv.stride * borders[p] + conv.padding
    return borders


def held_borders(borders: dict[int, int], first_kept: int) -> dict[int, int]:
    """The borders the trainable network's maps actually carry: none before the first kept conv
    (the group's input and the pruned units before that conv), e_p from it on."""
    return {p: (e if p >= first_kept else 0) for p, e in borders.items()}


class TrainableNetwork(nn.Module):
    """The network a method fine-tunes; its weights become the deploy network's by exact merging."""

    def __init__(self, traced: TracedModel, plan: Plan) -> None:
        super().__init__()
        chain = traced.chain
        plan.validate(chain)
        self.chain = chain
        self.plan = plan
        self.groups = plan.groups(chain)
        self.stem = copy.deepcopy(traced.stem)
        self.head = copy.deepcopy(traced.head)
        self.act = ACTIVATIONS[chain.act_kind]()
        self.units = nn.ModuleDict()
        self.shortcuts = nn.ModuleDict()
        self.replacements = nn.ModuleDict()
        self.borders: dict[tuple[int, int], dict[int, int]] = {}
        replaced = {(r.start, r.end): r for r in plan.replaced}
        for i, j in self.groups:
            if (i, j) in replaced:
                self.replacements[_key(i, j)] = _replacement(traced, replaced[(i, j)])
            elif kept := _kept_units(plan, i, j):
                borders = group_borders(traced, i, j, plan.deleted)
                self.borders[(i, j)] = held_borders(borders, kept[0])
                for p in kept:
                    conv = copy.deepcopy(traced.conv(p))
                    conv.padding = (borders[i],) * 2 if p == kept[0] else (0, 0)
                    self.units[str(p)] = nn.Sequential(conv, copy.deepcopy(traced.bn(p)))
        for target, shortcut in traced.shortcuts.items():
            if shortcut is not None:
                self.shortcuts[str(target)] = copy.deepcopy(shortcut)
        absorbed = {r.end for r in plan.replaced if r.absorb_pool}
        self.pools = nn.ModuleDict(
            {str(p): copy.deepcopy(pool) for p, pool in traced.pools.items() if p not in absorbed}
        )
        self.sources = {r.source for r in chain.residuals}

    def unit(self, position: int) -> nn.Sequential:
        """Unit ``position`` as it trains: (conv, BN), its padding moved as its merge group needs."""
        return self.units[str(position)]

    def pruned(self, position: int) -> bool:
        """Whether unit ``position`` is a pruned conv of a merge group (the identity)."""
        return str(position) not in self.units

    def replacement(self, segment: tuple[int, int]) -> nn.Sequential:
        """The new (conv, BN) that replaces the merge group ``segment`` = (start, end)."""
        return self.replacements[_key(*segment)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        features = {0: x}
        for i, j in self.groups:
            if _key(i, j) in self.replacements:
                x = self.replacement((i, j))(x)
                x = self._add_skip(x, j, i, features, {})
            elif (i, j) in self.borders:
                borders = self.borders[(i, j)]
                for p in range(i + 1, j + 1):
                    y = x if self.pruned(p) else self.unit(p)(x)
                    x = self._add_skip(y, p, i, features, borders)
                    if p in self.sources and p < j:
                        features[p] = x
            else:  # deleted units are the identity; a pool after them stays
                x = self._pool(x, j)
                features[j] = x
                continue
            x = self._after(x, j)
            features[j] = x
        return self.head(x)

    def _add_skip(
        self, x: torch.Tensor, target: int, start: int, features: dict, borders: dict
    ) -> torch.Tensor:
        residual = self.chain.residual_into(target)
        if residual is None or (residual.source >= start and not borders):
            return x  # no skip, or one folded into a replacement conv
        s = residual.source
        held = borders.get(s, 0) if s >= start else 0  # the border x_s carries
        stride = residual.projection.stride if residual.projection is not None else 1
        wanted = stride * borders.get(target, 0)  # what the skip must carry to match x_t
        skip = features[s]
        if wanted > held:
            skip = F.pad(skip, [wanted - held] * 4)
        offset = max(held - wanted, 0)
        skip = skip[..., offset:, offset:]
        if str(target) in self.shortcuts:
            skip = self.shortcuts[str(target)](skip)
        return x + skip[..., : x.shape[-2], : x.shape[-1]]

    def _after(self, x: torch.Tensor, position: int) -> torch.Tensor:
        if position in self.plan.activations:
            x = self.act(x)
        return self._pool(x, position)

    def _pool(self, x: torch.Tensor, position: int) -> torch.Tensor:
        if str(position) in self.pools:
            x = self.pools[str(position)](x)
        return x


class DeployNetwork(nn.Module):
    """One conv per merge group, BN folded, residuals inside a group folded into its kernel."""

    def __init__(self, trainable: TrainableNetwork) -> None:
        super().__init__()
        self.chain = trainable.chain
        self.plan = trainable.plan
        self.groups = trainable.groups
        self.stem = copy.deepcopy(trainable.stem)
        self.head = copy.deepcopy(trainable.head)
        self.act = copy.deepcopy(trainable.act)
        self.pools = copy.deepcopy(trainable.pools)
        kept = [(i, j) for i, j in self.groups if _kept_units(self.plan, i, j)]
        self.convs = nn.ModuleDict(
            {_key(i, j): _merge_group(trainable, i, j).to_conv() for i, j in kept}
        )
        self.skips = nn.ModuleDict()
        for i, j in kept:
            residual = self.chain.residual_into(j)
            if residual is not None and residual.source < i:
                self.skips[str(j)] = _shortcut_conv(trainable, j)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        features = {0: x}
        for i, j in self.groups:
            if _key(i, j) not in self.convs:  # deleted units are the identity; their pool stays
                if str(j) in self.pools:
                    x = self.pools[str(j)](x)
                features[j] = x
                continue
            x = self.convs[_key(i, j)](x)
            if str(j) in self.skips:
                x = x + self.skips[str(j)](features[self.chain.residual_into(j).source])
            if j in self.plan.activations:
                x = self.act(x)
            if str(j) in self.pools:
                x = self.pools[str(j)](x)
            features[j] = x
        return self.head(x)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def trainable_network(traced: TracedModel, plan: Plan) -> TrainableNetwork:
    return TrainableNetwork(traced, plan)


@torch.no_grad()
def deploy_network(trainable: TrainableNetwork) -> DeployNetwork:
    return DeployNetwork(trainable.eval()).eval()


def _merge_group(net: TrainableNetwork, i: int, j: int) -> AffineConv:
    """Fold the units of group (i, j] and the skips it contains into one affine conv."""
    if _key(i, j) in net.replacements:
        conv, bn = net.replacement((i, j))
        return AffineConv.from_conv_bn(conv, bn)
    chain = net.chain
    maps: dict[int, AffineConv | None] = {i: None}
    merged: AffineConv | None = None
    for p in range(i + 1, j + 1):
        if not net.pruned(p):
            conv, bn = net.unit(p)
            unit = replace(AffineConv.from_conv_bn(conv, bn), padding=chain.unit(p).conv.padding)
        else:
            like = next(net.units.parameters())
            unit = AffineConv.identity(chain.unit(p).conv.out_channels, like)
        merged = unit if merged is None else compose(merged, unit)
        residual = chain.residual_into(p)
        if residual is not None and residual.source >= i:
            skip = _shortcut_map(net, p, like=merged.weight)
            if maps[residual.source] is not None:
                skip = compose(maps[residual.source], skip)
            merged = add(merged, skip)
        maps[p] = merged
    return merged


def _shortcut_map(net: TrainableNetwork, target: int, like: torch.Tensor) -> AffineConv:
    if str(target) in net.shortcuts:
        conv, bn = net.shortcuts[str(target)]
        return AffineConv.from_conv_bn(conv, bn)
    return AffineConv.identity(net.chain.unit(target).conv.out_channels, like)


def _shortcut_conv(net: TrainableNetwork, target: int) -> nn.Module:
    if str(target) in net.shortcuts:
        conv, bn = net.shortcuts[str(target)]
        return AffineConv.from_conv_bn(conv, bn).to_conv()
    return nn.Identity()


def _replacement(traced: TracedModel, r) -> nn.Sequential:
    """DeepRebirth's new layer: one freshly initialised conv + BN covering segment (start, end].

    With ``absorb_pool`` the pool after ``end`` is folded in as k' = K + (k_pool - 1) * S, stride
    S * s_pool, padding P + p_pool * S, so the receptive field and output size are kept.
    """
    spec = traced.chain.merged_spec(r.start, r.end)
    kernel, stride, padding = spec.kernel, spec.stride, spec.padding
    if r.absorb_pool:
        pool = next(p for p in traced.chain.pools if p.position == r.end)
        kernel += (pool.kernel - 1) * stride
        padding += pool.padding * stride
        stride *= pool.stride
    conv = nn.Conv2d(
        spec.in_channels, spec.out_channels, kernel, stride, padding, groups=spec.groups, bias=False
    )
    return nn.Sequential(conv, nn.BatchNorm2d(spec.out_channels))


def _kept_units(plan: Plan, i: int, j: int) -> list[int]:
    """The units of group (i, j] that are not deleted; none: the group is removed."""
    return [p for p in range(i + 1, j + 1) if p not in plan.deleted]


def _key(i: int, j: int) -> str:
    return f"{i}_{j}"
