"""BOUNCER_FAST_PREDICT=false: BentoML's ``@api`` predict and predict_batch answer, as the raw route does.

One server started with the raw route off, next to the session's ``server`` (raw route on):
the same image gets the same answer from both, and the same refusal gets the same 4xx and
``{"error": ...}`` body. Who answered shows in the ``Server`` header, which BentoML's
handler sets (``BentoML Service/Bouncer``) and the raw route does not.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.conftest import TrainedDemo
from tests.service.conftest import (
    REQUEST_CAP,
    UPLOAD_CAP,
    assert_same_answer,
    copy_demo_data,
    multipart,
    running_server,
)

pytestmark = pytest.mark.slow

BENTOML_HANDLER = "BentoML Service/Bouncer"  # the Server header of an answer from BentoML's @api handler
FIELDS = {"predict": "image", "predict_batch": "images"}


@pytest.fixture(scope="module")
def api_server(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo model on its own copy of the data, predict through BentoML's @api handlers (same caps as ``server``)."""
    root = tmp_path_factory.mktemp("api-predict")
    env = {
        "BOUNCER_FAST_PREDICT": "false",
        "BOUNCER_DATA_DIR": str(copy_demo_data(trained_demo, root / "data")),
        "BOUNCER_MLFLOW_DIR": str(root / "mlruns"),
        "BOUNCER_MAX_UPLOAD_BYTES": str(UPLOAD_CAP),
        "BOUNCER_MAX_REQUEST_BYTES": str(REQUEST_CAP),
    }
    with running_server(trained_demo, root, **env) as url:
        yield url


@pytest.fixture(scope="module")
def pictures(trained_demo: TrainedDemo) -> list[bytes]:
    """Three real test images of different classes."""
    folders = sorted(p for p in (trained_demo.settings.data_dir / "test").iterdir() if p.is_dir())
    return [sorted(folder.glob("*.png"))[0].read_bytes() for folder in folders[:3]]


def _upload(endpoint: str, pictures: list[bytes], declared: str | None) -> tuple[dict, int]:
    """httpx's keyword arguments for a post of one picture (predict) or all of them (predict_batch), and how many."""
    field = FIELDS[endpoint]
    chosen = pictures[:1] if endpoint == "predict" else pictures
    if declared is None:  # no content type and no extension: a part written by hand (one file)
        content, headers = multipart(field, chosen[0], filename="upload")
        return {"content": content, "headers": headers}, 1
    return {"files": [(field, (f"picture{i}.png", data, declared)) for i, data in enumerate(chosen)]}, len(chosen)


@pytest.mark.parametrize("declared", ["image/png", "application/octet-stream", None])
@pytest.mark.parametrize("endpoint", ["predict", "predict_batch"])
def test_bentomls_handler_answers_as_the_raw_route(
    server: str, api_server: str, pictures: list[bytes], endpoint: str, declared: str | None
) -> None:
    upload, count = _upload(endpoint, pictures, declared)
    fast = httpx.post(f"{server}/{endpoint}", timeout=60, **upload)
    slow = httpx.post(f"{api_server}/{endpoint}", timeout=60, **upload)
    assert fast.status_code == 200, fast.text
    assert slow.status_code == 200, slow.text
    assert "server" not in fast.headers, "the session server's raw route did not answer"
    assert slow.headers.get("server") == BENTOML_HANDLER, "BOUNCER_FAST_PREDICT=false, yet BentoML did not answer"
    answers = [slow.json()] if endpoint == "predict" else slow.json()
    expected = [fast.json()] if endpoint == "predict" else fast.json()
    assert len(answers) == len(expected) == count
    for got, want in zip(answers, expected, strict=True):
        assert got["label"] == want["label"] and got["model_version"] == want["model_version"]
        assert isinstance(want["ood_score"], float) and isinstance(want["ood"], bool)  # this model has an OOD scorer
        assert_same_answer(got, want)  # probabilities, confidence and ood_score within 1e-6


def _refusal(case: str, field: str) -> dict:
    """httpx's keyword arguments for a request both handlers must refuse."""
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), (120, 10, 200)).save(buffer, format="PNG")
    png = buffer.getvalue()
    if case == "not-an-image":
        return {"files": {field: ("x.png", b"no pixels here", "image/png")}}
    if case == "file-field":  # `file` where the endpoint takes `image(s)`
        return {"files": {"file": ("x.png", png, "image/png")}}
    if case == "text-in-file-field":  # BentoML alone would fetch it as a URL
        content, headers = multipart(field, b"http://127.0.0.1:9/latest/meta-data")
        return {"content": content, "headers": headers}
    assert case == "over-upload-cap"
    return {"files": {field: ("x.png", png + bytes(UPLOAD_CAP), "image/png")}}


@pytest.mark.parametrize("case", ["not-an-image", "file-field", "text-in-file-field", "over-upload-cap"])
@pytest.mark.parametrize("endpoint", ["predict", "predict_batch"])
def test_bentomls_handler_refuses_as_the_raw_route(server: str, api_server: str, endpoint: str, case: str) -> None:
    upload = _refusal(case, FIELDS[endpoint])
    fast = httpx.post(f"{server}/{endpoint}", timeout=60, **upload)
    slow = httpx.post(f"{api_server}/{endpoint}", timeout=60, **upload)
    assert 400 <= fast.status_code < 500, fast.text
    assert slow.status_code == fast.status_code, (slow.status_code, slow.text, fast.text)
    assert slow.headers["content-type"].startswith("application/json")
    body = slow.json()
    assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), body
    assert body == fast.json()  # the same sentence, naming the same field
