"""Data flows one way: recipe -> plan (engine) -> steps -> models. Imports must follow it.

Every import in the package is parsed (including imports inside functions) and checked
against the table below; `wanflow.recipe` must never import torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wanflow"

#: layer -> the wanflow layers it may import (besides itself, `wanflow` and `wanflow.errors`).
#: The table has no cycle, and neither have the imports (both tested): the plugin registry is
#: consulted by recipe validation (families) and binds pipelines, so the steps never consult it;
#: they get savers and solvers from the pipeline at planning.
ALLOWED = {
    "recipe": {"plugins", "families", "media_size"},  # the family registry, consulted lazily
    "families": {"conditioners"},  # data: family specs and the conditioning they declare
    "conditioners": set(),  # the torch-free registry of conditioning kinds a family may declare
    "plugins": {"families", "steps"},  # steps only lazily, inside the pipelines hook
    "engine": {"columns"},
    "columns": set(),  # the widths of printed columns, shared by explain and the terminal's step lines
    "logs": {"columns"},
    "models": {"file_kinds"},
    "sampling": set(),
    "steps": {"engine", "models", "sampling", "families", "output", "sources", "lora", "memory", "train",
              "audio", "conditioners", "media_size"},
    "memory": {"models", "lora"},  # the memory planner (pure) and the placement of weights at run time
    "lora": {"models"},  # LoRA files and their application to a model; knows no recipe or cache
    "output": {"file_kinds"},
    "file_kinds": set(),  # what a file is from its first bytes, for "it looks like …" in errors
    "media_size": set(),  # an image's or video's pixel size, torch-free, for validation and resolution
    "sources": {"families"},
    "train": {"families", "output", "models", "lora", "sampling", "audio"},  # dataset, objective, loop, adapters
    "audio": {"file_kinds"},  # decoding, probing and encoding speech for audio-driven families
    "api": {"recipe", "plugins", "engine", "output", "sampling", "logs"},  # the library's front door
    "": {"api"},  # `wanflow/__init__.py` exports the API lazily (importing wanflow stays cheap)
    "cli": None,  # the top: may import everything
    "__main__": {"cli"},
}
NO_TORCH = ("recipe", "families", "plugins", "conditioners")


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem != "__init__" else ""


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        allowed = ALLOWED.get(layer, set())
        for line, module in imports(path):
            parts = module.split(".")
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if layer in NO_TORCH and parts[0] in ("torch", "safetensors", "diffusers", "transformers"):
                bad.append(f"{where}: wanflow.{layer} imports {module} (it must stay torch-free)")
            if parts[0] != "wanflow" or len(parts) < 2 or allowed is None:
                continue
            target = parts[1]
            if target not in (layer, "errors") and target not in allowed:
                bad.append(f"{where}: wanflow.{layer} imports {module}, against the flow of data")
    return bad


def test_every_layer_exists_in_the_table():
    layers = {layer_of(p) for p in PACKAGE.rglob("*.py")} - {"", "errors", "logs"}
    assert layers <= set(ALLOWED), sorted(layers - set(ALLOWED))
    assert {"recipe", "plugins", "cli"} <= layers


def test_imports_follow_the_flow_of_data():
    assert violations() == []


def layer_graph() -> dict[str, set[str]]:
    """layer -> the layers its modules really import (functions' lazy imports included)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        layer = layer_of(path)
        for _, module in imports(path):
            parts = module.split(".")
            if parts[0] == "wanflow" and len(parts) > 1 and parts[1] not in (layer, "errors"):
                graph.setdefault(layer, set()).add(parts[1])
    return graph


def cycles(graph: dict[str, set[str] | None]) -> list[list[str]]:
    """Every cycle reachable in a layer graph, each once (as found by depth-first search)."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node) or ()):
            visit(nxt, path + [node])
        done.add(node)

    for start in sorted(graph):
        visit(start, [])
    return found


def test_the_layer_table_has_no_cycle():
    table = {k: v for k, v in ALLOWED.items() if v is not None}
    assert cycles(table) == []


def test_no_import_cycle_between_layers():
    graph = layer_graph()
    graph.pop("cli", None)  # the top layer imports everything and nothing imports it
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_the_checker_catches_a_violation(tmp_path):
    fake = tmp_path / "wanflow"
    (fake / "recipe").mkdir(parents=True)
    (fake / "recipe" / "bad.py").write_text("import torch\nfrom wanflow.engine import plan\n")
    globals()["PACKAGE"] = fake
    try:
        found = violations()
    finally:
        globals()["PACKAGE"] = Path(__file__).resolve().parents[1] / "wanflow"
    assert len(found) == 2 and "torch-free" in found[0] and "against the flow" in found[1]
