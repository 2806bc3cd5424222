"""The served model answers over HTTP, for every image format, and refuses bad uploads with a 4xx."""

from __future__ import annotations

import asyncio
import io
from collections import Counter

import httpx
import pytest
from PIL import Image

from tests.conftest import TrainedDemo

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


def test_predict_refuses_what_is_not_an_image(server: str) -> None:
    response = httpx.post(
        f"{server}/predict", files={"image": ("x.png", b"not an image at all", "image/png")}, timeout=30
    )
    assert 400 <= response.status_code < 500
    assert "not an image" in response.text


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
