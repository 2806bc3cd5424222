"""Dependencies point one way: no module imports a higher layer, and `training` never imports the service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
# Lowest first. A module may import its own layer and any layer before it.
LAYERS = [
    {"training.settings", "training.errors", "training.progress", "training.tf_logs"},
    {"training.data"},
    {"training.labels"},
    {"training.model"},
    {"training.vectors"},
    {"training.monitoring"},
    {"training.curation"},
    {"training.registry"},
    {"training.scoring"},
    {"training.pipeline"},
    {"training.jobs"},
    {"training.cli"},
    {"bento_service"},
]


def layer_of(module: str) -> int | None:
    for number, layer in enumerate(LAYERS):
        if any(module == name or module.startswith(f"{name}.") for name in layer):
            return number
    return None


def modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("training", "bento_service"):
        for path in sorted((PROJECT / package).rglob("*.py")):
            parts = path.relative_to(PROJECT).with_suffix("").parts
            if parts == ("training", "__init__"):  # the package's version string, above no one
                continue
            found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement, top-level or inside a function (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_no_module_imports_a_higher_layer(module: str, path: Path) -> None:
    own = layer_of(module)
    assert own is not None, f"{module} is in no layer: add it to LAYERS"
    higher = sorted(name for name in imports_of(path) if (layer := layer_of(name)) is not None and layer > own)
    assert not higher, f"{module} (layer {own}) imports {higher}"
