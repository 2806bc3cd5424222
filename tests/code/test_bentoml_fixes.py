"""The BentoML fixes in bento_service.bentoml_fixes: what they fix, and whether upstream still needs them."""

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

from bento_service import bentoml_fixes


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
    assert asyncio.run(_timers_left_after_requests(bentoml_fixes._timeout_call, 50)) == 0


def test_upstream_still_leaks_the_timer() -> None:
    """Fails once the pinned BentoML cancels its timer: then delete the fix (docs/upstream/)."""
    assert asyncio.run(_timers_left_after_requests(bentoml_fixes.UPSTREAM_TIMEOUT_CALL, 50)) == 50


def test_the_patched_middleware_still_times_out() -> None:
    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(5)

    async def run() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        await bentoml_fixes._timeout_call(TimeoutMiddleware(slow, timeout=0.05), {"type": "http"}, receive, send)
        return sent

    sent = asyncio.run(run())
    assert sent[0]["status"] == 504


def _upload(name: str) -> UploadFile:
    return UploadFile(io.BytesIO(b"\x89PNG bytes"), filename=name, headers=Headers({"content-type": "image/png"}))


def test_a_long_client_file_name_is_saved_under_a_plain_one(tmp_path: Path) -> None:
    with _request_temp_dir(tmp_path):
        saved = bentoml_fixes._file_decode(FileSchema(), _upload("x" * 300 + ".png"))
    assert saved.name.endswith("upload.png") and saved.read_bytes() == b"\x89PNG bytes"
    assert bentoml_fixes.upload_name("../../etc/passwd") == "upload"
    assert bentoml_fixes.upload_name("a\\b.JPEG") == "upload.JPEG"
    assert bentoml_fixes.upload_name("photo.png; rm -rf") == "upload"


def test_upstream_still_fails_on_a_long_client_file_name(tmp_path: Path) -> None:
    """When this fails, the pinned BentoML no longer needs the file-name fix."""
    with _request_temp_dir(tmp_path), pytest.raises(OSError, match="too long"):
        bentoml_fixes.UPSTREAM_FILE_DECODE(FileSchema(), _upload("x" * 300 + ".png"))


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
