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


# ------------------------------------------------------------------------------- no cross-module private names
ROOT = PKG.parent
CHECKED = ("axformer", "baselines")  # the package and the peer methods
MAX_BASELINE_LINES = 600


def _private(name: str) -> bool:
    """``_x`` is private; ``__future__`` / ``__init__`` (dunders) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(node: ast.ImportFrom, mod: str, is_pkg: bool) -> str:
    """The module an ``ImportFrom`` reads from, relative imports resolved against ``mod``."""
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_module(dotted: str, root: Path) -> bool:
    p = root.joinpath(*dotted.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def private_uses(root: Path = ROOT, packages: tuple[str, ...] = CHECKED) -> list[str]:
    """Every use of another module's private name in the modules of ``packages`` under ``root``, as
    ``file:line: what``: ``from X import _name`` (X any module, a package's own ``__init__`` included), an import
    of a private module (``from X._mod import y``, ``import X._mod``), and ``mod._name`` where ``mod`` is a
    module of ``packages`` that the file imported (``from axformer import tables as R`` ... ``R._order``)."""
    found = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            mod = _module_name(path, root / pkg)
            rel = path.relative_to(root)
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            modules_bound: set[str] = set()  # names bound to first-party modules in this file
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    source = _absolute(node, mod, path.name == "__init__.py")
                    if any(_private(p) for p in source.split(".")):
                        found.append(f"{rel}:{node.lineno}: from {source} import ... (a private module)")
                    for a in node.names:
                        if _private(a.name):
                            found.append(f"{rel}:{node.lineno}: from {source} import {a.name}")
                        elif source.split(".")[0] in packages and _is_module(f"{source}.{a.name}", root):
                            modules_bound.add(a.asname or a.name)
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if any(_private(p) for p in a.name.split(".")):
                            found.append(f"{rel}:{node.lineno}: import {a.name} (a private module)")
                        elif a.name.split(".")[0] in packages:
                            modules_bound.add(a.asname or a.name.split(".")[0])
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and _private(node.attr):
                    # the leftmost name of a dotted chain: `R._x`, `axformer.reporting.tables._x`
                    base = node.value
                    while isinstance(base, ast.Attribute):
                        base = base.value
                    if isinstance(base, ast.Name) and base.id in modules_bound:
                        found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_private_use_check_sees_every_form(tmp_path):
    pkg = tmp_path / "axformer"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__.py", "sub/__init__.py", "sub/_hidden.py"):
        (pkg / name).write_text("")
    (pkg / "owner.py").write_text("def _helper():\n    pass\n\n\ndef public():\n    return _helper()\n")
    (pkg / "clean.py").write_text("from __future__ import annotations\n\nfrom axformer.owner import public\n"
                                  "from axformer import owner\n\nx = owner.public()\n")
    assert private_uses(tmp_path, ("axformer",)) == []  # a module's own private names are its own business
    (pkg / "a.py").write_text("from axformer.owner import _helper\n")
    (pkg / "b.py").write_text("def f():\n    from .owner import public, _helper\n")
    (pkg / "c.py").write_text("from axformer import owner as O\n\ndef f():\n    return O._helper()\n")
    (pkg / "d.py").write_text("from axformer.sub._hidden import x\nimport axformer.sub._hidden\n")
    (pkg / "e.py").write_text("from axformer import _REGISTRY\n")  # the package's own __init__ is no exception
    found = private_uses(tmp_path, ("axformer",))
    assert [f.split(":")[0] for f in found] == [f"axformer/{n}.py" for n in "abcdde"], found
    assert "from axformer.owner import _helper" in found[0] and "O._helper" in found[2]


def test_no_module_uses_another_modules_private_names():
    """A name another module needs is public in the module that owns it (and imported from there), not reached
    for under its private spelling: `from X import _name`, `import X._mod`, `mod._name`."""
    found = private_uses()
    assert not found, "private names used across modules (make them public where they are defined):\n" + "\n".join(found)


def test_no_baseline_module_over_600_lines():
    """One concept per module: a peer method that grows past 600 lines is split (baselines/structure.py,
    mask_tuning.py hold what fisher.py outgrew)."""
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in sorted((ROOT / "baselines").rglob("*.py"))}
    assert len(sizes) >= 8  # the real folder was read
    over = {n: s for n, s in sizes.items() if s > MAX_BASELINE_LINES}
    assert not over, f"baselines/ modules over {MAX_BASELINE_LINES} lines (split them by concept): {over}"
