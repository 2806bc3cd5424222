"""Fixes to BentoML 1.4 (and the uvicorn it runs) itself, applied when the service module is imported (in every worker).

Each one is reported upstream with a reproduction: docs/upstream/. Remove a fix once the
pinned BentoML carries it (``tests/code/test_bentoml_fixes.py`` says when it stops mattering).

- ``TimeoutMiddleware`` never cancels its per-request timer (predict's p99).
- An ``@api`` upload's client file name becomes a temp file's suffix (a long one: 500).
- The Prometheus middleware labels every request with its raw path, so each unknown
  path and each ``/ui/thumbnail/<id>`` became a series of its own: 5,000 made-up paths
  took ``/metrics`` from 0.55 MB to 18.8 MB. Requests are labelled by route template.
- A task's result store records a canceled task as failed once its answer arrives: a
  canceled task stays canceled.
- uvicorn answers a malformed request with a plain-text 400; every 4xx here is JSON (its
  httptools protocol, which it runs whenever httptools is installed: requirements.txt pins it).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from _bentoml_impl.tasks.result import ResultStatus, Sqlite3Store
from _bentoml_sdk.validators import FileSchema
from bentoml._internal.server.http import instruments, traffic
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse
from uvicorn.protocols.http import httptools_impl

UPSTREAM_TIMEOUT_CALL = traffic.TimeoutMiddleware.__call__
UPSTREAM_FILE_DECODE = FileSchema.decode
UPSTREAM_METRICS_SETUP = instruments.RunnerTrafficMetricsMiddleware._setup
UPSTREAM_SET_RESULT = Sqlite3Store.set_result
UPSTREAM_HTTPTOOLS_400 = httptools_impl.HttpToolsProtocol.send_400_response
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


class _ByRoute:
    """A Prometheus metric whose ``endpoint`` label is the route template of the path, not the path."""

    def __init__(self, metric: Any, endpoint_label: Callable[[str], str]) -> None:
        self._metric = metric
        self._endpoint_label = endpoint_label

    def labels(self, *args: Any, **labels: Any) -> Any:
        if "endpoint" in labels:
            labels["endpoint"] = self._endpoint_label(str(labels["endpoint"]))
        return self._metric.labels(*args, **labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metric, name)


def _labelled_by_route(endpoint_label: Callable[[str], str]) -> Callable[[Any], None]:
    def setup(self: Any) -> None:
        UPSTREAM_METRICS_SETUP(self)
        for name, metric in list(vars(self).items()):
            if name.startswith("metrics_") and hasattr(metric, "labels") and not isinstance(metric, _ByRoute):
                setattr(self, name, _ByRoute(metric, endpoint_label))

    return setup


async def _set_result(self: Sqlite3Store, task_id: str, result: Any, status: ResultStatus) -> None:
    """``Sqlite3Store.set_result``, keeping a task that was canceled while it ran canceled."""
    try:
        if (await self.get_status(task_id)).status is ResultStatus.CANCELED:
            status = ResultStatus.CANCELED
    except KeyError:
        pass
    await UPSTREAM_SET_RESULT(self, task_id, result, status)


def malformed_request_body(msg: str) -> bytes:
    return json.dumps({"error": f"malformed HTTP request: {msg}"}).encode()


def _httptools_400(self: Any, msg: str) -> None:
    """uvicorn's answer to a request it cannot parse, as JSON (the same status, headers and close)."""
    body = malformed_request_body(msg)
    content = [httptools_impl.STATUS_LINE[400]]
    for name, value in self.server_state.default_headers:
        content.extend([name, b": ", value, b"\r\n"])
    content.extend(
        [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n",
            b"\r\n",
            body,
        ]
    )
    self.transport.write(b"".join(content))
    self.transport.close()


def apply() -> None:
    """Every fix but the metrics labels; before the service class is defined (its input models keep ``decode``)."""
    traffic.TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]
    FileSchema.decode = _file_decode  # type: ignore[method-assign]
    Sqlite3Store.set_result = _set_result  # type: ignore[method-assign]
    httptools_impl.HttpToolsProtocol.send_400_response = _httptools_400  # type: ignore[method-assign]


def label_metrics_by_route(endpoint_label: Callable[[str], str]) -> None:
    """Metrics label each request by ``endpoint_label(path)``, its route's template (the service knows them)."""
    instruments.RunnerTrafficMetricsMiddleware._setup = _labelled_by_route(endpoint_label)  # type: ignore[method-assign]
