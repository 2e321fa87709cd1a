"""No circle between eqprop's modules: the import graph, read from the source with ast, is acyclic.

A circle makes a module's import order matter (one half sees the other half-built) and hides it
behind a function-level import; so imports inside functions count too. A package's __init__ is the
package's node; importing a submodule is an edge to that submodule only (Python also runs the
package's __init__ first, but that is no circle unless the __init__ imports the submodule back, and
then the explicit edges show it).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "eqprop"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def _imported(node, here: str, is_package: bool, modules: dict) -> set:
    """The eqprop modules an import statement loads (the deepest module each name resolves to)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's own package upwards
            pkg = here.split(".") if is_package else here.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([base] if base else []))
        # `from a import b`: b is a submodule of a, or a name defined in a
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = set()
    for name in names:
        while name and name not in modules:  # `import a.b.c` of a function or class: its module
            name = name.rpartition(".")[0]
        if name:
            out.add(name)
    return out


def import_graph(modules: dict, lazy: bool) -> dict:
    """module -> the eqprop modules it imports (at module level; with lazy, in functions too)."""
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = ast.walk(tree) if lazy else _top_level(tree.body)
        graph[name] = {m for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))
                       for m in _imported(n, name, path.name == "__init__.py", modules)} - {name}
    return graph


def _top_level(body):
    """Statements run at import time: module body, and what `if`/`try` blocks around it hold."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            yield from _top_level(node.body + node.orelse + getattr(node, "finalbody", [])
                                  + [s for h in getattr(node, "handlers", []) for s in h.body])


def find_cycle(graph: dict):
    """One circle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-function-level"])
def test_eqprop_imports_have_no_cycle(lazy):
    graph = import_graph(_modules(), lazy)
    assert "eqprop.config" in graph and graph["eqprop.config"], "the graph reads no imports: parser broken"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_a_circle():
    # the finder itself: a two-module circle, one made through a function-level import (config <-> tasks
    # was one), and a relative import
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    src = {"p": "from p.b import f\n", "p.b": "def f():\n    from . import c\n", "p.c": "import p\n"}
    modules = {name: name for name in src}
    tree = {name: ast.parse(text) for name, text in src.items()}
    lazy = {n: {m for node in ast.walk(t) if isinstance(node, (ast.Import, ast.ImportFrom))
                for m in _imported(node, n, n == "p", modules)} - {n} for n, t in tree.items()}
    assert lazy == {"p": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p"}}
    assert find_cycle(lazy) == ["p", "p.b", "p.c", "p"]
