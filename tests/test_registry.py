"""The method registry: in-tree names and aliases, and a third-party method found through the
``depthbench.methods`` entry-point group of a real installed distribution."""

from __future__ import annotations

import sys
import textwrap

import pytest

from suite.core import registry
from suite.errors import DepthbenchError

PLUGIN = textwrap.dedent(
    """
    from pydantic import BaseModel, ConfigDict

    from suite.core.method import MethodResult
    from suite.core.registry import register_method
    from suite.core.plan import Plan


    class KeepAllConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        note: str = "none"


    @register_method("keep-all-plugin", config=KeepAllConfig, paper="a plugin", aliases=("kap",))
    def plan(ctx, budget, config):
        return MethodResult(Plan.original(ctx.chain))
    """
)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as if nothing had been looked up yet; whatever a test registers is undone."""
    registry.list_methods()  # in-tree modules are imported once per process: keep what they added
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    monkeypatch.setattr(registry, "_loaded", False)


def test_in_tree_methods_and_aliases():
    names = [spec.name for spec in registry.list_methods()]
    assert names == sorted(
        [
            "original",
            "dp-depth",
            "layermerge",
            "layerprune",
            "deeprebirth",
            "relu-reduction",
            "depthshrinker",
        ]
    )
    assert registry.get_method("kim2023").name == "dp-depth"
    assert registry.get_method("kim2024").name == "layermerge"


def test_unknown_method_and_bad_config_are_named():
    with pytest.raises(DepthbenchError, match="unknown method 'nope': registered methods are"):
        registry.get_method("nope")
    with pytest.raises(DepthbenchError, match="invalid config for method 'dp-depth'"):
        registry.get_method("dp-depth").make_config({"no_such_option": 1})


def test_a_name_cannot_be_registered_twice(fresh_registry):
    spec = registry.get_method("original")
    with pytest.raises(DepthbenchError, match="registered twice"):
        registry.register_method("original", config=spec.config, paper="again")(spec.plan)


def test_an_installed_plugin_registers_through_its_entry_point(
    tmp_path, monkeypatch, fresh_registry
):
    (tmp_path / "depthbench_keep_all.py").write_text(PLUGIN)
    dist_info = tmp_path / "depthbench_keep_all-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: depthbench-keep-all\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[depthbench.methods]\nkeep-all = depthbench_keep_all\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "depthbench_keep_all", raising=False)

    spec = registry.get_method("kap")

    assert spec.name == "keep-all-plugin" and spec.paper == "a plugin"
    assert spec.make_config({"note": "x"}).note == "x"
    assert "keep-all-plugin" in [s.name for s in registry.list_methods()]
