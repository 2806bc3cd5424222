"""The served model answers over HTTP, for every image format, and refuses bad uploads with a 4xx."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib
from collections import Counter

import httpx
import pytest
from PIL import Image

from tests.conftest import TrainedDemo
from tests.service.conftest import REQUEST_CAP, UPLOAD_CAP

pytestmark = pytest.mark.slow


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dog_picture(trained_demo: TrainedDemo) -> Image.Image:
    path = next((trained_demo.settings.data_dir / "test" / "dog").glob("*.png"))
    return Image.open(path).convert("L")


@pytest.mark.parametrize(
    ("mode", "fmt", "mime"),
    [("L", "PNG", "image/png"), ("RGB", "JPEG", "image/jpeg"), ("RGBA", "PNG", "image/png"), ("P", "PNG", "image/png")],
)
def test_predict_any_format(
    server: str, trained_demo: TrainedDemo, dog_picture: Image.Image, mode: str, fmt: str, mime: str
) -> None:
    data = _encoded(dog_picture.convert(mode), fmt)
    response = httpx.post(f"{server}/predict", files={"image": ("dog.img", data, mime)}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == trained_demo.result.tag.split(":")[1]
    assert body["label"] in body["probabilities"]
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_32_concurrent_clients_all_get_answers(server: str, trained_demo: TrainedDemo) -> None:
    """Adaptive batching under load: no 503 (dispatcher shedding), no 500 (dropped connections)."""
    paths = sorted((trained_demo.settings.data_dir / "test").glob("*/*.png"))[:32]
    images = [p.read_bytes() for p in paths]
    single = httpx.post(f"{server}/predict", files={"image": ("a.png", images[0], "image/png")}, timeout=30).json()

    async def load() -> tuple[Counter[int], list[dict]]:
        statuses: Counter[int] = Counter()
        first_image_answers: list[dict] = []
        async with httpx.AsyncClient(timeout=120) as client:

            async def one_client(i: int) -> None:
                for _ in range(8):  # 256 requests: more than BentoML's 100-request session recycling
                    response = await client.post(
                        f"{server}/predict", files={"image": ("a.png", images[i], "image/png")}
                    )
                    statuses[response.status_code] += 1
                    if i == 0 and response.status_code == 200:
                        first_image_answers.append(response.json())

            await asyncio.gather(*(one_client(i) for i in range(len(images))))
        return statuses, first_image_answers

    statuses, answers = asyncio.run(load())
    assert statuses == Counter({200: 8 * len(images)})
    # batched with other images, the answer for one image is the one it gets alone
    for answer in answers:
        assert answer["label"] == single["label"]
        assert answer["confidence"] == pytest.approx(single["confidence"], abs=1e-5)


def _png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header declaring width x height (a decompression bomb in a few bytes)."""
    data = bytearray(_encoded(Image.new("L", (1, 1)), "PNG"))
    ihdr = 12  # 8-byte signature, 4-byte chunk length, then b"IHDR" + width + height + ...
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def _bad_uploads() -> list:
    png = _encoded(Image.new("RGB", (32, 32), (200, 30, 30)), "PNG")
    return [
        pytest.param({"image": ("x.png", b"not an image at all", "image/png")}, 400, "not an image", id="not-an-image"),
        pytest.param({"image": ("x.png", b"", "image/png")}, 400, "empty", id="empty"),
        pytest.param({"image": ("x.png", png[: len(png) // 2], "image/png")}, 400, "truncated", id="truncated"),
        pytest.param({"image": ("bomb.png", _png_claiming(7000, 7000), "image/png")}, 400, "pixels", id="bomb"),
        pytest.param({"image": ("x.txt", b"hello", "text/plain")}, 400, "not an image", id="text-upload"),
        pytest.param({"file": ("x.png", png, "image/png")}, 400, "unknown field 'file'", id="wrong-field"),
        pytest.param({"image": ("x.png", png + bytes(UPLOAD_CAP), "image/png")}, 413, "limit", id="over-upload-cap"),
        pytest.param({"image": ("x.png", png + bytes(REQUEST_CAP), "image/png")}, 413, "limit", id="over-body-cap"),
    ]


@pytest.mark.parametrize("endpoint", ["predict", "similar_image"])
@pytest.mark.parametrize(("files", "status", "message"), _bad_uploads())
def test_bad_uploads_get_a_4xx_naming_the_problem(
    server: str, endpoint: str, files: dict, status: int, message: str
) -> None:
    response = httpx.post(f"{server}/{endpoint}", files=files, timeout=30)
    assert response.status_code == status, response.text
    assert message in response.text.lower()
    assert isinstance(response.json().get("error"), str), "4xx bodies are one object {error: ...}"


def test_json_fields_an_endpoint_does_not_take_are_refused(server: str) -> None:
    """A typo must not silently fall back to a default (here: searching every class)."""
    image_id = httpx.post(f"{server}/images", json={"split": "test", "limit": 1}, timeout=30).json()[0]["image_id"]
    response = httpx.post(f"{server}/similar", json={"image_id": image_id, "lable": "cat"}, timeout=30)
    assert response.status_code == 400, response.text
    assert "unknown field 'lable'" in response.text and "label" in response.text
    assert httpx.post(f"{server}/similar", json={"image_id": image_id, "label": "cat"}, timeout=30).status_code == 200


def test_evaluate_matches_the_training_report(server: str, trained_demo: TrainedDemo) -> None:
    response = httpx.post(f"{server}/evaluate", json={"split": "test"}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accuracy"] == pytest.approx(trained_demo.result.evaluation.accuracy)
    assert body["data_version"] == trained_demo.result.data_version
    assert set(body) >= {"n", "loss", "per_class", "confusion_matrix", "misclassified", "model_version"}
    bad = httpx.post(f"{server}/evaluate", json={"split": "holdout"}, timeout=30)
    assert 400 <= bad.status_code < 500 and "holdout" in bad.text


def test_health_and_openapi(server: str) -> None:
    assert httpx.get(f"{server}/healthz", timeout=10).status_code == 200
    spec = httpx.get(f"{server}/docs.json", timeout=10).json()
    assert {"/predict", "/evaluate"} <= set(spec["paths"])


def test_bentomls_own_client_reads_the_answers(server: str) -> None:
    """The notebook uses ``bentoml.SyncHTTPClient``; it decodes by /schema.json, where a null array crashes it."""
    import bentoml

    with bentoml.SyncHTTPClient(server, timeout=60) as client:
        progress = client.train_progress()  # idle: no training has run on this server
        assert progress["state"] == "idle" and progress["history"] == []
        assert any(version["serving"] for version in client.models())
        assert client.history(limit=5) is not None


def test_the_openapi_page_is_bouncers_not_bentomls_boilerplate(server: str) -> None:
    import training

    answer = httpx.get(f"{server}/docs.json", timeout=10)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    info = answer.json()["info"]
    assert info["title"] == "Bouncer"
    assert info["version"] == training.__version__
    assert "keeps its training labels honest" in info["description"]
    assert "`trace`" in info["description"] and "`relabel`" in info["description"]  # the loop, by endpoint
    for boilerplate in ("created with bentoml", "bentoml team", "contact@bentoml.com", "shields.io", "badge"):
        assert boilerplate not in answer.text.lower()
    assert "http" not in info["description"]  # links to nothing external
    page = httpx.get(f"{server}/", timeout=10)  # the Swagger UI, which loads /docs.json
    assert page.status_code == 200 and "swagger" in page.text.lower()


def test_models_and_evaluate_say_whether_the_model_beats_the_majority_label(server: str) -> None:
    versions = httpx.post(f"{server}/models", json={}, timeout=30).json()
    serving = next(v for v in versions if v["serving"])
    metrics = serving["metrics"]
    assert serving["beats_baseline"] == (metrics["test_accuracy"] > metrics["baseline_accuracy"])
    assert (serving["warning"] is None) == serving["beats_baseline"]
    assert serving["recipe"]["backbone"] == "cnn" and serving["recipe"]["image_size"] == 32
    report = httpx.post(f"{server}/evaluate", json={"split": "test"}, timeout=60).json()
    assert report["beats_baseline"] == (report["accuracy"] > report["baseline_accuracy"])
    assert 0 < report["baseline_accuracy"] < 1
    # every accuracy comes with its uncertainty (Wilson, 95%): 200 test images, an interval ~0.13 wide
    low, high = report["accuracy_interval"]
    assert low < report["accuracy"] < high and 0.05 < high - low < 0.2
    assert serving["test_accuracy_interval"] == [low, high] and isinstance(metrics["n_test"], int)
