"""A plan: what a compression method decides, in Kim et al.'s notation, checked against a chain.

- A (``activations``): positions that keep an activation; all others become identities.
- S (``boundaries``): merge boundaries, S ⊇ A; the units between consecutive elements of
  S ∪ {0, L} are fused into one conv. Position L always ends a group.
- D (``deleted``): units replaced by the identity. A merge group whose units are all deleted is
  removed (layer-removal methods): only whole residual blocks with identity shortcuts, which lose
  their skip too, or single shape-preserving units outside any block. A deleted unit in a group
  that keeps a unit is a *pruned conv* (LayerMerge): that conv and its BN become the identity, every
  skip stays (an emptied residual block computes x + x), and the unit must preserve its shape.
- R (``replaced``): segments replaced by one new, freshly initialised conv (DeepRebirth); may absorb
  the pool at the segment's end.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from suite.core.chain import Chain
from suite.errors import DepthbenchError
from suite.files import read_text


@dataclass(frozen=True)
class Replacement:
    start: int
    end: int
    absorb_pool: bool = False


@dataclass(frozen=True)
class Plan:
    activations: frozenset[int]
    boundaries: frozenset[int]
    deleted: frozenset[int] = frozenset()
    replaced: tuple[Replacement, ...] = ()
    method: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @staticmethod
    def original(chain: Chain) -> Plan:
        """The uncompressed network: every original activation kept, nothing merged."""
        return Plan(chain.original_activations, frozenset(range(1, chain.L + 1)), method="original")

    def groups(self, chain: Chain) -> list[tuple[int, int]]:
        """The merge groups (i, j]: consecutive elements of S ∪ {0, L}."""
        ends = sorted((self.boundaries | {chain.L}) - {0})
        return list(zip([0, *ends[:-1]], ends, strict=True))

    def validate(self, chain: Chain) -> None:
        """Raise a DepthbenchError naming the first position and rule the plan breaks."""
        for name, positions in (
            ("activation", self.activations),
            ("boundary", self.boundaries),
            ("deleted unit", self.deleted),
        ):
            outside = sorted(p for p in positions if not 1 <= p <= chain.L)
            if outside:
                raise DepthbenchError(
                    f"plan: {name} position {outside[0]} is outside the chain 1..{chain.L}"
                )
        stray = sorted(self.activations - self.boundaries - {chain.L})
        if stray:
            raise DepthbenchError(
                f"plan: the activation at position {stray[0]} is not a merge boundary (A must be a subset of S)"
            )
        replaced = {(r.start, r.end): r for r in self.replaced}
        for i, j in self.groups(chain):
            if (i, j) in replaced:
                continue
            reason = chain.segment_violation(i, j, "general")
            if reason:
                raise DepthbenchError(f"plan: merge group ({i}, {j}] is invalid: {reason}")
        for r in self.replaced:
            _check_replacement(r, self.groups(chain), chain)
        _check_deleted(self.deleted, self.groups(chain), chain)

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "activations": sorted(self.activations),
            "boundaries": sorted(self.boundaries),
            "deleted": sorted(self.deleted),
            "replaced": [vars(r) for r in self.replaced],
            "meta": self.meta,
        }

    @staticmethod
    def from_json(data: dict) -> Plan:
        """A plan from its JSON form; positions must be integers (not 1.5, not true)."""
        try:
            return Plan(
                activations=_positions(data, "activations"),
                boundaries=_positions(data, "boundaries"),
                deleted=_positions(data, "deleted"),
                replaced=tuple(_replacement(r) for r in data.get("replaced", [])),
                method=str(data.get("method", "")),
                meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            reason = f"missing key {err}" if isinstance(err, KeyError) else str(err)
            raise DepthbenchError(
                f"malformed plan ({reason}): expected keys 'activations' and 'boundaries' (lists of "
                "integer positions), optional 'deleted', 'replaced' ([{start, end, absorb_pool}]), "
                "'method', 'meta'"
            ) from err

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @staticmethod
    def load(path: Path) -> Plan:
        text = read_text(path, "plan", "a plan is JSON")
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except (json.JSONDecodeError, ValueError) as err:
            raise DepthbenchError(f"plan {path} is not valid JSON: {err}") from err
        except RecursionError as err:
            raise DepthbenchError(
                f"plan {path} is nested too deeply to be a plan; a plan is a flat JSON object"
            ) from err
        if not isinstance(data, dict):
            raise DepthbenchError(
                f"plan {path} must be a JSON object with 'activations' and 'boundaries'"
            )
        try:
            return Plan.from_json(data)
        except DepthbenchError as err:
            raise DepthbenchError(f"plan {path}: {err}") from err


def _refuse_constant(name: str) -> float:
    """json's hook for NaN and Infinity, which are not JSON and no position."""
    raise ValueError(f"{name} is not a JSON number")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positions(data: dict, key: str) -> frozenset[int]:
    values = data[key] if key in ("activations", "boundaries") else data.get(key, [])
    if not isinstance(values, list):
        raise TypeError(f"{key!r} must be a list of positions, not {type(values).__name__}")
    bad = [value for value in values if not _is_int(value)]
    if bad:
        raise ValueError(f"{key!r} holds {json.dumps(bad[0])}, but positions are integers")
    return frozenset(values)


def _replacement(entry: object) -> Replacement:
    if not isinstance(entry, dict):
        raise TypeError(f"'replaced' entries are objects, not {type(entry).__name__}")
    replacement = Replacement(**entry)
    if not (_is_int(replacement.start) and _is_int(replacement.end)):
        raise ValueError("'replaced' start and end are integer positions")
    if not isinstance(replacement.absorb_pool, bool):
        raise ValueError("'replaced' absorb_pool is true or false")
    return replacement


def _check_replacement(r: Replacement, groups: list[tuple[int, int]], chain: Chain) -> None:
    if (r.start, r.end) not in groups:
        raise DepthbenchError(
            f"plan: replaced segment ({r.start}, {r.end}] must be exactly one merge group "
            "(its ends in S ∪ {0, L}, no boundary inside)"
        )
    reason = chain.segment_violation(r.start, r.end, "general")
    if reason:
        raise DepthbenchError(f"plan: replaced segment ({r.start}, {r.end}] is invalid: {reason}")
    if r.absorb_pool and r.end not in chain.barriers:
        raise DepthbenchError(
            f"plan: replaced segment ({r.start}, {r.end}] absorbs a pool, but none follows position {r.end}"
        )


def _check_deleted(deleted: frozenset[int], groups: list[tuple[int, int]], chain: Chain) -> None:
    pruned = {
        p
        for i, j in groups
        if not set(range(i + 1, j + 1)) <= deleted
        for p in deleted & set(range(i + 1, j + 1))
    }
    for p in sorted(pruned):
        if not chain.keeps_shape(p):
            raise DepthbenchError(
                f"plan: pruning unit {p} (deleted inside a kept merge group) changes the feature "
                f"shape ({_conv_shape(chain, p)}); only shape-preserving convs may be pruned"
            )
    for p in sorted(deleted - pruned):
        block = next((r for r in chain.residuals if r.source < p <= r.target), None)
        if block is None:
            if not chain.keeps_shape(p):
                raise DepthbenchError(
                    f"plan: deleting unit {p} changes the feature shape ({_conv_shape(chain, p)}); "
                    "only shape-preserving units may be deleted (a pool after one stays)"
                )
        elif (
            block.projection is not None
            or not set(range(block.source + 1, block.target + 1)) <= deleted
        ):
            raise DepthbenchError(
                f"plan: unit {p} is in the residual block {block.source}->{block.target}; only whole "
                "blocks with an identity shortcut may be deleted"
            )


def _conv_shape(chain: Chain, p: int) -> str:
    conv = chain.unit(p).conv
    return (
        f"its conv maps {conv.in_channels} -> {conv.out_channels} channels, kernel {conv.kernel}, "
        f"stride {conv.stride}, padding {conv.padding}"
    )
