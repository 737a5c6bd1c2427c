"""Import boundaries: public names through the subpackage faces, no cycles between subpackages.

Every module of the package, the tests, the benchmarks and the training and inference
scripts is parsed with :mod:`ast` (imports inside functions and ``TYPE_CHECKING``
blocks included: a lazy import is still a dependency; so are the import lines of code a
test runs in a subprocess, found in its string literals), so the check costs no imports
and sees what a run may only reach on one branch. The rules:

1. **Private things stay in their package.** ``prenet_jax.ops._warp`` belongs to
   ``prenet_jax.ops``, ``prenet_jax._util`` to the whole package, a name ``_x`` to the
   package of the module that defines it: only modules inside that package import them.
   Everyone else goes through the face (``from prenet_jax.ops import frame_center``).
   What the tests need that is not public is re-exported by the one declared
   semi-public namespace, :mod:`prenet_jax.internal`; the few exceptions left are
   listed in :data:`ALLOWED`, each with its reason.
2. **No cycles between subpackages.** ``prenet_jax.<a>`` importing ``prenet_jax.<b>``
   (anything in it) is an edge ``a -> b``; the graph of these edges has no cycle, so
   each subpackage can be read, tested and moved with only the ones below it. Nor
   between modules, inside a subpackage too (importing ``pkg._mod`` runs ``pkg`` first).
3. **Every imported module exists**, lazy imports included (a branch that runs rarely
   must not fail on its import).

What is not checked: attribute access to a private module (``io._formats.FORMATS``) and
``monkeypatch.setattr("pkg._mod.NAME", ...)`` strings. Run as a script (``python tests/test_architecture.py``) it prints the counts.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "prenet_jax"
# The code that imports the package: the package itself and the folders around it.
SCANNED = (PACKAGE, "tests", "benchmarks", "train", "infer")
# The declared semi-public namespace: for tests and benchmarks, may change without notice.
INTERNAL = f"{PACKAGE}.internal"

# (importing file, imported module): private imports across packages that stay, and why.
# Keep it short: a new entry needs a reason a reviewer accepts.
ALLOWED: dict[tuple[str, str], str] = {
    ("prenet_jax/evaluation/_pipelines.py", "prenet_jax.ops._refine"): (
        "the evaluation vmaps refine_ellipse's jitted L-BFGS kernel over batches of mean patterns;"
        " the public refine_ellipse refines one pattern and checks it on the host"
    ),
    # A test that replaces a global of a module (monkeypatch) has to name that module.
    ("tests/test_evaluate.py", "prenet_jax.evaluation._tables"): "replaces corrupt_single where the tables look it up",
    ("tests/test_evaluate.py", "prenet_jax.evaluation._stash"): "replaces the source digest of the stash key",
    ("tests/test_faults.py", "prenet_jax.preprocess._diagnostics"): "makes the figure writer fail after two figures",
    ("tests/test_faults.py", "prenet_jax.preprocess._stream"): "makes the stream's post-processing fail",
    ("tests/test_io_real.py", "prenet_jax.io._hdf5"): "pretends an HDF5 filter is missing",
}


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported module, or one name from a module, at a line of a file."""

    file: str  # relative to ROOT, "/"-separated
    line: int
    importer: str | None  # dotted module name inside the package; None for scripts and tests
    module: str  # the absolute module imported (or imported from)
    name: str | None  # the name imported from it (``from module import name``), None for ``import module``

    def __str__(self) -> str:
        what = f"from {self.module} import {self.name}" if self.name else f"import {self.module}"
        return f"{self.file}:{self.line}: {what}"


def _module_name(path: Path) -> str | None:
    """Dotted name of a file inside the package (``prenet_jax/ops/_warp.py`` -> ``prenet_jax.ops._warp``)."""
    rel = path.relative_to(ROOT)
    if rel.parts[0] != PACKAGE:
        return None
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_package(module: str) -> bool:
    return (ROOT / Path(*module.split(".")) / "__init__.py").is_file()


def _is_module(module: str) -> bool:
    return _is_package(module) or (ROOT / Path(*module.split("."))).with_suffix(".py").is_file()


def _resolve(importer: str | None, path: Path, node: ast.ImportFrom) -> str | None:
    """The absolute module of ``from ... import``; None for a relative import outside the package."""
    if not node.level:
        return node.module
    if importer is None:
        return None
    # The package a relative import starts from: the module's own package (itself for an __init__).
    base = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _code_in_strings(tree: ast.AST) -> Iterator[ast.stmt]:
    """Import statements inside string literals (the code a test runs in a subprocess,
    ``python -c``), each placed at the line of its string."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and PACKAGE in node.value:
            for k, line in enumerate(node.value.splitlines()):
                text = line.strip()
                if text.startswith((f"from {PACKAGE}", f"import {PACKAGE}")):
                    try:
                        stmt = ast.parse(text).body[0]
                    except SyntaxError:  # a fragment of an f-string
                        continue
                    stmt.lineno = node.lineno + k
                    yield stmt


def _internal_table(tree: ast.AST) -> Iterator[tuple[int, str, str | None]]:
    """``(line, module, attribute)`` of each entry of :data:`INTERNAL`'s ``_WHERE`` table."""
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "_WHERE":
            for value in node.value.values:
                module, attribute = ast.literal_eval(value)
                yield value.lineno, module, attribute


def iter_imports(files: list[Path] | None = None) -> Iterator[Import]:
    """Every import of the package's modules in the scanned files, lazy ones included."""
    if files is None:
        files = sorted(p for d in SCANNED if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py"))
    for path in files:
        importer = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        file = path.relative_to(ROOT).as_posix()
        if importer == INTERNAL:  # its names are imported by string, on first use
            for line, module, attribute in _internal_table(tree):
                yield Import(file, line, importer, PACKAGE + module, attribute)
        for node in [*ast.walk(tree), *_code_in_strings(tree)]:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        yield Import(file, node.lineno, importer, alias.name, None)
            elif isinstance(node, ast.ImportFrom):
                module = _resolve(importer, path, node)
                if module is None or module.split(".")[0] != PACKAGE:
                    continue
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    if _is_module(sub):  # ``from pkg import submodule`` imports the submodule
                        yield Import(file, node.lineno, importer, sub, None)
                    else:
                        yield Import(file, node.lineno, importer, module, alias.name)


def owner(imp: Import) -> str | None:
    """The package a private module or name belongs to, None when the import is public.

    A private module (a component ``_x``) belongs to the package above it; a private
    name (``_x``, not a dunder) to the package of the module that defines it.
    """
    parts = imp.module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_"):
            return ".".join(parts[:i])
    if imp.name and imp.name.startswith("_") and not imp.name.startswith("__"):
        return imp.module if _is_package(imp.module) else ".".join(parts[:-1])
    return None


def private_crossings(imports: list[Import]) -> list[Import]:
    """Imports of a private module or name from outside the package it belongs to."""
    bad = []
    for imp in imports:
        own = owner(imp)
        if own is None or (imp.importer is not None and (imp.importer == own or imp.importer.startswith(own + "."))):
            continue
        if imp.importer == INTERNAL or (imp.file, imp.module) in ALLOWED:
            continue
        bad.append(imp)
    return bad


def subpackage(module: str) -> str | None:
    """``prenet_jax.ops._warp`` -> ``ops``; ``prenet_jax.config`` -> ``config``; the package root -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def dependency_graph(imports: list[Import]) -> dict[str, dict[str, list[Import]]]:
    """``graph[a][b]``: the imports by which subpackage ``a`` depends on subpackage ``b``.

    The package root (``prenet_jax/__init__.py``, which names everything on first use)
    and :data:`INTERNAL` (which re-exports for tests) sit above every subpackage: they are
    not nodes, and an import of the root from a subpackage (``from .. import __version__``)
    is no edge either.
    """
    graph: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        if imp.importer is None or imp.importer == INTERNAL:
            continue
        a, b = subpackage(imp.importer), subpackage(imp.module)
        if a is None or b is None or a == b:
            continue
        graph.setdefault(a, {}).setdefault(b, []).append(imp)
    return graph


def cycles(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """The strongly connected components with more than one subpackage (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _shortest_cycle(graph: dict[str, dict[str, list[Import]]], comp: list[str]) -> list[str]:
    """A shortest cycle through ``comp[0]`` inside the component (breadth first)."""
    start, inside = comp[0], set(comp)
    back: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(back[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w in inside and w not in back:
                    back[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start, start]


def describe_cycle(graph: dict[str, dict[str, list[Import]]], comp: list[str]) -> str:
    """One cycle of the component, each step with an import that makes it (the first of
    its imports, and how many more), and every other edge inside the component."""
    path = _shortest_cycle(graph, comp)
    lines = [" <-> ".join(comp) + ": " + " -> ".join(path)]
    on_path = set(zip(path, path[1:]))
    for a, b in zip(path, path[1:]):
        imps = graph[a][b]
        lines.append(f"  {a} -> {b}: {imps[0]}" + (f" (+{len(imps) - 1} more)" if len(imps) > 1 else ""))
    others = [(a, b) for a in comp for b in comp if b in graph.get(a, {}) and (a, b) not in on_path]
    if others:
        lines.append("  other edges inside: " + ", ".join(f"{a} -> {b}" for a, b in others))
    return "\n".join(lines)


def test_no_private_imports_across_packages():
    bad = private_crossings(list(iter_imports()))
    assert not bad, (
        f"{len(bad)} import(s) reach into another package's private module or name; import the public name "
        f"from the subpackage's face (prenet_jax.<subpackage>), or, for a test, from {INTERNAL}:\n" + "\n".join(f"  {imp}" for imp in bad)
    )


def test_imported_modules_exist():
    # A lazy import of a module that is not there fails only when its branch runs.
    missing = [imp for imp in iter_imports() if not _is_module(imp.module)]
    assert not missing, "imports of modules that do not exist:\n" + "\n".join(f"  {imp}" for imp in missing)


def test_no_cycles_between_subpackages():
    graph = dependency_graph(list(iter_imports()))
    found = cycles(graph)
    assert not found, "subpackages import each other (lazy imports count):\n" + "\n".join(describe_cycle(graph, c) for c in found)


def module_graph(imports: list[Import]) -> dict[str, dict[str, list[Import]]]:
    """``graph[a][b]``: the imports by which module ``a`` imports module ``b`` (the package
    root and :data:`INTERNAL` left out, as in :func:`dependency_graph`). Importing
    ``pkg._mod`` runs ``pkg/__init__.py`` first: an edge to ``pkg`` too, unless the
    importer is inside ``pkg`` (then ``pkg`` is already being imported)."""
    graph: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        a = imp.importer
        if a is None or a in (PACKAGE, INTERNAL):
            continue
        parts = imp.module.split(".")
        targets = [".".join(parts[:i]) for i in range(2, len(parts) + 1)]  # the packages above it, then itself
        for b in targets:
            if b not in (a, INTERNAL) and not a.startswith(b + "."):
                graph.setdefault(a, {}).setdefault(b, []).append(imp)
    return graph


def test_no_cycles_between_modules():
    # Inside a subpackage too: two modules that import each other (lazily, to dodge the
    # partly initialised module) are one module in two files.
    graph = module_graph(list(iter_imports()))
    found = cycles(graph)
    assert not found, "modules import each other (lazy imports count):\n" + "\n".join(describe_cycle(graph, c) for c in found)


def test_allowed_entries_are_still_needed():
    # An exception that nothing uses any more is removed, so that the list stays short and true.
    used = {(imp.file, imp.module) for imp in iter_imports()}
    stale = [key for key in ALLOWED if key not in used]
    assert not stale, f"ALLOWED entries no import uses any more: {stale}"


def test_internal_names_resolve():
    # The semi-public namespace names modules by string (imported on first use): each must exist.
    import importlib

    internal = importlib.import_module(INTERNAL)
    missing = [name for name in internal.__all__ if not hasattr(internal, name)]
    assert not missing, f"{INTERNAL} names that do not resolve: {missing}"


def test_the_checks_see_a_bad_import(tmp_path, monkeypatch):
    # The rules fail where they should: a private import across packages (lazy, inside a
    # function) and a new cycle, in a throw-away copy of two subpackages.
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    for sub, body in {
        "a": "def f():\n    from ..b._impl import g\n",
        "b": "from ..a import f\n",
    }.items():
        (tmp_path / PACKAGE / sub).mkdir(parents=True)
        (tmp_path / PACKAGE / sub / "__init__.py").write_text(body)
        (tmp_path / PACKAGE / sub / "_impl.py").write_text("def g():\n    pass\n")
    (tmp_path / PACKAGE / "__init__.py").write_text("")
    files = sorted((tmp_path / PACKAGE).rglob("*.py"))
    imports = list(iter_imports(files))
    bad = private_crossings(imports)
    assert [str(b) for b in bad] == [f"{PACKAGE}/a/__init__.py:2: from {PACKAGE}.b._impl import g"], bad
    graph = dependency_graph(imports)
    assert cycles(graph) == [["a", "b"]]
    assert f"a -> b: {PACKAGE}/a/__init__.py:2" in describe_cycle(graph, ["a", "b"])
    assert cycles(module_graph(imports)) == [[f"{PACKAGE}.a", f"{PACKAGE}.b"]]


if __name__ == "__main__":
    imports = list(iter_imports())
    bad = private_crossings(imports)
    reexported = [imp for imp in imports if imp.importer == INTERNAL and owner(imp) is not None]
    graph = dependency_graph(imports)
    found = cycles(graph)
    statements = len({(imp.file, imp.line) for imp in bad})
    print(
        f"private imports across packages: {statements} statements, {len(bad)} names"
        f" (+ {len(ALLOWED)} allowed; {INTERNAL} re-exports {len(reexported)} private names)"
    )
    for imp in bad:
        print(f"  {imp}")
    print(f"subpackage cycles: {len(found)}")
    for comp in found:
        print(describe_cycle(graph, comp))
    print("edges: " + ", ".join(f"{a}->{b}" for a in sorted(graph) for b in sorted(graph[a])))
