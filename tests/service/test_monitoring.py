"""OOD scores on served predictions, the prediction log behind them, drift reports and importing logged images."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import TrainedDemo, eventually
from tests.service.conftest import Deployment

pytestmark = pytest.mark.slow

TOKEN = "monitor-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def deployment(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(trained_demo, tmp_path_factory.mktemp("monitoring"), token=TOKEN, BOUNCER_LOG_IMAGES="all")
    deployment.start()
    try:
        yield deployment
    finally:
        deployment.stop()


def noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(url: str, data: bytes) -> dict:
    response = httpx.post(f"{url}/predict", files={"image": ("x.png", data, "image/png")}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_prediction_has_an_ood_score_and_is_logged_for_the_drift_report(deployment: Deployment) -> None:
    url = deployment.url
    test_images = sorted((deployment.data_dir / "test").glob("*/*.png"))[:20]
    familiar = [predict(url, path.read_bytes()) for path in test_images]
    strange = [predict(url, noise_png(seed)) for seed in range(20)]
    batch = httpx.post(
        f"{url}/predict_batch", files=[("images", ("a.png", noise_png(99), "image/png"))], timeout=30
    ).json()
    for answer in [*familiar, *strange, *batch]:
        assert 0.0 <= answer["ood_score"] <= 1.0 and isinstance(answer["ood"], bool) and answer["ood_warning"] is None
    assert np.mean([a["ood_score"] for a in strange]) > np.mean([a["ood_score"] for a in familiar])
    assert all(a["ood"] for a in strange)  # noise: every one flagged
    # the demo holds 20 test images per class: the threshold is calibrated, and models and evaluate say so
    evaluation = httpx.post(f"{url}/evaluate", json={"split": "test"}, timeout=60).json()
    assert evaluation["ood_calibrated"] is True and evaluation["ood_warning"] is None
    versions = httpx.post(f"{url}/models", json={}, timeout=60).json()
    assert next(v for v in versions if v["serving"])["ood_calibrated"] is True

    def report() -> dict:
        answer = httpx.post(f"{url}/drift", json={"window": "1h", "windows": 3}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    # every prediction, from whichever worker answered it (each writes its log every 500 ms)
    assert eventually(lambda: report()["windows"][0]["n"] == 41, timeout=10)
    body = report()
    newest = body["windows"][0]
    assert body["verdict"] == newest["verdict"] in {"drift", "no drift"}
    assert body["windows"][1]["verdict"] == "too few predictions" and body["windows"][1]["n"] == 0
    assert set(body["methods"]) == {"ood_share", "label_shift", "embedding_shift"}
    assert newest["ood"]["expected"] == pytest.approx(0.01)
    assert newest["embedding"]["n_compared"] > 0
    assert body["model_version"] == deployment.original_version

    bad = httpx.post(f"{url}/drift", json={"window": "a fortnight"}, timeout=30)
    assert bad.status_code == 400 and "window" in bad.json()["error"]


def test_logged_images_are_imported_once_under_their_predicted_label_with_the_token(deployment: Deployment) -> None:
    url = deployment.url

    def logged() -> int:
        return httpx.post(f"{url}/drift", json={"window": "1h", "windows": 1}, timeout=60).json()["windows"][0]["n"]

    before = logged()
    predict(url, noise_png(1234))
    # the worker that answered writes its log within BOUNCER_PREDICTION_LOG_FLUSH_MS; import what is written
    assert eventually(lambda: logged() == before + 1, timeout=10)
    payload = {"since": "1h", "limit": 1000, "ood_only": False}
    assert httpx.post(f"{url}/import_predictions", json=payload, timeout=60).status_code == 401
    refused = httpx.post(f"{url}/import_predictions", json={**payload, "split": "holdout"}, headers=AUTH, timeout=60)
    assert refused.status_code == 400 and "holdout" in refused.text

    answer = httpx.post(f"{url}/import_predictions", json=payload, headers=AUTH, timeout=120)
    assert answer.status_code == 200, answer.text
    imported = answer.json()
    assert imported and all(i["path"].startswith("train/") and "/logged-" in i["path"] for i in imported)
    for item in imported:
        file = deployment.data_dir / item["path"]
        assert file.is_file() and item["path"].split("/")[1] == item["label"]  # filed under its predicted label
        served = httpx.post(f"{url}/image", json={"image_id": item["image_id"]}, timeout=30)
        assert served.status_code == 200 and served.content == file.read_bytes()
    listed = httpx.post(f"{url}/images", json={"split": "train", "limit": 10_000}, timeout=30).json()
    labels = {row["image_id"]: row["label"] for row in listed}
    assert all(labels[i["image_id"]] == i["label"] for i in imported)
    again = httpx.post(f"{url}/import_predictions", json=payload, headers=AUTH, timeout=60)
    assert again.status_code == 200 and again.json() == []  # each picture once
