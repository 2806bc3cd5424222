"""predict_batch, similar, similar_image, models and the API token, over HTTP."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import TrainedDemo
from tests.service.conftest import running_server

pytestmark = pytest.mark.slow


def _post(server: str, endpoint: str, payload: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{server}/{endpoint}", json=payload, timeout=30, **kwargs)


def _png(path: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_batch_answers_each_image_in_order(server: str, trained_demo: TrainedDemo) -> None:
    paths = sorted((trained_demo.settings.data_dir / "test" / "bird").glob("*.png"))[:3]
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in paths]
    response = httpx.post(f"{server}/predict_batch", files=files, timeout=30)
    assert response.status_code == 200, response.text
    batch = response.json()
    single = [
        httpx.post(f"{server}/predict", files={"image": (p.name, p.read_bytes(), "image/png")}, timeout=30).json()
        for p in paths
    ]
    assert len(batch) == len(single) == 3
    for one_of_batch, alone in zip(batch, single, strict=True):
        assert one_of_batch["label"] == alone["label"]
        assert one_of_batch["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-5)
    bad = [*files, ("images", ("x.png", b"garbage", "image/png"))]
    response = httpx.post(f"{server}/predict_batch", files=bad, timeout=30)
    assert response.status_code == 400 and "images[3]" in response.text


def test_similar_excludes_the_query_filters_by_split_and_label(server: str) -> None:
    query = _post(server, "images", {"split": "test", "label": "dog", "limit": 1}).json()[0]["image_id"]
    body = _post(server, "similar", {"image_id": query, "k": 5, "split": "train"}).json()
    assert body["query"] == query
    distances = [r["distance"] for r in body["results"]]
    assert len(distances) == 5 and distances == sorted(distances)
    assert all(r["split"] == "train" and r["image_id"] != query for r in body["results"])
    cats = _post(server, "similar", {"image_id": query, "k": 3, "split": "train", "label": "cat"}).json()
    assert {r["label"] for r in cats["results"]} == {"cat"}
    itself = _post(server, "similar", {"image_id": query, "k": 3, "split": "test"}).json()
    assert query not in [r["image_id"] for r in itself["results"]]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"image_id": "nope"}, 404, "nope"),
        ({"k": 0}, 400, "k"),
        ({"k": 100000}, 400, "k"),
        ({"label": "bunny"}, 400, "bunny"),
        ({"split": "holdout"}, 400, "holdout"),
    ],
)
def test_similar_bad_input(server: str, payload: dict, status: int, message: str) -> None:
    image_id = _post(server, "images", {"limit": 1}).json()[0]["image_id"]
    response = _post(server, "similar", {"image_id": image_id, **payload})
    assert response.status_code == status, response.text
    assert message in response.text


def test_similar_image_finds_the_uploaded_file_first(server: str, trained_demo: TrainedDemo) -> None:
    record = _post(server, "images", {"split": "train", "label": "giraffe", "limit": 1}).json()[0]
    data = _png(trained_demo.settings.data_dir / record["path"])
    response = httpx.post(
        f"{server}/similar_image", files={"image": ("q.png", data, "image/png")}, data={"k": "3"}, timeout=30
    )
    assert response.status_code == 200, response.text
    first = response.json()["results"][0]
    assert first["image_id"] == record["image_id"] and first["distance"] == pytest.approx(0, abs=1e-3)


def test_models_lists_the_serving_version(server: str, trained_demo: TrainedDemo) -> None:
    versions = _post(server, "models", {}).json()
    serving = [v for v in versions if v["serving"]]
    assert [v["tag"] for v in serving] == [trained_demo.result.tag]
    assert serving[0]["data_version"] == trained_demo.result.data_version
    assert "test_accuracy" in serving[0]["metrics"]


def test_api_token_guards_writes_only(trained_demo: TrainedDemo, tmp_path: Path) -> None:
    with running_server(trained_demo, tmp_path, BOUNCER_API_TOKEN="s3cret") as url:
        image_id = _post(url, "images", {"limit": 1}).json()[0]["image_id"]  # reads stay open
        payload = {"image_ids": [image_id], "label": "cat"}
        refused = _post(url, "relabel", payload)
        assert refused.status_code == 401
        assert "Authorization: Bearer" in refused.json()["error"]  # says what is missing
        assert _post(url, "relabel", payload, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert _post(url, "undo", {"event_id": 1}).status_code == 401
        ok = _post(url, "relabel", payload, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200, ok.text
        event_id = ok.json()["event_id"]
        if event_id is not None:
            undone = _post(url, "undo", {"event_id": event_id}, headers={"Authorization": "Bearer s3cret"})
            assert undone.status_code == 200
