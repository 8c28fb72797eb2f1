"""The package's imports flow one way: read from the source (AST, imports inside functions
included, ``if TYPE_CHECKING:`` blocks excluded), there is no import circle among l2bg's modules
and no module imports from a higher layer than its own. The layer order is written here and in
docs/design.md §3; a test keeps the two the same. Also the size rules: no module over 500 lines,
at most eight modules holding code directly in l2bg/ besides __init__ and __main__."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: lowest first; a module may import its own layer and the layers below it
LAYERS = ("base", "rsa.reference", "kernels", "rsa", "data", "net", "conflict", "learn",
          "search", "avalanche", "cli", "l2bg")
#: compiled extension modules of the package (not .py files): the bottom layer loads them
EXTENSIONS = {"l2bg._C": "base"}
MAX_LINES = 500
MAX_TOP_MODULES = 8


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> source file of every module of l2bg (kernels/ installs as l2bg.kernels)."""
    out = {}
    for base, prefix in ((root / "l2bg", ("l2bg",)), (root / "kernels", ("l2bg", "kernels"))):
        for p in sorted(base.rglob("*.py")):
            parts = [*prefix, *p.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = p
    return out


def layer_of(mod: str) -> str:
    """The layer of a module: its longest layer prefix; __main__ modules, the package's
    __init__ and anything else in l2bg/ itself (the old paths' shims) are the top layer."""
    if mod in EXTENSIONS:
        return EXTENSIONS[mod]
    if mod.rpartition(".")[2] == "__main__":
        return "l2bg"
    matches = [layer for layer in LAYERS[:-1]
               if mod == f"l2bg.{layer}" or mod.startswith(f"l2bg.{layer}.")]
    return max(matches, key=len, default="l2bg")


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(mod: str, path: Path, known: set[str]) -> set[str]:
    """The l2bg modules ``mod`` imports at run time (module level or inside functions).
    ``from a.b import c`` names the module a.b.c if there is one, else a.b."""
    tree = ast.parse(path.read_text(), str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for c in child.orelse:
                    visit(c)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "l2bg":
                        add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join([*parts, *([base] if base else [])])
                if base.split(".")[0] == "l2bg":
                    for alias in child.names:
                        add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
            visit(child)

    visit(tree)
    found.discard(mod)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = package_modules(root)
    known = set(mods) | set(EXTENSIONS)
    graph = {m: imports_of(m, p, known) for m, p in mods.items()}
    graph.update({m: set() for m in EXTENSIONS})
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def upward(graph: dict[str, set[str]]) -> list[str]:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return [f"{m} ({layer_of(m)}) imports {d} ({layer_of(d)})"
            for m, deps in sorted(graph.items()) for d in sorted(deps)
            if rank[layer_of(d)] > rank[layer_of(m)]]


def test_no_import_circle():
    assert circles(import_graph(ROOT)) == []


def test_no_import_from_a_higher_layer():
    assert upward(import_graph(ROOT)) == []


def test_every_layer_has_modules():
    """The order names real packages: a renamed package must be renamed here too."""
    assert {layer_of(m) for m in package_modules(ROOT)} == set(LAYERS)


def test_design_doc_states_the_same_order():
    text = (ROOT / "docs" / "design.md").read_text()
    m = re.search(r"Layer order[^\n]*\n+\s*(`[^\n]+`)", text)
    assert m, "docs/design.md §3 must state the layer order"
    assert tuple(re.findall(r"`([\w.]+)`", m.group(1))) == LAYERS


def test_module_sizes():
    big = {m: n for m, p in package_modules(ROOT).items()
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}
    top = [p.name for p in (ROOT / "l2bg").glob("*.py")
           if p.name not in ("__init__.py", "__main__.py")]
    assert len(top) <= MAX_TOP_MODULES, top


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """A package l2bg with one base module and one learn module, written per test."""
    for d in ("l2bg/base", "l2bg/learn"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "__init__.py").write_text("")
    (tmp_path / "l2bg" / "__init__.py").write_text("")
    (tmp_path / "l2bg" / "learn" / "step.py").write_text("from l2bg.base import low\n")
    return tmp_path


@pytest.mark.parametrize("source, circle, up", [
    ("X = 1\n", False, False),
    ("def f():\n    from l2bg.learn.step import x\n", True, True),  # inside a function
    ("import l2bg.learn.step\n", True, True),
    ("from l2bg.learn import step\n", True, True),
    ("from ..learn import step\n", True, True),  # relative
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from l2bg.learn import step\n",
     False, False),
    ("from l2bg import _C\n", False, False),  # the compiled extension, bottom layer
])
def test_checker_sees_what_it_must(toy: Path, source: str, circle: bool, up: bool):
    (toy / "l2bg" / "base" / "low.py").write_text(source)
    graph = import_graph(toy)
    assert bool(circles(graph)) == circle
    assert bool(upward(graph)) == up
