"""The import graph of src/lmforge: no import cycles, and no imports from a lower layer up.

The layers follow DESIGN.md's layout, lowest first. A module may import modules of its own layer
and of the layers below, never above. Imports are read with `ast` (nothing is imported), and an
import inside a function counts like one at the top of a file: it still ties the two modules
together, and hiding a cycle in a function is how cycles have crept in. Imports made by name at
run time (`importlib.import_module`) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "lmforge"

# Lowest first. The name is the first component below `lmforge` (a subpackage or a top-level
# module); the package's own `__init__.py` is "__init__".
LAYERS: tuple[tuple[str, ...], ...] = (
    # the ground floor: errors, the generic config validator, the machine as an input
    ("errors", "_validate", "runtime", "json_files", "sampling_validation", "_callable_package"),
    # the model, tokenizers and data; `config` holds the run-config dataclasses, which compose the
    # model and data configs, so it lives on this floor too (with their range checks), as does
    # `reward_config` (GRPO's reward settings, torch-free, which the run config composes)
    ("models", "tokenizer", "data", "config", "config_checks", "reward_config"),
    # optimizers sit below parallel/: ZeRO and the sharded checkpoints hold their state
    ("optim",),
    # other projects' formats (HF, GGUF), read and mapped; below checkpoint/, which starts runs
    # from them
    ("parallel", "formats"),
    ("checkpoint",),
    # loading a model to generate and score; evaluation builds on it, and training evaluates
    ("inference",),
    ("evals",),
    ("train", "finetune"),
    # the Python API (train, finetune, load), conversions of whole checkpoint directories, serving
    ("api", "interop", "serve"),
    ("cli", "__main__", "__init__"),
)


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module named by `from X import ...`, relative forms included."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _nearest_module(name: str, modules: set[str]) -> str | None:
    """`lmforge.a.b.Name` -> `lmforge.a.b`: the longest prefix that is a module of the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules that `tree` imports, at any depth (functions and classes too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub; `from pkg import Name`, pkg
                submodule = f"{base}.{alias.name}"
                names.add(submodule if submodule in modules else base)
    found = {_nearest_module(name, modules) for name in names}
    return {target for target in found if target is not None and target != module}


def import_graph(src: Path, package: str) -> nx.DiGraph:
    files = sorted((src / package).rglob("*.py"))
    modules = {module_name(path, src) for path in files}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for path in files:
        module = module_name(path, src)
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        for target in imports_of(tree, module, is_package, modules):
            graph.add_edge(module, target)
    return graph


def layer_unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(module: str, layers: tuple[tuple[str, ...], ...]) -> int | None:
    unit = layer_unit(module)
    for index, units in enumerate(layers):
        if unit in units:
            return index
    return None


def violations(graph: nx.DiGraph, layers: tuple[tuple[str, ...], ...]) -> set[str]:
    """ "cycle: a -> b" for every import that lies on a cycle, "upward: a -> b" for every import
    from a lower layer into a higher one."""
    found: set[str] = set()
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            cycle_edges = graph.subgraph(component).edges
            found.update(f"cycle: {a} -> {b}" for a, b in cycle_edges)
    for a, b in graph.edges:
        layer_a, layer_b = layer_of(a, layers), layer_of(b, layers)
        if layer_a is not None and layer_b is not None and layer_b > layer_a:
            found.add(f"upward: {a} -> {b}")
    return found


@pytest.fixture(scope="module")
def graph() -> nx.DiGraph:
    return import_graph(SRC, PACKAGE)


def test_every_module_has_a_layer(graph: nx.DiGraph) -> None:
    unplaced = sorted(m for m in graph.nodes if layer_of(m, LAYERS) is None)
    assert not unplaced, f"add these to LAYERS in {Path(__file__).name}: {unplaced}"


def test_no_cycles_or_upward_imports(graph: nx.DiGraph) -> None:
    found = sorted(violations(graph, LAYERS))
    assert not found, (
        "import cycles or upward imports (move the shared piece down a layer instead of "
        "importing up, and don't hide a cycle inside a function):\n" + "\n".join(found)
    )


def test_packages_form_no_cycle(graph: nx.DiGraph) -> None:
    """Coarser than modules: packages of one floor may import each other, but never both ways
    round (e.g. config -> models and models -> config)."""
    packages = nx.DiGraph()
    packages.add_edges_from(
        (layer_unit(a), layer_unit(b)) for a, b in graph.edges if layer_unit(a) != layer_unit(b)
    )
    assert list(nx.simple_cycles(packages)) == []


def test_models_know_nothing_of_process_groups() -> None:
    """models/ is plain modules: collectives (e.g. MoE's expert-load all-reduce) are passed in
    by train/ and parallel/, so a model runs, converts and exports without a process group."""
    offenders = []
    for path in sorted((SRC / PACKAGE / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                base = node.module or ""
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            if any(name.startswith("torch.distributed") for name in names):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, f"models/ imports torch.distributed: {offenders}"


def test_checker_finds_cycles_and_upward_imports(tmp_path: Path) -> None:
    """The checker itself: relative and in-function imports, cycles, upward imports."""
    package = tmp_path / "pkg"
    for folder in ("low", "high"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from pkg.high.c import g\n")
    (package / "low" / "b.py").write_text("from . import a\nfrom .a import f\n")
    (package / "high" / "c.py").write_text("from ..low.b import a\n")
    (package / "high" / "d.py").write_text("import pkg.low.b\n")
    found = violations(import_graph(tmp_path, "pkg"), (("low",), ("high",)))
    assert found == {
        "cycle: pkg.low.a -> pkg.high.c",
        "cycle: pkg.high.c -> pkg.low.b",
        "cycle: pkg.low.b -> pkg.low.a",
        "upward: pkg.low.a -> pkg.high.c",
    }


# Where an import of an lmforge module may sit inside a function, and why. Everywhere else imports
# go at the top: a deferred import hides what a module depends on.
DEFERRED_IMPORTS_ALLOWED: dict[str, str] = {
    "lmforge.cli": "start-up: handlers import their packages when they run (`--help` has no torch)",
    "lmforge.interop.commands": "imported by the CLI at start-up (its command dataclasses)",
    "lmforge.evals.commands": "imported by the CLI at start-up (its command dataclasses)",
    "lmforge.evals.lm_eval_command": "the lm-eval extra is optional",
    "lmforge.checkpoint.directory": "DCP costs ~0.6 s to import; only sharded checkpoints need it",
}


def test_deferred_imports_only_where_allowed() -> None:
    found = set()
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        module = module_name(path, SRC)
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith(PACKAGE)
                ):
                    found.add(module)
    unexpected = sorted(found - set(DEFERRED_IMPORTS_ALLOWED))
    assert not unexpected, f"move these modules' in-function imports to the top: {unexpected}"
    stale = sorted(set(DEFERRED_IMPORTS_ALLOWED) - found)
    assert not stale, f"no deferred import left; delete from DEFERRED_IMPORTS_ALLOWED: {stale}"
