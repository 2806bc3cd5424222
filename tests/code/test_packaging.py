"""Packaging: `pip install` and `bentoml build` read one list of pins, through their own readers.

setuptools expands ``pyproject.toml`` the way ``pip install`` does, and BentoML parses
``bentofile.yaml`` and the requirements file the way ``bentoml build`` does; the test
compares what each of them would install. ``test_service_train.py`` builds a real bento.
"""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

from packaging.requirements import Requirement

PROJECT = Path(__file__).resolve().parents[2]


def pyproject() -> dict:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text())


def setuptools_project() -> dict:
    """``[project]`` with its dynamic fields filled in by setuptools' own expansion, as pip's build does.

    Expanded, not validated: the build validates with the setuptools ``[build-system]`` asks
    for, while this venv's own may be older (Python 3.11's venvs start with 65.5, which
    predates the SPDX ``license`` string).
    """
    from setuptools.config.pyprojecttoml import expand_configuration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "[tool.setuptools] is still *beta*"
        return expand_configuration(pyproject(), root_dir=PROJECT)["project"]


def setuptools_dependencies() -> list[str]:
    return setuptools_project()["dependencies"]


def bento_requirements_file() -> Path:
    """The file ``bentoml build`` reads the bento's pins from, resolved as BentoML resolves it."""
    from bentoml._internal.bento.build_config import BentoBuildConfig
    from bentoml._internal.utils.filesystem import resolve_user_filepath

    config = BentoBuildConfig.from_file(str(PROJECT / "bentofile.yaml"))
    assert config.python.packages is None, "pins belong in the requirements file, not python.packages"
    assert config.python.requirements_txt, "bentofile.yaml names no python.requirements_txt"
    return Path(resolve_user_filepath(config.python.requirements_txt, str(PROJECT))).resolve()


def bento_requirements() -> list[str]:
    """The requirement lines BentoML writes into the bento (its own parser, nested files included)."""
    from pip_requirements_parser import RequirementsFile

    parsed = RequirementsFile.from_file(str(bento_requirements_file()), include_nested=True)
    assert not parsed.invalid_lines, [line.dumps() for line in parsed.invalid_lines]
    return [req.dumps() for req in parsed.requirements]


def test_pyproject_and_bentofile_read_the_same_requirements_file() -> None:
    project = pyproject()
    assert "dependencies" not in project["project"], "a second, hand-written list of pins"
    assert "dependencies" in project["project"]["dynamic"]
    files = project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    assert [(PROJECT / name).resolve() for name in files] == [bento_requirements_file()]


def test_pip_and_bentoml_would_install_the_same_pins() -> None:
    from_pip = [str(Requirement(line)) for line in setuptools_dependencies()]
    from_bento = [str(Requirement(line)) for line in bento_requirements()]
    assert from_pip == from_bento
    assert any(Requirement(line).name == "bentoml" for line in from_pip)


def test_every_requirement_parses_and_is_constrained_once() -> None:
    requirements = [Requirement(line) for line in setuptools_dependencies()]
    names = [req.name.lower() for req in requirements]
    assert len(names) == len(set(names)), f"listed twice: {sorted({n for n in names if names.count(n) > 1})}"
    assert not [req.name for req in requirements if not req.specifier], "every runtime dependency has a version"
    extras = {name: [Requirement(line) for line in lines] for name, lines in project_extras().items()}
    for extra, reqs in extras.items():
        assert not {req.name.lower() for req in reqs} & set(names), f"extra {extra!r} repeats a runtime pin"


def project_extras() -> dict[str, list[str]]:
    return pyproject()["project"]["optional-dependencies"]


def test_the_package_version_is_the_one_the_service_reports() -> None:
    import training
    from bento_service.http.openapi import openapi_info

    assert setuptools_project()["version"] == training.__version__ == openapi_info()["version"]


def test_the_license_file_is_the_licence_pyproject_declares() -> None:
    project = pyproject()["project"]
    text = (PROJECT / "LICENSE").read_text()
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert text.startswith("MIT License\n")
    assert "Copyright (c) " in text and "Bouncer contributors" in text


# Imported directly but installed by a declared dependency, each for the reason given.
TRANSITIVE = {
    "click": "typer is built on it (the CLI extends its argument parsing)",
    "scipy": "scikit-learn requires it (connected components of near duplicates)",
    "starlette": "BentoML's HTTP server: the middleware speaks its ASGI types",
    "_bentoml_impl": "ships inside the bentoml distribution",
    "uvicorn": "BentoML's HTTP server: bentoml_fixes answers its malformed-request 400 in JSON",
}


def third_party_imports(package: str) -> set[str]:
    """Top-level names ``package`` imports that are neither the standard library nor ours."""
    import ast
    import sys

    ours = {"training", "bento_service", "benchmarks", "tests"}
    names: set[str] = set()
    for path in (PROJECT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names and name not in ours}


def undeclared(package: str, declared: set[str]) -> list[str]:
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    distributions = packages_distributions()
    return sorted(
        name
        for name in third_party_imports(package) - set(TRANSITIVE)
        if not {canonicalize_name(d) for d in distributions.get(name, [name])} & declared
    )


def test_every_import_is_declared_where_it_is_needed() -> None:
    from packaging.utils import canonicalize_name

    runtime = {canonicalize_name(Requirement(line).name) for line in setuptools_dependencies()}
    extras = {
        extra: {canonicalize_name(Requirement(line).name) for line in lines}
        for extra, lines in project_extras().items()
    }
    for package in ("training", "bento_service"):  # what `pip install .` and the bento must bring
        # an optional engine is imported only where it is used, and its extra says how to get it
        optional = extras["ray"] if package == "training" else set()
        assert not undeclared(package, runtime | optional), f"{package} imports packages no requirement declares"
    assert "ray" not in runtime  # `bouncer score --engine ray` only: pip install -e ".[ray]"
    assert not undeclared("benchmarks", runtime | extras["bench"]), "benchmarks import packages no extra declares"
    assert "fastapi" in extras["bench"] and "fastapi" not in runtime  # the naive baseline, not Bouncer


def test_every_file_of_the_review_page_is_packaged_and_bundled() -> None:
    """The page is ES modules in folders: a module left out of the wheel or the bento is a blank page there."""
    import tomllib

    import yaml

    static = PROJECT / "bento_service" / "ui" / "static"
    files = [p.relative_to(PROJECT / "bento_service").as_posix() for p in static.rglob("*") if p.is_file()]
    package_data = tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["bento_service"]
    unpackaged = [f for f in files if not any(glob_matches(f, pattern) for pattern in patterns)]
    assert not unpackaged, f"pyproject.toml's package-data leaves out {unpackaged}"
    include = yaml.safe_load((PROJECT / "bentofile.yaml").read_text())["include"]
    unbundled = [f for f in files if not any(glob_matches(f"bento_service/{f}", p) for p in include)]
    assert not unbundled, f"bentofile.yaml's include leaves out {unbundled}"
    assert any(f.endswith("views/review.js") for f in files)


def glob_matches(path: str, pattern: str) -> bool:
    """As setuptools' package-data and bentofile globs read a pattern: ``*`` stays within a folder, ``**`` does not."""
    import re

    regex = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part)
        for part in re.split(r"(\*\*|\*)", pattern)
    )
    return re.fullmatch(regex, path) is not None
