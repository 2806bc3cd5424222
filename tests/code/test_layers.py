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


# The internals behind the three façades (training.curation.labels.Labels,
# training.curation.curator.Curator, training.registry.serving.Registry): the callers go
# through those doors, never around them.
LABEL_INTERNALS = (
    "training.labels.store",
    "training.labels.database",
    "training.labels.queries",
    "training.labels.events",
    "training.labels.csv_mirror",
    "training.labels.sync",
)
BEHIND_THE_FACADES = (
    *LABEL_INTERNALS,
    "training.registry.store",
    "training.registry.bento",
    "training.registry.promotions",
)
# Benchmarks measure a version's own files against baselines (the Keras file, the ONNX graph):
# they may load a version directly, but their labels go through the façade like everyone's.
BEHIND_THE_FACADES_FOR_BENCHMARKS = LABEL_INTERNALS


def _behind(names: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f"{f}.") for f in forbidden))


def callers() -> list[tuple[str, Path, tuple[str, ...]]]:
    found = [(m, p, BEHIND_THE_FACADES) for m, p in modules() if m.startswith("bento_service") or m == "training.cli"]
    found += [
        (f"benchmarks.{p.stem}", p, BEHIND_THE_FACADES_FOR_BENCHMARKS) for p in sorted(PROJECT.glob("benchmarks/*.py"))
    ]
    return found


@pytest.mark.parametrize(("module", "path", "forbidden"), callers(), ids=[m for m, _, _ in callers()])
def test_callers_use_the_facades(module: str, path: Path, forbidden: tuple[str, ...]) -> None:
    around = _behind(imports_of(path), forbidden)
    assert not around, f"{module} imports {around}: use Labels, Curator or Registry"


@pytest.mark.parametrize("notebook", sorted(PROJECT.glob("notebooks/*.ipynb")), ids=lambda p: p.name)
def test_notebooks_use_the_facades(notebook: Path) -> None:
    import json

    cells = json.loads(notebook.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    names: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    around = _behind(names, BEHIND_THE_FACADES)
    assert not around, f"{notebook.name} imports {around}: use Labels, Curator or Registry"


def test_the_facade_rule_catches_a_shortcut(tmp_path: Path) -> None:
    shortcut = tmp_path / "shortcut.py"
    shortcut.write_text("def f():\n    from training.labels.store import open_store\n")
    assert _behind(imports_of(shortcut), BEHIND_THE_FACADES) == ["training.labels.store"]
