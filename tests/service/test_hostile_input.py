"""Requests an attacker or a broken client sends get a clear 4xx at once, and leave the server answering."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from tests.service.conftest import assert_same_answer, multipart

pytestmark = pytest.mark.slow

UPLOAD_ROUTES = [("predict", "image"), ("predict_batch", "images"), ("similar_image", "image")]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), (120, 10, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A local TCP server that records whether anyone connected: where a fetched 'URL' would go."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock, f"http://127.0.0.1:{sock.getsockname()[1]}/latest/meta-data"


def _connected(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
    except BlockingIOError:
        return False
    return True


@pytest.mark.parametrize(("endpoint", "field"), UPLOAD_ROUTES)
def test_a_url_in_a_file_field_is_refused_and_never_fetched(
    server: str, listener: tuple[socket.socket, str], endpoint: str, field: str
) -> None:
    sock, url = listener
    text_part = f'--B\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{url}\r\n--B--\r\n'.encode()
    multipart = {"content-type": "multipart/form-data; boundary=B"}
    as_text = httpx.post(f"{server}/{endpoint}", content=text_part, headers=multipart, timeout=10)
    as_json = httpx.post(f"{server}/{endpoint}", json=url, timeout=10)
    urlencoded = httpx.post(f"{server}/{endpoint}", data={field: url}, timeout=10)
    assert as_text.status_code == 400 and "must be a file upload" in as_text.json()["error"]
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["error"]
    assert urlencoded.status_code == 415
    assert not _connected(sock), "the server connected to a URL a client put in a file field"


def test_deeply_nested_json_is_answered_and_the_worker_keeps_serving(server: str) -> None:
    image_id = httpx.post(f"{server}/images", json={"limit": 1}, timeout=10).json()[0]["image_id"]
    for depth, problem in ((40, "image_id: Input should be a valid string"), (1000, "recursion limit"), (50_000, "")):
        body = '{"image_id": ' + "[" * depth + "]" * depth + "}"
        response = httpx.post(
            f"{server}/similar", content=body, headers={"content-type": "application/json"}, timeout=10
        )
        assert response.status_code == 400 and problem in response.json()["error"], response.text
    assert httpx.post(f"{server}/similar", json={"image_id": image_id, "k": 2}, timeout=10).status_code == 200


@pytest.mark.parametrize("endpoint", ["predict", "similar", "relabel", "train/submit"])
def test_malformed_multipart_bodies_get_a_400(server: str, endpoint: str) -> None:
    no_boundary = httpx.post(
        f"{server}/{endpoint}", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}, timeout=10
    )
    assert no_boundary.status_code == 400 and "boundary" in no_boundary.json()["error"]
    parts = b"".join(b'--B\r\nContent-Disposition: form-data; name="k"\r\n\r\n1\r\n' for _ in range(1001)) + b"--B--"
    many = httpx.post(
        f"{server}/{endpoint}",
        content=parts,
        headers={"content-type": "multipart/form-data; boundary=B"},
        timeout=10,
    )
    assert many.status_code == 400 and "Too many" in many.json()["error"]


@pytest.mark.parametrize(
    ("endpoint", "payload"),
    [("undo", {"event_id": 2**63}), ("images", {"offset": 2**63}), ("undo", {"event_id": -1})],
)
def test_integers_the_database_cannot_hold_are_a_400(server: str, endpoint: str, payload: dict) -> None:
    response = httpx.post(f"{server}/{endpoint}", json=payload, timeout=10)
    assert response.status_code == 400, response.text
    assert next(iter(payload)) in response.text


def test_text_no_database_can_keep_is_a_400_and_writes_nothing(server: str) -> None:
    """A NUL character (PostgreSQL refuses it) or a 100 kB reason: named in a 400 before anything is stored."""
    image_id = httpx.post(f"{server}/images", json={"limit": 1}, timeout=10).json()[0]["image_id"]
    before = httpx.post(f"{server}/history", json={"limit": 5}, timeout=10).json()
    cases = [
        ("relabel", {"image_ids": [image_id], "label": "cat", "reason": "x" * 100_000}, "reason"),
        ("relabel", {"image_ids": [image_id], "label": "cat", "reason": "a\u0000b"}, "NUL"),
        ("confirm", {"image_ids": [image_id], "reason": "y" * 2001}, "reason"),
        ("similar", {"image_id": image_id + "\u0000"}, "NUL"),
        ("relabel", {"image_ids": [image_id + "\u0000"], "label": "cat"}, "NUL"),
    ]
    for endpoint, payload, problem in cases:
        body = json.dumps(payload).encode()  # NUL is sent as the JSON escape \u0000
        response = httpx.post(
            f"{server}/{endpoint}", content=body, headers={"content-type": "application/json"}, timeout=10
        )
        assert response.status_code == 400 and problem in response.json()["error"], (endpoint, response.text)
    assert httpx.post(f"{server}/history", json={"limit": 5}, timeout=10).json() == before
    # a backslash followed by "u0000" is ordinary text
    literal = httpx.post(f"{server}/similar", json={"image_id": "\\u0000"}, timeout=10)
    assert literal.status_code == 404


@pytest.mark.parametrize(
    "declared", ["application/octet-stream", None], ids=["octet-stream", "no-content-type-no-extension"]
)
@pytest.mark.parametrize(("endpoint", "field"), UPLOAD_ROUTES)
def test_an_image_is_accepted_whatever_content_type_the_client_declared(
    server: str, endpoint: str, field: str, declared: str | None
) -> None:
    """Judged by its bytes: a generic type, or none and a file name without extension, answers as image/png does."""
    picture = _png()
    as_png = httpx.post(f"{server}/{endpoint}", files={field: ("a.png", picture, "image/png")}, timeout=30)
    assert as_png.status_code == 200, as_png.text
    body, headers = multipart(field, picture, filename="upload", content_type=declared)
    assert (b"Content-Type" in body) == (declared is not None)  # httpx would have added image/png or octet-stream
    response = httpx.post(f"{server}/{endpoint}", content=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert_same_answer(response.json(), as_png.json())


@pytest.mark.parametrize(("endpoint", "field"), UPLOAD_ROUTES)
def test_a_non_image_declared_as_png_is_a_400_naming_the_field(server: str, endpoint: str, field: str) -> None:
    upload = {field: ("photo.png", b"plain text, whatever the header says", "image/png")}
    response = httpx.post(f"{server}/{endpoint}", files=upload, timeout=30)
    assert response.status_code == 400, response.text
    named = "images[0]" if endpoint == "predict_batch" else field
    error = response.json()["error"]
    assert error.startswith(f"{named}: ") and "not an image" in error, error


@pytest.mark.parametrize(("endpoint", "field"), UPLOAD_ROUTES)
@pytest.mark.parametrize("name", ["x" * 300 + ".png", "../../etc/passwd.png", "a/b\\c.png", "\u00e9t\u00e9 \u2603.png"])
def test_any_file_name_is_only_a_name(server: str, endpoint: str, field: str, name: str) -> None:
    """BentoML's upload handler writes the part to a temp file named after it: no name may break or steer that."""
    response = httpx.post(f"{server}/{endpoint}", files={field: (name, _png(), "image/png")}, timeout=30)
    assert response.status_code == 200, response.text


def test_a_real_upload_still_works_after_all_that(server: str) -> None:
    response = httpx.post(f"{server}/predict", files={"image": ("a.png", _png(), "image/png")}, timeout=30)
    assert response.status_code == 200, response.text
