"""tuneforge's modules import as a DAG (function-level and TYPE_CHECKING imports included), and nothing
outside tuneforge/stages/ imports a stage module: stages import components, never the reverse. The graph
is read from the source (AST), so nothing is imported and a broken module elsewhere cannot hide a cycle.
The same logic as /work/shared/hooks/import_graph.py, with one refinement: `from pkg import sub` where
pkg.sub is a module is an edge to pkg.sub only (as `import pkg.sub` is), not also to pkg's __init__."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

PACKAGE = "tuneforge"


def package_root() -> Path:
    """src/ of the tuneforge in use (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec and spec.origin, "tuneforge is not importable"
    return Path(spec.origin).parent.parent


def import_graph(src: Path, pkg: str) -> dict[str, set[str]]:
    """{module: {tuneforge modules it imports anywhere in its file}}."""
    mods = {}
    for f in sorted((src / pkg).rglob("*.py")):
        mods[".".join(f.relative_to(src).with_suffix("").parts).removesuffix(".__init__")] = f

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    parts = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from pkg import name` reads pkg's __init__
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if t == pkg or t.startswith(pkg + "."):
                    r = resolve(t)
                    if r and r != m:
                        edges[m].add(r)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(edges):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def stage_imports_from_outside(edges: dict[str, set[str]], pkg: str = PACKAGE) -> list[tuple[str, str]]:
    stages = f"{pkg}.stages"
    return sorted((m, t) for m, ts in edges.items() for t in ts
                  if t.startswith(stages + ".") and m != stages and not m.startswith(stages + "."))


def _describe(component: list[str], edges: dict[str, set[str]]) -> str:
    inside = set(component)
    links = [f"{m} -> {t}" for m in component for t in sorted(edges[m] & inside)]
    return " <-> ".join(component) + "\n      " + "\n      ".join(links)


def test_tuneforge_modules_form_no_import_cycle():
    edges = import_graph(package_root(), PACKAGE)
    assert len(edges) > 50  # the whole package was read
    found = cycles(edges)
    assert not found, "import cycles (function-level imports count):\n  " + "\n  ".join(
        _describe(c, edges) for c in found)


def test_no_module_outside_stages_imports_a_stage_module():
    bad = stage_imports_from_outside(import_graph(package_root(), PACKAGE))
    assert not bad, "components import stage modules (use tuneforge.stage_info or the package's STAGES):\n  " + \
        "\n  ".join(f"{m} -> {t}" for m, t in bad)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize("files, want", [
    ({"__init__.py": "", "a.py": "import pkg.b\n", "b.py": "def f():\n    from pkg.a import x\n"},
     [["pkg.a", "pkg.b"]]),  # a function-level import closes the cycle
    ({"__init__.py": "", "a.py": "from . import b\n", "b.py": "from .a import x\n"}, [["pkg.a", "pkg.b"]]),
    ({"__init__.py": "from pkg import a\n", "a.py": "from pkg import b\n", "b.py": ""}, []),  # submodules: no cycle
    ({"__init__.py": "from pkg import a\nX = 1\n", "a.py": "from pkg import X\n"}, [["pkg", "pkg.a"]]),
    ({"__init__.py": "", "s/__init__.py": "from pkg.s import one\n", "s/one.py": "", "c.py": "import pkg.s\n"}, []),
])
def test_the_graph_finds_what_python_would_import(files, want, tmp_path):
    assert cycles(import_graph(_write(tmp_path, files), "pkg")) == want


def test_a_component_importing_a_stage_module_is_found(tmp_path):
    src = _write(tmp_path, {"__init__.py": "", "stages/__init__.py": "from pkg.stages import sft\nSTAGES = {}\n",
                            "stages/sft.py": "from pkg import tool\n", "tool.py": "",
                            "ok.py": "from pkg.stages import STAGES\n",
                            "bad.py": "def f():\n    from pkg.stages import sft\n"})
    assert stage_imports_from_outside(import_graph(src, "pkg"), "pkg") == [("pkg.bad", "pkg.stages.sft")]
