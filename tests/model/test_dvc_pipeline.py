"""`dvc repro` rebuilds demo data and model; a relabel makes the train stage stale."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
# The tools of the environment running the tests, found without PATH: the venv need not be activated.
BIN = Path(sys.executable).parent
DVC, BOUNCER = str(BIN / "dvc"), str(BIN / "bouncer")


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_dvc_repro_then_relabel_marks_train_stale(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT / name, repo / name)
    shutil.copytree(PROJECT / "training", repo / "training", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["demo"].update(per_class=12, impostor_count=4)
    params["train"].update(epochs=1, image_size=16)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNCER_")}
    env["BOUNCER_MLFLOW_DIR"] = str(tmp_path / "mlruns")
    # this is about DVC, not the recipe: no 600-step floor (the whole test took 126 s with it) and no fold models
    env.update(BOUNCER_MIN_TRAIN_STEPS="0", BOUNCER_OUT_OF_FOLD_FOLDS="0")
    # dvc.yaml's stages run `bouncer ...`: give them the PATH an activated venv would have
    env["PATH"] = os.pathsep.join(filter(None, [str(BIN), env.get("PATH")]))
    _run(["git", "init", "-q"], repo, env)
    _run([DVC, "init", "-q"], repo, env)
    _run([DVC, "config", "core.analytics", "false"], repo, env)

    _run([DVC, "repro"], repo, env)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert {"demo-data", "train"} <= set(lock["stages"])
    metrics = json.loads((repo / "metrics.json").read_text())
    assert metrics["tag"].startswith("bouncer:")
    assert "/train" in (repo / "data" / ".gitignore").read_text()  # images are DVC's, not git's
    assert "up to date" in _run([DVC, "status"], repo, env)

    env["BOUNCER_DATA_DIR"] = str(repo / "data")
    listing = json.loads(
        _run([BOUNCER, "-q", "images", "--split", "train", "--label", "bear", "--limit", "1"], repo, env)
    )
    _run([BOUNCER, "-q", "relabel", listing[0]["image_id"], "--label", "zebra", "--reason", "test"], repo, env)
    status = _run([DVC, "status"], repo, env)
    assert "train" in status and "labels.csv" in status and "modified" in status
