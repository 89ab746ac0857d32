"""The import graph: layers go one way (tools -> hooks -> trainer) and no modules import each
other in a circle.

A static check over the source (``ast``), so it costs no interpreter start and sees every
import, at module level, inside functions, and under ``if TYPE_CHECKING:``. One edge is left
out of the circle check: the Hook interface's ``TYPE_CHECKING`` import of ``trainer.engine``
(its methods are typed with the engine they are handed, and the engine holds hooks), an import
that never runs. Any other module the engine imports takes what it needs as arguments.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainer", "hooks")
# (importer, imported): the one type-only edge the circle check leaves out.
TYPE_ONLY_ALLOWED = ("trainer.hook", "trainer.engine")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> list[tuple[str, bool]]:
    """``(imported module, under TYPE_CHECKING)`` for every import statement in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.body:
                    visit_one(stmt, True)
                for stmt in child.orelse:
                    visit_one(stmt, type_only)
            else:
                visit_one(child, type_only)

    def visit_one(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((a.name, type_only) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.append((base, type_only))
            found.extend((f"{base}.{a.name}", type_only) for a in node.names)
        visit(node, type_only)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def _graph(skip_allowed: bool) -> dict[str, set[str]]:
    """Edges between the modules of trainer/ and hooks/. Importing ``a.b.c`` runs ``a`` and
    ``a.b`` too, so it is an edge to each of them, except to the importer's own packages
    (which Python has already started)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, set())
        for target, type_only in _imports(path, name):
            importer, imported = TYPE_ONLY_ALLOWED
            allowed = name == importer and f"{target}.".startswith(f"{imported}.")
            if type_only and skip_allowed and allowed:
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod in files and mod != name and not name.startswith(mod + "."):
                    edges.add(mod)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    assert _cycles(_graph(skip_allowed=True)) == []


def test_the_check_sees_a_circle() -> None:
    # The edge left out does close one (engine -> hook -> engine): counted, it is found.
    cycles = _cycles(_graph(skip_allowed=False))
    assert len(cycles) == 1 and {"trainer.engine", "trainer.hook"} <= set(cycles[0])


def test_layers_import_one_way() -> None:
    wrong = []
    for pkg, banned in (("trainer", ("hooks", "tools")), ("hooks", ("tools",))):
        for path in (ROOT / pkg).rglob("*.py"):
            for target, _ in _imports(path, _module_name(path)):
                if target.split(".")[0] in banned:
                    wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert wrong == []
