"""The method registry: one small table of names, in the style of timm's ``_registry.py``.

In-tree methods register with the ``register_method`` decorator when their module is imported;
third-party packages register the same way from a module they name in the ``depthbench.methods``
entry-point group (``[project.entry-points."depthbench.methods"] mymethod = "pkg.module"``).
Both are loaded lazily, on the first lookup.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sized
from dataclasses import dataclass
from importlib.metadata import entry_points

from pydantic import BaseModel

from suite.core.budget import Budget
from suite.core.chain import Chain
from suite.core.method import MethodResult, PlanContext
from suite.errors import DepthbenchError

ENTRY_POINT_GROUP = "depthbench.methods"
IN_TREE = (
    "methods.original",
    "methods.dp_depth.method",
    "methods.layermerge.method",
    "methods.layerprune",
    "methods.deeprebirth",
    "methods.relu_reduction",
    "methods.depthshrinker",
)

PlanFunction = Callable[[PlanContext, Budget, BaseModel], MethodResult]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its planning function, config schema and where it comes from."""

    name: str
    plan: PlanFunction
    config: type[BaseModel]
    paper: str
    aliases: tuple[str, ...] = ()
    supports: Callable[[Chain], str | None] = lambda chain: None  # None, or why not

    def make_config(self, values: dict | None = None) -> BaseModel:
        try:
            return self.config(**(values or {}))
        except Exception as err:
            raise DepthbenchError(f"invalid config for method {self.name!r}: {err}") from err


_REGISTRY: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}
_loaded = False


def register_method(
    name: str,
    *,
    config: type[BaseModel],
    paper: str,
    aliases: tuple[str, ...] = (),
    supports: Callable[[Chain], str | None] | None = None,
) -> Callable[[PlanFunction], PlanFunction]:
    """Register ``plan(ctx, budget, config) -> MethodResult`` under ``name`` (and ``aliases``)."""

    def decorate(plan: PlanFunction) -> PlanFunction:
        if name in _REGISTRY or name in _ALIASES:
            raise DepthbenchError(f"method name {name!r} is registered twice")
        spec = MethodSpec(name, plan, config, paper, aliases, supports or (lambda chain: None))
        _REGISTRY[name] = spec
        for alias in aliases:
            _ALIASES[alias] = name
        return plan

    return decorate


def applies_where(find: Callable[[Chain], Sized], reason: str) -> Callable[[Chain], str | None]:
    """A ``supports`` check: the method applies to a chain in which ``find`` finds anything (its
    candidates), and ``reason`` says why not for any other chain."""
    return lambda chain: None if find(chain) else reason


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in IN_TREE:
        importlib.import_module(module)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def get_method(name: str) -> MethodSpec:
    _load()
    spec = _REGISTRY.get(_ALIASES.get(name, name))
    if spec is None:
        known = ", ".join(sorted(_REGISTRY))
        raise DepthbenchError(f"unknown method {name!r}: registered methods are {known}")
    return spec


def list_methods() -> list[MethodSpec]:
    _load()
    return sorted(_REGISTRY.values(), key=lambda spec: spec.name)
