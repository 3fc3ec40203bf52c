"""The layout is the flow: the packages depend on each other in one direction only.

The check reads every module's imports (module level and inside functions, but not the
``if TYPE_CHECKING:`` blocks, which run only under a type checker) and maps each module to its
layer. A plugin (``methods``) is loaded by the registry by name, never imported by the suite.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What each layer may import besides itself; anything else is a layering error.
ALLOWED = {
    "suite": set(),  # errors, console, yaml_input: shared by every layer
    "suite.core": {"suite"},
    "suite.measure": {"suite", "suite.core"},
    "suite.run": {"suite", "suite.core", "suite.measure"},
    "suite.cli": {"suite", "suite.core", "suite.measure", "suite.run"},
    "methods": {"suite", "suite.core", "suite.measure", "suite.run", "methods"},
}


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "methods":
        return "methods"
    if parts[0] != "suite":
        return None
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in {"core", "measure", "run", "cli"}):
        candidate = ".".join(parts[:2])
        if candidate in ALLOWED:
            return candidate
    return "suite"


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for package in ("suite", "methods"):
        for path in sorted((ROOT / package).rglob("*.py")):
            source = module_name(path)
            for target in imports(path):
                a, b = layer(source), layer(target)
                if b is not None and a != b:
                    edges.setdefault((a, b), []).append(f"{source} -> {target}")
    return edges


def test_every_import_between_layers_goes_down():
    wrong = {
        edge: examples
        for edge, examples in layer_edges().items()
        if edge[1] not in ALLOWED[edge[0]]
    }
    assert not wrong, wrong


def test_the_layer_graph_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for a, b in layer_edges():
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            n == goal or (n not in seen and reaches(n, goal, seen | {n}))
            for n in graph.get(start, ())
        )

    assert not [node for node in graph if reaches(node, node, set())]


def test_the_check_sees_a_wrong_import(tmp_path):
    wrong = tmp_path / "m.py"
    wrong.write_text("from suite.run.grid import run_experiment\n")
    target = next(iter(imports(wrong)))
    assert layer(target) == "suite.run" and "suite.run" not in ALLOWED["suite.core"]
