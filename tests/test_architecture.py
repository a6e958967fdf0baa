"""The package's import graph follows the layering in docs/architecture.md: every import (including those inside
functions) points down or sideways within a layer, never up; there are no cycles; and the modules with a
narrow job import only what that job needs (models: torch, models.* and the choices; pipelines: data and the kernels;
augment: the kernels, the choices and data's draws; the kernels and the list of choices: nothing of the project)."""

from __future__ import annotations

import ast
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
# Source folder -> the package name it installs as (pyproject's package-dir).
PACKAGES = {"fasttrain": REPO / "fasttrain", "fasttrain.pipelines": REPO / "pipelines",
            "fasttrain.cuda_ext": REPO / "cuda_ext"}

# Layer of each top-level part of the package: a module may import parts of its own layer or below, never above.
# Within a layer the graph must still be acyclic. Parts not listed here fail the test: place new ones.
LAYERS: dict[str, int] = {
    "choices": 0, "words": 0,
    "config": 1, "fileio": 1, "resolution": 1, "recipes": 1, "outputs": 1,
    "data": 2,
    "models": 3, "cuda_ext": 3, "losses": 3, "runtime": 3, "reproducibility": 3, "runclock": 3,
    "augment": 4, "pipelines": 4, "optim": 4, "evaluate": 4, "checkpoint": 4, "stopping": 4, "rundisk": 4,
    "distributed": 4, "ema": 4, "monitor": 4, "regularizers": 4, "progress": 4, "runlog": 4, "plots": 4,
    "rundir": 4, "init_weights": 4, "weight_files": 4, "callbacks": 4, "loggers": 4, "tasks": 4, "extend": 4,
    "tables": 4,
    "steps": 5, "runsetup": 5, "report": 5, "inference": 5,
    "train": 6, "retrieval": 6,
    "api": 7, "lr_find": 7, "exporting": 7, "zoo_cmd": 7,
    "cli": 8, "cli_options": 8,
    "__main__": 9, "__init__": 9,
}
# Parts with a narrow job: the only project parts each may import (besides itself).
ONLY = {
    "choices": set(),
    "cuda_ext": set(),
    "models": {"choices"},  # the one did-you-mean hint
    "pipelines": {"data", "choices", "cuda_ext"},  # cuda_ext: the GPU JPEG decoder's crop-resize kernel
    "augment": {"cuda_ext", "data", "choices"},  # data: the counter-based draws of data/crops.py (photo.py)
}
NEVER = {"distributed": {"augment", "evaluate"}}
# Entry points: nothing imports them but the layers that drive them.
IMPORTED_ONLY_BY = {"cli": {"__main__"}, "cli_options": {"cli"}, "train": {"cli", "api", "lr_find"}}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (installed names)."""
    out = {}
    for pkg, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts]
            if any(p.startswith(("test", ".")) or p == "__pycache__" for p in parts):
                continue
            name = ".".join([pkg, *parts])
            out[name.removesuffix(".__init__") if parts[-1] == "__init__" else name] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (module level or inside functions)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                cands = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_pkg, node)
                cands = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for cand in cands:
                # the longest prefix that is a project module (`from .x import y` may name a function y)
                while cand and cand not in mods:
                    cand = cand.rpartition(".")[0]
                if cand and cand != name and cand.startswith("fasttrain"):
                    targets.add(cand)
        graph[name] = targets
    return graph


def part(module: str) -> str:
    """The top-level part a module belongs to: fasttrain.data.convert -> data; fasttrain -> __init__."""
    rest = module.split(".")[1:]
    return rest[0] if rest else "__init__"


def _package_inits(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Edges from a package's __init__ to its own submodules (re-exports) and from submodules to their
    package's __init__ that only re-exports: both are part of one package, not a layering question."""
    return {(a, b) for a, bs in graph.items() for b in bs if b.startswith(a + ".") or a.startswith(b + ".")}


def test_every_part_has_a_layer():
    missing = sorted({part(m) for m in _modules()} - set(LAYERS))
    assert not missing, f"place these in LAYERS (and in docs/architecture.md): {missing}"


def test_imports_point_down_and_respect_narrow_parts():
    graph = import_graph()
    bad = []
    for a, targets in graph.items():
        pa = part(a)
        for b in targets:
            pb = part(b)
            if pa == pb or b == "fasttrain":  # the package root holds only the version and the lazy public API
                continue
            if pb in IMPORTED_ONLY_BY and pa not in IMPORTED_ONLY_BY[pb]:
                bad.append(f"{a} -> {b}: only {sorted(IMPORTED_ONLY_BY[pb])} may import {pb}")
            if pa in ONLY and pb not in ONLY[pa]:
                bad.append(f"{a} -> {b}: {pa} may import only {sorted(ONLY[pa]) or 'nothing of the project'}")
            if pb in NEVER.get(pa, ()):
                bad.append(f"{a} -> {b}: {pa} must not import {pb}")
            if LAYERS.get(pb, 99) > LAYERS.get(pa, -1) and pa != "__init__":
                bad.append(f"{a} -> {b}: layer {LAYERS.get(pa)} imports layer {LAYERS.get(pb)}")
    assert not bad, "import rules broken:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = import_graph()
    skip = _package_inits(graph)
    # the package root (__init__) sits above everything and imports lazily: leave it out of cycles
    edges = {a: {b for b in bs if (a, b) not in skip and b != "fasttrain"} for a, bs in graph.items()
             if a != "fasttrain"}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles[:20])


def test_graph_sees_imports_inside_functions():
    """cli imports train and the retrieval trainer only inside its launch function (to start fast): the
    walker must see those edges, or the rules above prove nothing about lazy imports."""
    graph = import_graph()
    assert "fasttrain.train" in graph["fasttrain.cli"], "the walker misses imports inside functions"
    assert "fasttrain.retrieval.trainer" in graph["fasttrain.cli"]


def test_every_rule_names_a_part_that_exists():
    """A rule about a part that was renamed or removed would pass forever: every part named in LAYERS,
    ONLY, NEVER and IMPORTED_ONLY_BY must be a module or folder of the package."""
    parts = {part(name) for name in _modules()}
    named = set(LAYERS) | set(ONLY) | set(NEVER) | set(IMPORTED_ONLY_BY)
    named |= {p for ps in [*ONLY.values(), *NEVER.values(), *IMPORTED_ONLY_BY.values()] for p in ps}
    assert not named - parts, f"rules name parts that do not exist: {sorted(named - parts)}"


def test_architecture_page_names_every_module_and_only_existing_ones():
    """docs/architecture.md is the map of the package: every top-level part appears in it, and every
    module file it names (`name.py`, `folder/`) exists."""
    import re

    page = (REPO / "docs" / "architecture.md").read_text()
    parts = {part(name) for name in _modules()} - {"__init__", "__main__"}
    missing = sorted(p for p in parts if not re.search(rf"\b{re.escape(p)}(\.py|/|\b)", page))
    assert not missing, f"docs/architecture.md does not mention {missing}"
    named_files = set(re.findall(r"`(?!path/)(?:[a-z_0-9]+/)*([a-z_0-9]+)\.py", page))  # `name.py`, `folder/name.py`
    stale = sorted(n for n in named_files if n not in parts and not list(REPO.rglob(f"{n}.py")))
    assert not stale, f"docs/architecture.md names files that do not exist: {stale}"
