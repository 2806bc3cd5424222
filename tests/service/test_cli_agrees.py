"""After a training that was not promoted, the CLI and the service still use the same version.

Nothing is promoted when a first model serves as "the newest of this dataset"; a training that
loses the gate then becomes the newest. The CLI (and any server started later) must not switch
to it: `bouncer models`/`suspects` and the endpoints answer from the version that kept serving.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bentoml
import httpx
import pytest

from tests.conftest import TrainedDemo
from tests.service.conftest import copy_demo_data, running_server

pytestmark = pytest.mark.slow

BOUNCER = Path(sys.executable).with_name("bouncer")


def _bouncer(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run([str(BOUNCER), "-q", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _post(url: str, endpoint: str, payload: dict[str, Any]) -> Any:
    response = httpx.post(f"{url}/{endpoint}", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_rejected_training_changes_the_version_of_neither_cli_nor_service(
    trained_demo: TrainedDemo, tmp_path: Path
) -> None:
    # A model store holding only the demo's version, so "the newest of this dataset" is it.
    home = tmp_path / "bentoml"
    stored = bentoml.models.get(trained_demo.result.tag)
    shutil.copytree(stored.path, home / "models" / stored.tag.name / stored.tag.version)
    (home / "models" / stored.tag.name / "latest").write_text(stored.tag.version)
    data_dir = copy_demo_data(trained_demo, tmp_path / "data")
    shutil.rmtree(data_dir / "test")  # no test split: the gate cannot measure the new version, so it is not promoted
    extra = {
        "BENTOML_HOME": str(home),
        "BOUNCER_DATA_DIR": str(data_dir),
        "BOUNCER_MLFLOW_DIR": str(tmp_path / "mlruns"),
        "BOUNCER_MODEL_TAG": "",  # nothing pinned: the newest of the dataset serves until a promotion
        "BOUNCER_EPOCHS": "1",
        "BOUNCER_OUT_OF_FOLD_FOLDS": "0",
        "BOUNCER_BUILD_BENTO": "false",
    }
    env = {**os.environ, **trained_demo.env, **extra}
    first = stored.tag.version
    with running_server(trained_demo, tmp_path, **extra) as url:
        assert [m["version"] for m in _post(url, "models", {}) if m["serving"]] == [first]
        task = httpx.post(f"{url}/train/submit", json={}, timeout=30).json()["task_id"]
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/train/status", params={"task_id": task}, timeout=30).json()["status"] in {
            "pending",
            "in_progress",
        }:
            assert time.monotonic() < deadline, "training still running after 300 s"
            time.sleep(1)
        result = httpx.get(f"{url}/train/get", params={"task_id": task}, timeout=30).json()
        assert result["promoted"] is False, result["promotion_message"]
        assert result["model_version"] != first

        served = [m["version"] for m in _post(url, "models", {}) if m["serving"]]
        listed = [m["version"] for m in _bouncer(env, "models") if m["serving"]]
        assert served == listed == [first]
        endpoint = _post(url, "suspects", {"k": 25})
        cli = _bouncer(env, "suspects", "--k", "25")
        assert [(s["image_id"], s["suggested_label"]) for s in cli] == [
            (s["image_id"], s["suggested_label"]) for s in endpoint
        ]
        assert [s["score"] for s in cli] == pytest.approx([s["score"] for s in endpoint])
        predicted = httpx.post(
            f"{url}/predict", files={"image": ("x.png", next((data_dir / "train").rglob("*.png")).read_bytes())}
        ).json()
        assert predicted["model_version"] == first
