"""The package's import graph has no cycle: every import of an axformer module, at module level or inside a
function, is an edge (a cycle hidden in a function is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "axformer"


def _module_name(path: Path, pkg: Path) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """{module: axformer modules it imports}: ``import axformer.x``, ``from axformer import x``, ``from
    axformer.x import y`` and relative imports, anywhere in the file."""
    modules = {_module_name(p, pkg): p for p in sorted(pkg.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from axformer import x` imports the module axformer.x when there is one
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
            for t in targets:
                # the longest module name that the import names (axformer.x.y -> axformer.x)
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod and t != "axformer":
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "axformer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from axformer import b\n")
    (pkg / "b.py").write_text("from .c import x\n")
    (pkg / "c.py").write_text("import axformer.a\nx = 1\n")
    g = import_graph(pkg)
    assert g["axformer.a"] == {"axformer.b"} and g["axformer.b"] == {"axformer.c"} and g["axformer.c"] == {"axformer.a"}
    assert find_cycle(g) == ["axformer.a", "axformer.b", "axformer.c", "axformer.a"]
    (pkg / "c.py").write_text("x = 1\n")
    assert find_cycle(import_graph(pkg)) is None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per group of modules that import each other (each strongly connected component), so a failure
    names every cycle at once, not only the first."""
    out = []
    remaining = dict(graph)
    while True:
        cycle = find_cycle(remaining)
        if cycle is None:
            return out
        out.append(cycle)
        # drop the cycle's modules and look again
        members = set(cycle)
        remaining = {m: e - members for m, e in remaining.items() if m not in members}


def test_no_import_cycle_in_axformer():
    graph = import_graph()
    assert len(graph) > 20  # the real package was read
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)
