"""LayerMerge's table entries: the merged-kernel options of every valid segment (docs/methods/layermerge.md).

A conv is *reducible* (may be pruned to the identity) when it keeps its shape: in = out channels
and stride 1; every other conv is irreducible and always kept. For a valid segment (i, j]:

1. group its convs by type (kernel k, depthwise?), in order of first appearance;
2. for every type, the number kept ranges from its irreducible convs to all of them; every count
   vector (``itertools.product`` order) gives a merged kernel K = 1 + Σ n_(k,dw)·(k − 1), depthwise
   iff every kept conv is depthwise;
3. a count vector that keeps no conv (the identity) is dropped; options are keyed by (K, dw) and on
   a duplicate the last count vector wins (the key keeps its first place in the order).

Which convs an option keeps is fixed up front by the L1 rule (``kept_units``): per type, its
irreducible convs plus the reducible ones with the largest Σ‖W‖₁ of the raw pretrained weights;
on ties the earliest positions win, which is the lexicographically first subset of upstream's
exhaustive search over ``itertools.combinations`` with a strict ``>``.

Every option is a real conv: ``Chain.merged_spec`` over its kept units gives its shape (stride
and channels of the whole segment, padding (K − 1)/2), which the latency table measures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product

from suite.core.chain import Chain, ConvSpec, MergeRule

RULE: MergeRule = "upstream"  # upstream merges only 1x1 convs after a strided conv


@dataclass(frozen=True)
class ConvType:
    kernel: int
    depthwise: bool


@dataclass(frozen=True)
class Option:
    """One table entry: segment (start, end] merged into a K x K conv keeping ``counts`` per type.

    ``kept`` (ascending positions) is filled by the L1 rule; before that it is empty.
    """

    start: int
    end: int
    kernel: int
    depthwise: bool
    counts: tuple[tuple[ConvType, int], ...]
    kept: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[int, int, int, int]:
        """(i, j, K, dw): the join key of the latency and importance tables."""
        return (self.start, self.end, self.kernel, int(self.depthwise))

    @property
    def keeps_all(self) -> bool:
        return sum(n for _, n in self.counts) == self.end - self.start

    def pruned(self) -> frozenset[int]:
        """The segment's units this option replaces by the identity."""
        return frozenset(range(self.start + 1, self.end + 1)) - set(self.kept)


def reducible(chain: Chain, position: int) -> bool:
    """Upstream's test: a conv may be pruned iff in = out channels and stride 1."""
    conv = chain.unit(position).conv
    return conv.in_channels == conv.out_channels and conv.stride == 1


def conv_type(chain: Chain, position: int) -> ConvType:
    conv = chain.unit(position).conv
    return ConvType(conv.kernel, conv.is_depthwise)


def segment_options(chain: Chain, i: int, j: int) -> list[Option]:
    """Steps 1-3 for segment (i, j], in table order; ``kept`` still empty."""
    groups: dict[ConvType, list[int]] = {}
    for p in range(i + 1, j + 1):
        groups.setdefault(conv_type(chain, p), []).append(p)
    ranges = [
        range(sum(not reducible(chain, p) for p in units), len(units) + 1)
        for units in groups.values()
    ]
    options: dict[tuple[int, bool], Option] = {}
    for counts in product(*ranges):
        if sum(counts) == 0:
            continue  # the identity: upstream drops it on MobileNetV2 and ResNet
        kept_types = [t for t, n in zip(groups, counts, strict=True) if n]
        kernel = 1 + sum(n * (t.kernel - 1) for t, n in zip(groups, counts, strict=True))
        depthwise = all(t.depthwise for t in kept_types)
        options[(kernel, depthwise)] = Option(
            i, j, kernel, depthwise, tuple(zip(groups, counts, strict=True))
        )
    return list(options.values())


def kept_units(chain: Chain, option: Option, l1: Mapping[int, float]) -> tuple[int, ...]:
    """The L1 rule: per type, the irreducible convs plus the top reducible ones by ``l1[p]``
    (Σ|W| of conv p's raw weights); ties to the earliest positions."""
    kept: list[int] = []
    for kind, count in option.counts:
        units = [p for p in range(option.start + 1, option.end + 1) if conv_type(chain, p) == kind]
        fixed = [p for p in units if not reducible(chain, p)]
        free = sorted((p for p in units if reducible(chain, p)), key=lambda p: (-l1[p], p))
        kept += fixed + free[: count - len(fixed)]
    return tuple(sorted(kept))


def table_options(chain: Chain, l1: Mapping[int, float]) -> list[Option]:
    """Every entry of the chain's tables, segments in lexicographic order, options in table order,
    each with the convs the L1 rule keeps."""
    return [
        Option(o.start, o.end, o.kernel, o.depthwise, o.counts, kept_units(chain, o, l1))
        for i, j in chain.segments(RULE)
        for o in segment_options(chain, i, j)
    ]


def option_spec(chain: Chain, option: Option) -> ConvSpec:
    """The option's merged conv: its kept units merged (``Chain.merged_spec``)."""
    return chain.merged_spec(option.start, option.end, option.kept)


def unsupported(chain: Chain) -> str | None:
    """Why LayerMerge cannot plan on ``chain``, or None.

    Its pruning needs shape-preserving convs and its exact merge needs the upstream segment rule;
    every traced family has both, but VGG has no residual blocks, so neither upstream's code nor
    the paper defines its table or recipe, and its pools end segments after two or three convs.
    """
    if not chain.residuals:
        return (
            f"LayerMerge is defined for residual networks (MobileNetV2, ResNet); {chain.name} has no"
            " residual blocks. Planning on it would need the L1 rule and importance recipe checked"
            " on a plain chain (VGG convs of one stage are prunable) and a VGG fine-tune recipe"
        )
    return None
