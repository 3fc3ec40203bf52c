"""Shell completion of model, method and profile names, answered without importing torch.

A completion request runs the CLI once per key press, so it must start as fast as ``--help``.
The method registry imports every plugin (and so torch) to learn the names; here the names are
read from the source instead: the in-tree plugin modules listed in ``suite.core.registry.IN_TREE``
are parsed (``ast``) for their ``register_method("name", aliases=(...))`` decorators, and
third-party plugins contribute their entry-point names. Model names are the keys of
``suite.core.models``' builder table, read the same way; profile names are the files on the
profile search path.
"""

from __future__ import annotations

import ast
import importlib.util
from importlib.metadata import entry_points
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1]
ENTRY_POINT_GROUP = "depthbench.methods"  # suite.core.registry's (a test keeps them equal)


# typer keeps the names that start with what was typed (``incomplete``)


def complete_models(incomplete: str) -> list[str]:
    return model_names()


def complete_methods(incomplete: str) -> list[str]:
    return method_names()


def complete_profiles(incomplete: str) -> list[str]:
    from suite.measure.profiles import profile_files

    try:
        return [path.stem for path in profile_files()]
    except Exception:  # a broken search path must not break the shell; the command will say why
        return []


def model_names() -> list[str]:
    """The keys of ``_BUILDERS`` in suite/core/models.py."""
    for node in ast.walk(_parse(SUITE / "core" / "models.py")):
        if isinstance(node, ast.AnnAssign | ast.Assign) and "_BUILDERS" in _targets(node):
            return [key.value for key in node.value.keys if isinstance(key, ast.Constant)]
    return []


def method_names() -> list[str]:
    """Names and aliases of the in-tree methods, and the entry-point names of plugins."""
    names = []
    for module in _in_tree_modules():
        names += _registered_names(module)
    names += [entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)]
    return sorted(set(names))


def _in_tree_modules() -> list[str]:
    """``IN_TREE`` of suite/core/registry.py, read without importing it (it imports torch)."""
    for node in ast.walk(_parse(SUITE / "core" / "registry.py")):
        if isinstance(node, ast.Assign) and "IN_TREE" in _targets(node):
            return list(ast.literal_eval(node.value))
    return []


def _registered_names(module: str) -> list[str]:
    """The names and aliases a plugin module registers with ``@register_method(...)``."""
    top, _, rest = module.partition(".")
    spec = importlib.util.find_spec(top)  # a top-level package is found, not imported
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(spec.submodule_search_locations[0], *rest.split(".")).with_suffix(".py")
    if not path.is_file():
        return []
    names = []
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_method":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.append(node.args[0].value)
            for keyword in node.keywords:
                if keyword.arg == "aliases":
                    names += list(ast.literal_eval(keyword.value))
    return names


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _targets(node: ast.Assign | ast.AnnAssign) -> set[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return {target.id for target in targets if isinstance(target, ast.Name)}
