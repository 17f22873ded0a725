"""The package's layout is its architecture (DESIGN §1): the code sits in subpackages, each of whose
``__init__`` docstring says what it owns and, on its ``May import:`` line, which other parts of axformer it may
import; every import in the package (module level or inside a function) keeps to those lines, and no module
grows past 600 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "axformer"
MAX_LINES = 600


def subpackages(pkg: Path = PKG) -> list[Path]:
    return sorted(p.parent for p in pkg.glob("*/__init__.py"))


def declared_imports(init: Path) -> set[str]:
    """The parts of axformer a subpackage declares it may import: subpackage names and top-level modules
    (``axformer.utils`` -> ``utils``), from the ``May import:`` sentence of its docstring."""
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    m = re.search(r"May import:(.*?)(?:\.\s|\.$)", doc.replace("\n", " "), re.S)
    assert m, f"{init}: the docstring has no 'May import:' sentence"
    out = set()
    for item in re.split(r"[,;]| and ", m.group(1)):
        words = item.split()
        if not words or words[0] in ("nothing", "Nothing"):
            continue
        out.add(words[0].removeprefix("axformer.").split(".")[0])
    return out


def imported_parts(path: Path) -> set[str]:
    """The parts of axformer (subpackage or top-level module) that the file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "axformer":
            parts = node.module.split(".")
            out |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("axformer.")}
    return out


def test_code_lives_in_subpackages():
    subs = subpackages()
    assert len(subs) >= 6, subs
    for sub in subs:
        assert len(list(sub.glob("*.py"))) >= 2, f"{sub.name} holds no module"
    top = sorted(p.name for p in PKG.glob("*.py"))
    # what stays at the top: the entry point and the few helpers every part shares
    assert set(top) <= {"__init__.py", "cli.py", "utils.py", "bounds.py", "device.py", "stats.py"}, top


def test_declared_imports_parse():
    got = declared_imports(PKG / "surgery" / "__init__.py")
    assert got == {"utils"}
    assert {"taskdata", "surgery", "records", "utils"} <= declared_imports(PKG / "encoders" / "__init__.py")


def test_every_subpackage_keeps_to_its_declared_imports():
    bad = []
    for sub in subpackages():
        allowed = declared_imports(sub / "__init__.py") | {sub.name}
        for path in sorted(sub.glob("*.py")):
            extra = imported_parts(path) - allowed
            if extra:
                bad.append(f"{path.relative_to(PKG.parent)} imports {sorted(extra)} (not on {sub.name}'s "
                           f"'May import:' line)")
    assert not bad, "\n".join(bad)


def test_no_module_over_600_lines():
    long = [f"{p.relative_to(PKG.parent)}: {n}" for p in sorted(PKG.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, long


def package_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """{subpackage: the other subpackages its modules import}."""
    return {sub.name: {x for p in sub.glob("*.py") for x in imported_parts(p) if (pkg / x).is_dir()} - {sub.name}
            for sub in subpackages(pkg)}


def test_subpackages_form_layers():
    """No two subpackages import each other, directly or round a longer loop (a topological order exists)."""
    graph, order = package_graph(), []
    while graph:
        free = sorted(k for k, deps in graph.items() if not deps - set(order))
        assert free, f"subpackage import cycle among {sorted(graph)}: {graph}"
        order += free
        graph = {k: v for k, v in graph.items() if k not in free}
    assert order.index("taskdata") < order.index("steps") and order[-1] == "steps", order
