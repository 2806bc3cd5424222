"""An attacker's requests against a real `bentoml serve` with an API token: each guard holds on every route.

- Every route of the OpenAPI document, sent without the token under a dozen spellings of its path,
  answers as the plain path does or 404; no spelling writes.
- Formats that run a program or hide their size are a 400 at once, and the server keeps answering.
- Connections that declare a large body and send nothing, or never finish their headers, are
  closed (408) and hold none of the budget: everyone else is answered.
- Two training starts at once: one 200, one 409.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import TrainedDemo, eventually
from tests.service.conftest import Deployment
from tests.sockets import read_until_closed

pytestmark = pytest.mark.slow

TOKEN = "route-guards-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
# How a client can spell a path: each must be the plain route (same guards, same answer) or a 404.
VARIANTS = ["{}%0A", "{}%0D", "{}%00", "{}%09", "{}/", "/{}", "{}//", "{};x", "{}%2F", "{}/./", "/.{}", "{}%0A%0A"]
# The deadlines, short so the slow-client cases take seconds (the defaults are 10 s).
DEADLINE_S = 3


@pytest.fixture(scope="module")
def deployment(trained_demo: TrainedDemo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(
        trained_demo,
        tmp_path_factory.mktemp("route-guards"),
        token=TOKEN,
        BOUNCER_HEADER_TIMEOUT_S=str(DEADLINE_S),
        BOUNCER_BODY_IDLE_TIMEOUT_S=str(DEADLINE_S),
    )
    deployment.start()
    yield deployment
    deployment.stop()


def _png(size: int = 28) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (120, 10, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def _request(url: str, method: str, path: str, operation: dict[str, Any], **headers: str) -> httpx.Response:
    """The operation's request with the least body it takes: ``{}`` for JSON, one image for an upload."""
    content = operation.get("requestBody", {}).get("content", {})
    query = "?task_id=x" if any(p.get("name") == "task_id" for p in operation.get("parameters", [])) else ""
    raw = httpx.URL(url + path + query)
    if "multipart/form-data" in content:
        field = next(iter(content["multipart/form-data"]["schema"]["properties"]))
        return httpx.request(method, raw, files={field: ("a.png", _png())}, headers=headers, timeout=60)
    if "application/json" in content:
        return httpx.request(method, raw, json={}, headers=headers, timeout=60)
    return httpx.request(method, raw, headers=headers, timeout=60)


def test_every_route_answers_a_spelling_of_its_path_as_the_path_itself_or_404(deployment: Deployment) -> None:
    spec = httpx.get(f"{deployment.url}/docs.json", timeout=30).json()
    before = httpx.post(f"{deployment.url}/history", json={"limit": 1}, timeout=30).json()
    csv_before = (deployment.data_dir / "labels.csv").read_bytes()
    checked = 0
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "{" in path:
                continue
            plain = _request(deployment.url, method.upper(), path, operation).status_code
            if operation.get("security"):  # a write: the token is what it needs first
                assert plain == 401, (method, path, plain)
            for variant in VARIANTS:
                spelled = variant.format(path)
                status = _request(deployment.url, method.upper(), spelled, operation).status_code
                assert status in (plain, 404), f"{method.upper()} {spelled}: {status}, the plain path {plain}"
                checked += 1
    assert checked > 300
    assert httpx.post(f"{deployment.url}/history", json={"limit": 1}, timeout=30).json() == before
    assert (deployment.data_dir / "labels.csv").read_bytes() == csv_before
    assert httpx.post(f"{deployment.url}/train_progress", json={}, timeout=30).json()["state"] == "idle"


def test_the_token_comes_before_the_body(deployment: Deployment) -> None:
    url = deployment.url
    wrong_type = httpx.post(f"{url}/relabel", content=b"label=cat", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 401
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /relabel HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 104857600\r\n\r\n")  # declares 100 MiB, sends none of it
        sock.settimeout(10)
        assert sock.recv(4096).startswith(b"HTTP/1.1 401")
    lower = httpx.post(f"{url}/undo", json={"event_id": 2**31 - 1}, headers={"authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 404  # lower-case scheme accepted; no such event
    two = httpx.post(
        f"{url}/undo", json={"event_id": 1}, headers=[("authorization", f"Bearer {TOKEN}"), ("authorization", "x")]
    )
    assert two.status_code == 400 and "one Authorization header" in two.json()["error"]


def _ico_holding_a_large_png() -> bytes:
    """An ICO whose directory says 256x256 and which holds a 4000x4000 PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", (4000, 4000)).save(buffer, format="PNG")
    png = buffer.getvalue()
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


HOSTILE_FILES = {
    "looping.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n{ } loop\n",
    "broken.eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnosuchoperator\n",
    "large.ico": _ico_holding_a_large_png(),
}


def test_uploads_that_would_run_a_program_or_hide_their_size_are_a_400_and_nobody_waits(
    deployment: Deployment,
) -> None:
    url = deployment.url
    calls = [
        (endpoint, field, name)
        for endpoint, field in (("predict", "image"), ("predict_batch", "images"), ("similar_image", "image"))
        for name in HOSTILE_FILES
        for _ in range(2)  # twice at once, as the attacker sent them
    ]
    probes: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            started = time.monotonic()
            assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
            probes.append(time.monotonic() - started)
            time.sleep(0.05)

    def send(call: tuple[str, str, str]) -> httpx.Response:
        endpoint, field, name = call
        return httpx.post(f"{url}/{endpoint}", files={field: (name, HOSTILE_FILES[name])}, timeout=60)

    watcher = threading.Thread(target=probe)
    watcher.start()
    try:
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = list(pool.map(send, calls))
    finally:
        done.set()
        watcher.join()
    for (endpoint, _, name), response in zip(calls, answers, strict=True):
        assert response.status_code == 400, (endpoint, name, response.text)
        assert "is not a format decoded here" in response.json()["error"], response.text
    assert probes and max(probes) < 2.0, f"/readyz waited {max(probes):.1f} s while the uploads were refused"


def test_idle_connections_hold_no_budget_and_are_closed(deployment: Deployment) -> None:
    """20 connections declare 64 MiB bodies and send nothing, 5 never finish their headers; everyone else is served."""
    url, port = deployment.url, int(deployment.url.rsplit(":", 1)[1])
    image_id = httpx.post(f"{url}/images", json={"limit": 1}, timeout=30).json()[0]
    idle, half = [], []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            b"POST /predict_batch HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            b"Content-Length: 67108864\r\n\r\n"
        )
        idle.append(sock)
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        half.append(sock)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        statuses = []
        for _ in range(10):
            statuses.append(httpx.post(f"{url}/predict", files={"image": ("a.png", _png())}, timeout=30).status_code)
            statuses.append(httpx.post(f"{url}/images", json={"limit": 2}, timeout=30).status_code)
        relabel = {"image_ids": [image_id["image_id"]], "label": image_id["label"]}
        statuses.append(httpx.post(f"{url}/relabel", json=relabel, headers=AUTH, timeout=30).status_code)
        assert set(statuses) == {200}, statuses
        assert time.monotonic() - started < DEADLINE_S, "ordinary requests waited behind idle connections"
        for sock in idle:
            received, closed = read_until_closed(sock, 20)
            assert closed and received.startswith(b"HTTP/1.1 408"), "an idle body kept its connection"
        for sock in half:
            received, closed = read_until_closed(sock, 20)
            assert closed and received.startswith(b"HTTP/1.1 408"), "half a request kept its connection"
    finally:
        for sock in idle + half:
            sock.close()


def test_two_training_starts_at_once_are_one_200_and_one_409(deployment: Deployment) -> None:
    url = deployment.url
    barrier = threading.Barrier(2)

    def submit(_: int) -> httpx.Response:
        barrier.wait()
        return httpx.post(f"{url}/train/submit", json={"epochs": 1}, headers=AUTH, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(submit, range(2)))
    statuses = sorted(response.status_code for response in answers)
    assert statuses == [200, 409], [response.text for response in answers]
    task_id = next(response.json()["task_id"] for response in answers if response.status_code == 200)

    def progress() -> dict:
        return httpx.post(f"{url}/train_progress", json={}, timeout=30).json()

    # its child process starts a moment after the 200: a cancel before that finds nothing to stop (409)
    assert eventually(lambda: progress().get("task_id") == task_id, timeout=120)
    canceled = httpx.put(f"{url}/train/cancel", params={"task_id": task_id}, headers=AUTH, timeout=120)
    assert canceled.status_code in (200, 409), canceled.text  # 409: it had already ended
    assert eventually(lambda: progress()["state"] != "running", timeout=120)


@pytest.mark.parametrize(
    ("endpoint", "payload"),
    [("drift", {"window": "1h\n"}), ("import_predictions", {"since": "7d\n"}), ("import_predictions", {"split": ""})],
)
def test_a_value_with_a_trailing_newline_or_outside_the_enum_is_a_400(
    deployment: Deployment, endpoint: str, payload: dict
) -> None:
    response = httpx.post(f"{deployment.url}/{endpoint}", json=payload, headers=AUTH, timeout=30)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    ("endpoint", "payload"),
    [
        ("history", {"image_id": "x" * 1_000_000}),
        ("similar", {"image_id": "x" * 1_000_000}),
        ("image", {"image_id": "x" * 1_000_000}),
        ("relabel", {"image_ids": ["x" * 1_000_000], "label": "cat"}),
        ("promote", {"version": "x" * 1_000_000}),
        ("images", {"label": "x" * 1_000_000}),
        ("evaluate", {"split": "x" * 1_000_000}),
        ("confusion", {"label": "x" * 1_000_000, "predicted": "cat"}),
        ("import_predictions", {"split": "x" * 1_000_000}),
    ],
)
def test_an_error_quotes_a_long_value_in_a_line(deployment: Deployment, endpoint: str, payload: dict) -> None:
    response = httpx.post(f"{deployment.url}/{endpoint}", json=payload, headers=AUTH, timeout=60)
    assert 400 <= response.status_code < 500 and len(response.content) < 2500, (response.status_code, response.text)
