"""What `bentoml build` packs: every module of the service, found where Bouncer is not pip-installed.

The file list comes from BentoML's own matcher (``BentoPathSpec``: bentofile.yaml's include and
exclude, then every ``.bentoignore``), walked the way ``Bento.create`` walks the build context. A
gitignore-style ``data/`` once matched ``training/data/`` too, and every bento lacked it: a
container exited with ``No module named 'training.data'``. Here the service is imported from a
copy of those files by an interpreter that does not see the editable install (``-I -S``, with
site-packages on its path but none of its ``.pth`` files), so nothing outside the copy can hide a
missing module. ``tests/container/`` builds and runs the real bento.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PACKAGES = ("training", "bento_service")


def bento_source_files(project: Path = PROJECT) -> list[str]:
    """The paths (relative, ``/``-separated) `bentoml build` copies into the bento's ``src/``."""
    from bentoml._internal.bento.build_config import BentoBuildConfig, BentoPathSpec

    config = BentoBuildConfig.from_file(str(project / "bentofile.yaml")).with_defaults()
    specs = BentoPathSpec(config.include, config.exclude, str(project))
    found = []
    for root, dirs, files in os.walk(project):  # as Bento.create walks it, minus folders nothing is taken from
        here = os.path.relpath(root, project)
        dirs[:] = [d for d in dirs if not _excluded_folder(specs, os.path.normpath(os.path.join(here, d)))]
        for name in files:
            path = os.path.join(os.path.relpath(root, project), name).replace(os.sep, "/")
            if specs.includes(path):
                found.append(os.path.normpath(path))
    return sorted(found)


def _excluded_folder(specs: object, folder: str) -> bool:
    """A folder an exclude pattern drops whole (.venv, .git, /data/...): nothing under it is packed."""
    return specs.exclude.match_file(f"{folder}/") or specs.extra.match_file(f"{folder}/")  # type: ignore[attr-defined]


def tracked_package_files(project: Path = PROJECT) -> list[str]:
    """The packages' files in git: what `pip install .` ships (modules, migrations, the review page)."""
    listed = subprocess.run(
        ["git", "ls-files", "--", *PACKAGES], cwd=project, capture_output=True, text=True, check=True
    ).stdout.split()
    return sorted(path for path in listed if (project / path).is_file())


def test_the_bento_holds_every_file_of_both_packages() -> None:
    packed = set(bento_source_files())
    missing = [path for path in tracked_package_files() if path not in packed]
    assert not missing, f"bentofile.yaml or .bentoignore leaves these out of every bento: {missing}"
    strays = [path for path in packed if path != "README.md" and path.split("/")[0] not in PACKAGES]
    assert not strays, f"the bento would carry more than the packages and the README: {strays}"


@pytest.fixture(scope="module")
def bento_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the files the bento's ``src/`` would hold."""
    src = tmp_path_factory.mktemp("bento") / "src"
    for path in bento_source_files():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT / path, src / path)
    return src


# Run by an interpreter started with -I -S: argv[1] is the bento's src/, argv[2] site-packages.
IMPORT_FROM_BENTO = """
import importlib, importlib.util, pkgutil, sys
src, site_packages, packages = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.append(site_packages)  # its .pth files unread: no editable install of Bouncer
if importlib.util.find_spec(packages[0]) is not None:
    raise SystemExit("Bouncer is importable without the bento: " + importlib.util.find_spec(packages[0]).origin)
sys.path.insert(0, src)
importlib.import_module("bento_service.service")
outside = [
    name for name, module in sys.modules.items()
    if name.split(".")[0] in packages and not (getattr(module, "__file__", None) or src).startswith(src)
]
unfound = []
for package in packages:
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        spec = importlib.util.find_spec(info.name)
        if spec is None or not (spec.origin or "").startswith(src):
            unfound.append(info.name)
print("imported from elsewhere:", sorted(outside), "not found in the bento:", unfound)
raise SystemExit(1 if outside or unfound else 0)
"""


def test_the_service_imports_from_the_bento_alone(bento_src: Path, tmp_path: Path) -> None:
    """Import the service, and find every module of both packages, from the copy with Bouncer not installed."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    command = [sys.executable, "-I", "-S", "-c", IMPORT_FROM_BENTO, str(bento_src), sysconfig.get_paths()["purelib"]]
    done = subprocess.run([*command, *PACKAGES], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
