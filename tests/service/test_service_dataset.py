"""A served dataset without a test split: `evaluate` says so instead of reporting accuracy 0.0.

The same server's log shows that its 4xx answers are one INFO line each, without a traceback.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TrainedDemo
from tests.service.conftest import running_server
from training.labels.store import open_store
from training.labels.sync import import_folder
from training.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def train_only(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server on a dataset holding only the demo's train split (same classes, so the demo model fits)."""
    root = tmp_path_factory.mktemp("train-only")
    data = root / "data"
    shutil.copytree(trained_demo.settings.data_dir / "train", data / "train")
    settings = Settings(data_dir=data, mlflow_dir=root / "mlruns")
    with open_store(settings) as store:
        import_folder(settings, store)
    with running_server(trained_demo, root, BOUNCER_DATA_DIR=str(data), BOUNCER_MLFLOW_DIR=str(root / "mlruns")) as url:
        yield url, data


def test_evaluate_without_a_test_split_is_a_404_saying_so(train_only: tuple[str, Path]) -> None:
    url, data = train_only
    response = httpx.post(f"{url}/evaluate", json={"split": "test"}, timeout=60)
    assert response.status_code == 404, response.text
    assert response.json()["error"].startswith(f"no test split in DATA_DIR {data}: no images in a test/, testing/")
    assert httpx.post(f"{url}/evaluate", json={"split": "train"}, timeout=60).status_code == 200


def test_client_errors_are_one_line_in_the_server_log(train_only: tuple[str, Path]) -> None:
    url, data = train_only
    assert httpx.post(f"{url}/evaluate", json={"split": "holdout"}, timeout=60).status_code == 400
    assert httpx.post(f"{url}/evaluate", json={"split": "test"}, timeout=60).status_code == 404
    assert httpx.post(f"{url}/similar", json={"image_id": "nope"}, timeout=60).status_code == 404
    assert httpx.post(f"{url}/suspects", json={"k": "many"}, timeout=60).status_code == 400
    (log_file,) = data.parent.glob("serve-*.log")
    log = log_file.read_text()
    assert "/evaluate [POST] answered 400: unknown split 'holdout'" in log
    assert f"/evaluate [POST] answered 404: no test split in DATA_DIR {data}" in log
    assert "/similar [POST] answered 404: unknown image_id 'nope'" in log
    assert "/suspects [POST] answered 400: 1 validation error" in log
    assert "Traceback" not in log and "Exception on" not in log
