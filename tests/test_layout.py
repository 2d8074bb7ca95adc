"""The layers of the code base: no module imports from a higher layer, and there are no import cycles.

From the bottom (a module may import from its own layer and the layers below it):

    0  turing_models.errors, turing_models.io         errors and the one I/O layer
    1  turing_kernels                                 Triton kernels and their fallbacks
    2  turing_models.layers                           shared building blocks of the families
    3  turing_models.nlg, turing_models.nlu           the model families (and their adapters)
    4  turing_models.zoo, .data, .convert, and the    the zoo table, data pipeline, converters;
       package facade ``turing_models/__init__.py``   the facade re-exports the families
    5  turing_models.training                         the Trainer, configs, pretraining
    6  turing_models.tasks, turing_models.hub         fine-tuning/evaluation tasks, the Hub
    7  turing_models.recipes (``recipes/``)           the command-line programs

Only ``turing_models.layers`` imports ``turing_kernels``. Imports inside functions count (a lazy
import is still a dependency); imports under ``if TYPE_CHECKING:`` do not.
``python tests/test_layout.py`` prints every violation.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]

#: package roots on disk -> their import names (the wheel maps recipes/ to turing_models.recipes)
SOURCES = {"turing_models": ROOT / "turing_models", "turing_kernels": ROOT / "turing_kernels",
           "turing_models.recipes": ROOT / "recipes"}

LAYERS: dict[str, int] = {
    "turing_models.errors": 0, "turing_models.io": 0,
    "turing_kernels": 1,
    "turing_models.layers": 2,
    "turing_models.nlg": 3, "turing_models.nlu": 3,
    "turing_models.zoo": 4, "turing_models.data": 4, "turing_models.convert": 4, "turing_models": 4,
    "turing_models.training": 5,
    "turing_models.tasks": 6, "turing_models.hub": 6,
    "turing_models.recipes": 7,
}


def modules() -> dict[str, Path]:
    """Every module of the library, the kernels and the recipes: import name -> file."""
    found: dict[str, Path] = {}
    for name, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(not p.isidentifier() for p in parts) or "__pycache__" in rel.parts:
                continue
            if name == "turing_models" and parts[:1] == ["recipes"]:
                continue
            found[".".join([name, *parts])] = path
    return found


def layer_of(module: str) -> Optional[int]:
    """The layer of ``module``: that of its longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node``, skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import of our own modules in ``path``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pkg import submodule`` imports the submodule
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for target in targets:
            if target == "kernels" or target.startswith("kernels."):
                yield target, node.lineno  # the top-level name the layout forbids
            elif layer_of(target) is not None or target in known:
                yield target, node.lineno


def graph() -> tuple[dict[str, list[tuple[str, int]]], dict[str, Path]]:
    known = modules()
    edges = {m: sorted({(t, line) for t, line in imports(m, p, known) if t != m}) for m, p in known.items()}
    return edges, known


def violations() -> list[str]:
    """Imports from a higher layer, imports of the bare ``kernels`` name, unplaced modules."""
    edges, known = graph()
    found = []
    for module, targets in sorted(edges.items()):
        here = layer_of(module)
        where = known[module].relative_to(ROOT)
        if here is None:
            found.append(f"{where}: module {module} is in no layer; add its package to LAYERS in tests/test_layout.py")
            continue
        for target, line in targets:
            if target == "kernels" or target.startswith("kernels."):
                found.append(f"{where}:{line}: imports the top-level name '{target}'; use turing_kernels")
                continue
            there = layer_of(target)
            if there is not None and there > here:
                found.append(f"{where}:{line}: {module} (layer {here}) imports {target} (layer {there})")
    return found


def cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    edges, known = graph()
    adjacency = {m: sorted({t for t, _ in ts if t in known}) for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in adjacency.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(adjacency):
        if v not in index:
            visit(v)
    return sorted(groups)


# ----------------------------------------------------------------------------- tests


def test_the_checker_sees_up_arrows_and_cycles(tmp_path, monkeypatch):
    """A planted up-arrow (layers importing nlg) and a planted cycle are found."""
    pkg = tmp_path / "turing_models"
    (pkg / "layers").mkdir(parents=True)
    (pkg / "nlg").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "layers" / "__init__.py").write_text("def f():\n    from ..nlg import model\n")
    (pkg / "nlg" / "__init__.py").write_text("")
    (pkg / "nlg" / "model.py").write_text("from . import heads\nimport kernels\n")
    (pkg / "nlg" / "heads.py").write_text("from turing_models.nlg import model\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", {"turing_models": pkg})
    found = violations()
    assert any("turing_models.layers (layer 2) imports turing_models.nlg.model (layer 3)" in v for v in found)
    assert any("imports the top-level name 'kernels'" in v for v in found)
    assert cycles() == [["turing_models.nlg.heads", "turing_models.nlg.model"]]


def test_every_module_has_a_layer():
    unplaced = [v for v in violations() if "is in no layer" in v]
    assert not unplaced, "\n".join(unplaced)


def test_no_module_imports_from_a_higher_layer():
    found = [v for v in violations() if "is in no layer" not in v]
    assert not found, "imports against the layering:\n" + "\n".join(found)


def test_only_the_layers_call_the_kernels():
    """turing_models.layers is the one door to turing_kernels (its availability check lives there)."""
    edges, known = graph()
    found = [f"{known[m].relative_to(ROOT)}:{line}: {m} imports {t}" for m, ts in sorted(edges.items())
             for t, line in ts if t.split(".")[0] == "turing_kernels"
             and not m.startswith(("turing_kernels", "turing_models.layers"))]
    assert not found, "\n".join(found)


def test_no_import_cycles():
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(group) for group in found)


def test_every_package_ships_in_the_wheel():
    """pyproject lists its packages by hand: a new package folder must be added there."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert packages <= listed, f"packages missing from pyproject.toml: {sorted(packages - listed)}"


if __name__ == "__main__":
    problems = violations()
    print("\n".join(problems) or "no layering violations")
    for group in cycles():
        print("cycle: " + " <-> ".join(group))
