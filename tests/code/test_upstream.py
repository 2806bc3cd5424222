"""The fixes in bento_service.http.upstream: what they fix, and whether upstream still needs them."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from _bentoml_sdk.validators import FileSchema
from bentoml._internal.server.http.traffic import TimeoutMiddleware
from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request

from bento_service.http import upstream


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _timers_left_after_requests(call: Any, requests: int) -> int:
    """How many per-request timeout timers are still scheduled once every request is answered."""
    middleware = TimeoutMiddleware(_answer, timeout=300)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    for _ in range(requests):
        await call(middleware, {"type": "http", "path": "/"}, receive, send)
    assert len(sent) == 2 * requests
    loop = asyncio.get_running_loop()
    return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]


def test_the_patched_timeout_middleware_cancels_its_timer() -> None:
    assert asyncio.run(_timers_left_after_requests(upstream._timeout_call, 50)) == 0


def test_upstream_still_leaks_the_timer() -> None:
    """Fails once the pinned BentoML cancels its timer: then delete the fix (docs/upstream/)."""
    assert asyncio.run(_timers_left_after_requests(upstream.UPSTREAM_TIMEOUT_CALL, 50)) == 50


def test_the_patched_middleware_still_times_out() -> None:
    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(5)

    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        await upstream._timeout_call(TimeoutMiddleware(slow, timeout=0.05), {"type": "http"}, receive, send)
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 504


def _upload(name: str) -> UploadFile:
    return UploadFile(io.BytesIO(b"\x89PNG bytes"), filename=name, headers=Headers({"content-type": "image/png"}))


def test_a_long_client_file_name_is_saved_under_a_plain_one(tmp_path: Path) -> None:
    with _request_temp_dir(tmp_path):
        saved = upstream._file_decode(FileSchema(), _upload("x" * 300 + ".png"))
    assert saved.name.endswith("upload.png") and saved.read_bytes() == b"\x89PNG bytes"
    assert upstream.upload_name("../../etc/passwd") == "upload"
    assert upstream.upload_name("a\\b.JPEG") == "upload.JPEG"
    assert upstream.upload_name("photo.png; rm -rf") == "upload"


def test_upstream_still_fails_on_a_long_client_file_name(tmp_path: Path) -> None:
    """When this fails, the pinned BentoML no longer needs the file-name fix."""
    with _request_temp_dir(tmp_path), pytest.raises(OSError, match="too long"):
        upstream.UPSTREAM_FILE_DECODE(FileSchema(), _upload("x" * 300 + ".png"))


@contextmanager
def _request_temp_dir(folder: Path) -> Iterator[None]:
    """A request whose temp folder (where BentoML writes uploads) is ``folder``, as its HTTP app sets one."""
    from bentoml._internal.context import _request_var

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []})
    request.state.temp_dir = str(folder)
    token = _request_var.set(request)
    try:
        yield
    finally:
        _request_var.reset(token)


def _result_store(tmp_path: Path) -> Any:
    from _bentoml_impl.tasks.result import Sqlite3Store

    Sqlite3Store.init_db(str(tmp_path / "tasks.db"))
    return Sqlite3Store(str(tmp_path / "tasks.db"))


async def _status_after_cancel_then_answer(tmp_path: Path, set_result: Any) -> str:
    """A task canceled while it runs, whose (409) answer then arrives: the status the store keeps."""
    from _bentoml_impl.tasks.result import ResultStatus
    from starlette.responses import JSONResponse

    async with _result_store(tmp_path) as store:

        async def body() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        request = Request({"type": "http", "method": "POST", "path": "/train/submit", "headers": []}, body)
        task_id = await store.new_entry("train", request)
        await store.set_status(task_id, ResultStatus.CANCELED)
        answer = JSONResponse({"error": "canceled by request"}, status_code=409)
        await set_result(store, task_id, answer, ResultStatus.FAILED)
        return (await store.get_status(task_id)).status.value


def test_a_canceled_task_stays_canceled_when_its_answer_arrives(tmp_path: Path) -> None:
    assert asyncio.run(_status_after_cancel_then_answer(tmp_path, upstream._set_result)) == "canceled"


def test_upstream_still_records_a_canceled_task_as_failed(tmp_path: Path) -> None:
    """When this fails, BentoML keeps a canceled task canceled: drop the _set_result fix."""
    assert asyncio.run(_status_after_cancel_then_answer(tmp_path, upstream.UPSTREAM_SET_RESULT)) == "failed"


def test_upstream_still_labels_metrics_with_the_raw_path() -> None:
    """When this fails, BentoML's metrics no longer use scope['path'] as the endpoint: re-check _labelled_by_route."""
    import inspect

    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    assert 'endpoint = scope["path"]' in inspect.getsource(RunnerTrafficMetricsMiddleware.__call__)


def test_upstream_uvicorn_still_answers_malformed_requests_in_plain_text() -> None:
    """When this fails, uvicorn changed its 400 for unparsable requests: re-check the JSON fix."""
    import inspect

    assert "text/plain" in inspect.getsource(upstream.UPSTREAM_HTTPTOOLS_400)


def test_metrics_labels_are_route_templates() -> None:
    import bentoml

    from bento_service import ui
    from bento_service.http.routes import endpoint_labeller

    @bentoml.service
    class Small:
        @bentoml.api
        def ping(self, text: str = "") -> str:
            return text

        @bentoml.task
        def work(self, n: int = 1) -> int:
            return n

    label = endpoint_labeller(Small, {ui.PATH: ui.create_app()})
    assert label("/ping") == "/ping" and label("/work/status") == "/work/status" and label("/metrics") == "/metrics"
    assert label("/ui/thumbnail/abc123") == label("/ui/thumbnail/other") == "/ui/thumbnail/{image_id}"
    assert label("/ui/static/app.js") == "/ui/static"
    assert label("/ui/") == "/ui/"
    made_up = {label(f"/probe-{i}") for i in range(1000)} | {label(f"/ui/x/{i}") for i in range(1000)}
    assert made_up == {"other"}


def test_upstream_multipart_still_reads_text_fields_as_json_and_urls_in_file_fields() -> None:
    """When this fails, BentoML's multipart reader changed: re-check GuardedMultipartSerde (it replaces it)."""
    import inspect

    source = inspect.getsource(upstream.UPSTREAM_MULTIPART_SERDE.parse_request)
    assert "json.loads(v)" in source  # "0" becomes the integer 0 for a text field
    assert "ensure_file" in source and "client.get(url)" in inspect.getsource(
        upstream.UPSTREAM_MULTIPART_SERDE.ensure_file
    )


def test_upstream_input_models_still_take_unknown_fields_and_coerce_types() -> None:
    """When this fails, BentoML's generated input models forbid extras or are strict: drop strict_inputs."""
    import bentoml

    @bentoml.service
    class Plain:
        @bentoml.api
        def page(self, offset: int = 0) -> int:
            return offset

    spec = Plain.apis["page"].input_spec
    assert spec.model_config.get("extra") != "forbid" and not spec.model_config.get("strict")
    assert spec.model_validate_json('{"offset": false, "lable": 1}').offset == 0  # upstream: accepted, coerced
    upstream.strict_inputs(Plain)
    with pytest.raises(Exception, match="offset|lable"):
        spec.model_validate_json('{"offset": false}')


def test_a_text_form_field_keeps_its_text() -> None:
    assert upstream.form_value("0", text=True) == "0" and upstream.form_value("0", text=False) == 0
    assert upstream.form_value('"test"', text=True) == "test" and upstream.form_value("null", text=True) is None
    assert upstream.form_value("train", text=True) == "train"


@contextmanager
def _uvicorn(*, header_timeout_s: float | None) -> Iterator[int]:
    """A real uvicorn server (its httptools protocol) in a thread; with ``header_timeout_s``, the deadline fix on."""
    import threading

    import uvicorn
    from uvicorn.protocols.http import httptools_impl

    from training.jobs.processes import free_port

    protocol = httptools_impl.HttpToolsProtocol
    names = ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete", "on_response_complete")
    saved = {name: getattr(protocol, name) for name in names}
    for name, original in zip(names, upstream.HEADER_DEADLINE_PATCHED, strict=True):
        setattr(protocol, name, original)  # the upstream methods, whatever this process patched before
    if header_timeout_s is not None:
        upstream.header_deadline(header_timeout_s)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(_answer, port=port, http="httptools", log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            asyncio.run(asyncio.sleep(0.02))
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        for name, method in saved.items():
            setattr(protocol, name, method)


def _half_request_answer(port: int, wait_s: float) -> tuple[bytes, bool]:
    """Send a request line and one header, then nothing: what came back within ``wait_s``, and whether it closed."""
    import socket

    from tests.sockets import read_until_closed

    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
        return read_until_closed(sock, wait_s)


def test_headers_that_never_complete_are_answered_408_and_closed() -> None:
    with _uvicorn(header_timeout_s=0.5) as port:
        received, closed = _half_request_answer(port, 5.0)
        assert closed and received.startswith(b"HTTP/1.1 408") and b'"error"' in received
        with socket_request(port) as answer:  # a complete request on a fresh connection is answered as ever
            assert answer.startswith(b"HTTP/1.1 200")


def test_upstream_uvicorn_still_waits_for_headers_for_ever() -> None:
    """When this fails, uvicorn times out incomplete headers itself: re-check header_deadline (docs/upstream/)."""
    with _uvicorn(header_timeout_s=None) as port:
        received, closed = _half_request_answer(port, 2.0)
        assert not closed and received == b""


@contextmanager
def socket_request(port: int) -> Iterator[bytes]:
    import socket

    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(5)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        yield received


def test_upstream_starlette_routes_still_match_a_trailing_newline() -> None:
    """When this fails, Starlette anchors route patterns at the very end: RouteIdentity's 404 for control
    characters stays as a second line (docs/upstream/starlette-route-trailing-newline.md)."""
    from starlette.routing import compile_path

    pattern, _, _ = compile_path("/relabel")
    assert pattern.match("/relabel\n") is not None
