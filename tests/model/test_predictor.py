"""The in-worker predictor: concurrent requests share ONNX runs, answers are the model's, overload is a 503."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from http import HTTPStatus

import numpy as np
import pytest
from PIL import Image

from bento_service.live_model import LiveModel
from bento_service.predictor import BadUpload, Overloaded, Predictor
from tests.conftest import TrainedDemo
from training.data.folders import load_records
from training.labels.store import open_store


@pytest.fixture
def live(trained_demo: TrainedDemo) -> Iterator[LiveModel]:
    with open_store(trained_demo.settings) as store:
        model = LiveModel(store, trained_demo.settings)
        yield model
        model.close()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_concurrent_requests_share_runs_and_get_the_models_answers(trained_demo: TrainedDemo, live: LiveModel) -> None:
    settings = trained_demo.settings
    with open_store(settings) as store:
        records = store.images(split="test")[:40]
    model = live.get()
    pixels = load_records(settings, records, model.image_size)
    expected = model.classifier.probabilities(pixels)
    predictor = Predictor(live, settings)

    async def all_at_once() -> list[list[dict[str, object]]]:
        return await asyncio.gather(*(predictor.predict(p[None]) for p in pixels))

    answers = asyncio.run(all_at_once())
    assert predictor.runs < len(records)  # batched
    for answer, row in zip(answers, expected, strict=True):
        assert answer[0]["label"] == model.class_names[int(row.argmax())]
        assert answer[0]["model_version"] == model.version
        np.testing.assert_allclose(list(answer[0]["probabilities"].values()), row, atol=1e-5)

    uploads = [("images", png(p)) for p in pixels[:3]]
    batch = asyncio.run(predictor.predict_uploads(uploads))
    assert [a["label"] for a in batch] == [model.class_names[int(r.argmax())] for r in expected[:3]]


def test_bad_uploads_name_the_field(trained_demo: TrainedDemo, live: LiveModel) -> None:
    predictor = Predictor(live, trained_demo.settings.model_copy(update={"max_upload_bytes": 1000}))
    with pytest.raises(BadUpload, match="image: ") as not_image:
        asyncio.run(predictor.predict_uploads([("image", b"not an image at all")]))
    assert not_image.value.error_code == HTTPStatus.BAD_REQUEST
    with pytest.raises(BadUpload, match="images: upload is 5000 bytes, over the 1000 limit") as too_big:
        asyncio.run(predictor.predict_uploads([("images", b"x" * 5000)]))
    assert too_big.value.error_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def test_requests_that_cannot_be_served_in_time_are_refused_not_queued(
    trained_demo: TrainedDemo, live: LiveModel
) -> None:
    predictor = Predictor(live, trained_demo.settings)
    predictor.max_wait_s = 0.0  # any wait is over budget
    pixels = np.zeros((30, live.get().image_size, live.get().image_size, 3), np.uint8)

    async def flood() -> list[object]:
        return await asyncio.gather(*(predictor.predict(p[None]) for p in pixels), return_exceptions=True)

    outcomes = asyncio.run(flood())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert refused and "over capacity" in str(refused[0])
    assert all(isinstance(o, (list, Overloaded)) for o in outcomes)
