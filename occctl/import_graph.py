"""The static import graph of ``occctl/`` and ``backends/``, and its cycles: ``python -m occctl.import_graph``.

Every ``import`` and ``from ... import`` counts, wherever it sits (module level or lazily inside a function), except
those under ``if TYPE_CHECKING:``, which never run. An edge goes to the module named, or to ``package.name`` when
that is a module of ours (``from occctl.tasks import arith``); importing a submodule also runs its package's
``__init__``, but that implicit edge is left out, as every import-cycle tool does. Exit 1 and one line per cycle
when there is one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("occctl", "backends")


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the packages in ``root``."""
    files = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def build_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in files)
                continue
            source = _absolute(node, module, path.name == "__init__.py")
            for alias in node.names:
                child = f"{source}.{alias.name}"
                if child in files:
                    targets.add(child)
                elif source in files:
                    targets.add(source)
        targets.discard(module)
        graph[module] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one cycle through them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_through(graph, set(component)) for component in components]


def _cycle_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle inside a strongly connected component, from its first module back to it (breadth-first)."""
    start = min(component)
    parents = {start: start}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node] & component):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return path[::-1] + [start]
            if target not in parents:
                parents[target] = node
                queue.append(target)
    return sorted(component)


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    cycles = find_cycles(build_graph(root))
    for cycle in cycles:
        print("import cycle: " + " -> ".join(cycle))
    print(f"{len(cycles)} import cycle(s) in {', '.join(PACKAGES)}")
    return 1 if cycles else 0


if __name__ == "__main__":
    raise SystemExit(main())
