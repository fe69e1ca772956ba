"""The import graph of the project's packages: no cycles, and no arrow pointing up the layers.

The layers, lowest first: models ← connectors ← tasks ← flows ← deployments. A package imports only
from the layers below it; sandbox (the stand-in targets) imports none of tasks, flows or deployments.
Every import counts, those inside functions too; only `if TYPE_CHECKING:` blocks are left out.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "connectors", "tasks", "flows", "deployments", "sandbox")

# What each package may import from the others (itself always).
ALLOWED = {
    "models": set(),
    "connectors": {"models"},
    "tasks": {"models", "connectors"},
    "flows": {"models", "connectors", "tasks"},
    "deployments": {"models", "connectors", "tasks", "flows", "sandbox"},
    "sandbox": {"models", "connectors"},
}


def _modules() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name, for its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names a module imports, anywhere in it except `if TYPE_CHECKING:` blocks."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # `from a import b` imports the module a.b when there is one, else the name b out of a.
            names.extend(f"{base}.{alias.name}" if base else alias.name for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module a dotted name lands in (the longest prefix that is one), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = {_resolve(name, modules) for name in _imported_names(tree, module, path.name == "__init__.py")}
        graph[module] = targets - {None, module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points up the layers, as 'module -> module'."""
    bad = []
    for module, targets in sorted(graph.items()):
        package = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                bad.append(f"{module} -> {target}")
    return bad


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_upward_imports():
    assert upward_imports(import_graph()) == []


def test_the_checks_see_what_they_should():
    """The graph has the arrows it must have; a cycle and an upward arrow are reported."""
    graph = import_graph()
    assert any(t.startswith("models.") for t in graph["connectors.factory"])
    assert "flows.reconcile" in graph["deployments.cli.reconcile"]  # imports inside functions count
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert upward_imports({"models.x": {"tasks.y"}, "tasks.y": {"models.x"}}) == ["models.x -> tasks.y"]


def test_type_checking_imports_are_left_out():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tasks.plan import x\n"
                     "def f():\n    import flows.sweep\n")
    names = _imported_names(tree, "models.m", False)
    assert "tasks.plan.x" not in names and "flows.sweep" in names


def test_relative_imports_resolve_against_the_package():
    tree = ast.parse("from .transport import send\nfrom . import users\nfrom ..errors import Rejected\n")
    assert _imported_names(tree, "connectors.scim2.batch", False) == [
        "connectors.scim2.transport.send", "connectors.scim2.users", "connectors.errors.Rejected"]
    assert _imported_names(ast.parse("from .users import x\n"), "connectors.scim2", True) == ["connectors.scim2.users.x"]
