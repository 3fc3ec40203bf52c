"""The chain: the one representation of a network that every compression method works on.

A network is a chain of L conv+BN units. Position p (0..L) is the feature map after unit p, so
position 0 is the chain's input and unit p maps position p-1 to position p. At each position an
activation may follow, applied after a residual addition that ends there (as in ResNet and in
Kim et al.'s MobileNetV2 with optional block-end activations).

A *segment* (i, j] is the run of units i+1..j; a method fuses each segment between consecutive merge
boundaries into one conv. Which segments may be fused is decided here, once, for every method:

- barrier rule: no pooling layer may sit strictly inside a segment;
- residual rule: a segment contains a residual block whole or stays clear of its edges;
- stride rule (``rule="upstream"`` only): no segment crosses a stride boundary, the end of the run
  of 1x1 convs that follows a strided conv (for MobileNetV2 the end of each stride-2 block:
  {5, 11, 20, 41}). So only 1x1 convs are ever merged after a strided conv, which is all Kim et
  al.'s code supports ("merging strided conv is not implemented yet"). Under ``rule="general"``
  the exact merge handles any stride, so the rule is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

MergeRule = Literal["upstream", "general"]
MERGE_RULES: tuple[MergeRule, ...] = ("upstream", "general")


@dataclass(frozen=True)
class ConvSpec:
    """The shape of one conv: what a latency table or a merge needs to know about it."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    groups: int

    @property
    def is_depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels


@dataclass(frozen=True)
class Unit:
    """Conv p, its BN, and the activation the original network has at position p (or None)."""

    position: int
    conv: ConvSpec
    act: str | None


@dataclass(frozen=True)
class Residual:
    """x_target += shortcut(x_source); ``projection`` is the 1x1 shortcut conv, None for identity."""

    source: int
    target: int
    projection: ConvSpec | None = None


@dataclass(frozen=True)
class Pool:
    """A pooling layer applied to the feature map at ``position``; no merge may cross it."""

    position: int
    kind: str
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class Chain:
    """Shape-only description of a traced network; enough for planning and latency tables."""

    name: str
    units: tuple[Unit, ...]
    residuals: tuple[Residual, ...]
    pools: tuple[Pool, ...]
    act_kind: str
    resolution: int
    shapes: tuple[tuple[int, int, int], ...]  # (C, H, W) at 0..L, after any pool at that position
    _valid_cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    @property
    def L(self) -> int:  # noqa: N802 - the paper's name for the chain length
        return len(self.units)

    def unit(self, position: int) -> Unit:
        return self.units[position - 1]

    @property
    def barriers(self) -> frozenset[int]:
        return frozenset(pool.position for pool in self.pools)

    @property
    def original_activations(self) -> frozenset[int]:
        return frozenset(u.position for u in self.units if u.act is not None)

    @property
    def block_ends(self) -> frozenset[int]:
        """Positions without an original activation: MobileNetV2's linear bottlenecks, where each
        inverted-residual block ends; none on ResNet or VGG."""
        return frozenset(u.position for u in self.units if u.act is None)

    @property
    def blocks(self) -> list[tuple[int, int]]:
        """The segments (start, end] of the network's blocks: MobileNetV2's inverted-residual
        blocks, else ResNet's residual blocks; none for a plain chain such as VGG."""
        ends = sorted(self.block_ends)
        if ends:
            return list(zip([0, *ends[:-1]], ends, strict=True))
        return [(r.source, r.target) for r in self.residuals]

    @property
    def stride_boundaries(self) -> frozenset[int]:
        """Positions no upstream segment crosses: where a strided conv's tail of 1x1 convs ends.

        The tail stops at a residual source, so the next block is never glued to a strided one.
        """
        boundaries = set()
        for unit in self.units:
            if unit.conv.stride > 1:
                end = unit.position
                while (
                    end < self.L
                    and self.unit(end + 1).conv.kernel == 1
                    and not self._crosses_residual(end)
                ):
                    end += 1
                boundaries.add(end)
        return frozenset(boundaries)

    def _crosses_residual(self, position: int) -> bool:
        return any(r.source <= position < r.target for r in self.residuals)

    def segment_violation(self, i: int, j: int, rule: MergeRule = "general") -> str | None:
        """Why segment (i, j] may not be fused into one conv, or None when it may."""
        if not 0 <= i < j <= self.L:
            return f"segment ({i}, {j}] is outside the chain 0..{self.L}"
        for b in sorted(self.barriers):
            if i < b < j:
                return f"barrier rule: the {self._pool_at(b).kind} pool at position {b} lies inside ({i}, {j}]"
        for r in self.residuals:
            if i < r.source < j < r.target or r.source < i < r.target < j:
                return (
                    f"residual rule: ({i}, {j}] cuts the residual block {r.source}->{r.target}; "
                    "a segment must contain a block whole or stay clear of its edges"
                )
        if rule == "upstream":
            for b in sorted(self.stride_boundaries):
                if i < b < j:
                    return f"stride rule (upstream): the stride boundary {b} lies inside ({i}, {j}]"
        return None

    def _pool_at(self, position: int) -> Pool:
        return next(pool for pool in self.pools if pool.position == position)

    def is_valid_segment(self, i: int, j: int, rule: MergeRule = "general") -> bool:
        key = (i, j, rule)
        if key not in self._valid_cache:
            self._valid_cache[key] = self.segment_violation(i, j, rule) is None
        return self._valid_cache[key]

    def segments(self, rule: MergeRule = "general") -> list[tuple[int, int]]:
        """Every valid segment (i, j], i < j, in lexicographic order."""
        return [
            (i, j)
            for i in range(self.L)
            for j in range(i + 1, self.L + 1)
            if self.is_valid_segment(i, j, rule)
        ]

    def merged_spec(self, i: int, j: int, kept: Iterable[int] | None = None) -> ConvSpec:
        """Shape of the one conv that segment (i, j] merges into (see ``suite.core.merge``).

        Kernel K = k1 + (k2 - 1) * s1 and stride s1 * s2 compose left to right; padding is all moved
        to the input; the result keeps ``groups`` only when every conv shares it (else it is dense).
        ``kept`` (ascending positions in (i, j]) merges only those units, the others being pruned
        to the identity (deleted units inside a kept merge group, see ``suite.core.plan``).
        """
        positions = range(i + 1, j + 1) if kept is None else kept
        convs = [self.unit(p).conv for p in positions]
        kernel, stride, padding = convs[0].kernel, convs[0].stride, convs[0].padding
        for conv in convs[1:]:
            kernel += (conv.kernel - 1) * stride
            padding += conv.padding * stride
            stride *= conv.stride
        groups = convs[0].groups if all(c.groups == convs[0].groups for c in convs) else 1
        return ConvSpec(
            convs[0].in_channels, convs[-1].out_channels, kernel, stride, padding, groups
        )

    def keeps_shape(self, position: int) -> bool:
        """Whether unit ``position``'s conv maps its input's shape to itself (C_in = C_out,
        stride 1, "same" padding), judged before any pool at ``position``: replacing it by the
        identity, the pool kept, leaves every feature shape as it was."""
        conv = self.unit(position).conv
        return (
            conv.in_channels == conv.out_channels
            and conv.stride == 1
            and 2 * conv.padding == conv.kernel - 1
        )

    def residual_into(self, target: int) -> Residual | None:
        return next((r for r in self.residuals if r.target == target), None)
