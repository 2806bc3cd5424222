"""Fixes to BentoML 1.4 itself, applied when the service module is imported (in every worker).

Each one is reported upstream with a reproduction: docs/upstream/. Remove a fix once the
pinned BentoML carries it (``tests/code/test_bentoml_fixes.py`` says when it stops mattering).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import PurePosixPath
from typing import Any

from _bentoml_sdk.validators import FileSchema
from bentoml._internal.server.http import traffic
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse

UPSTREAM_TIMEOUT_CALL = traffic.TimeoutMiddleware.__call__
UPSTREAM_FILE_DECODE = FileSchema.decode
SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,12}")


async def _timeout_call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``TimeoutMiddleware.__call__`` with its timer cancelled when the request is answered.

    BentoML schedules a ``loop.call_later(timeout, ...)`` per request and never cancels
    it, so every request's future, context and spans stay reachable for the whole
    timeout (300 s here). Under load the old GC generation grew from 328k to 960k
    objects in 100 s and full collections from 212 to 762 ms: that was predict's p99.
    """
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: dict[str, Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send))
    # a request that ends without sending (a client disconnect) also releases the waiter
    fut.add_done_callback(lambda _: waiter.done() or waiter.set_result(None))
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            message = {"error": f"Not able to process the request in {self.timeout} seconds"}
            await JSONResponse(message, status_code=504)(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


def upload_name(client_name: str) -> str:
    """A short, plain name keeping only the extension of what the client called its file."""
    suffix = PurePosixPath(client_name.replace("\\", "/")).suffix
    return "upload" + (suffix if SAFE_SUFFIX.fullmatch(suffix) else "")


def _file_decode(self: FileSchema, obj: Any) -> Any:
    """``FileSchema.decode`` (an ``@api`` upload into a temp file) with the client's file name made plain.

    BentoML uses the client's whole base name as the temp file's suffix, so a name over
    ~250 bytes fails the open (``File name too long``) and the request answers 500.
    """
    if isinstance(obj, UploadFile) and obj.filename:
        obj.filename = upload_name(obj.filename)
    return UPSTREAM_FILE_DECODE(self, obj)


def apply() -> None:
    traffic.TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]
    FileSchema.decode = _file_decode  # type: ignore[method-assign]
