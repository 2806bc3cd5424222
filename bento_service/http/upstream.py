"""Every reach into BentoML's (and uvicorn's) internals, in one module: a BentoML upgrade touches only this.

Each fix is tested in ``tests/code/test_upstream.py``, beside a test that fails the day the
pinned version changes the thing patched (then re-check or delete the fix). Reported upstream
where it is a bug: docs/upstream/.

- ``TimeoutMiddleware`` never cancels its per-request timer (it was predict's p99).
- An ``@api`` upload's client file name becomes a temp file's suffix (a long one: 500).
- The Prometheus middleware labels every request with its raw path, so each unknown path and
  each ``/ui/thumbnail/<id>`` became a series of its own: 5,000 made-up paths took ``/metrics``
  from 0.55 MB to 18.8 MB. Requests are labelled by route template (:func:`label_metrics_by_route`).
- A task's result store records a canceled task as failed once its answer arrives: a canceled
  task stays canceled.
- uvicorn answers a malformed request with a plain-text 400; every 4xx here is JSON (its
  httptools protocol, which it runs whenever httptools is installed: requirements.txt pins it).
- uvicorn waits for a request's headers for ever: a connection that opens and sends half a
  request line holds its place for minutes. Headers must complete within
  BOUNCER_HEADER_TIMEOUT_S of the connection opening or the previous answer (:func:`header_deadline`).
- BentoML ignores JSON fields an endpoint does not take and coerces types (``"offset": false``
  was 0): every endpoint's generated input model forbids extra fields and, for JSON, is strict
  (:func:`strict_inputs`).
- BentoML's multipart reader fetches a text value in a file field as a URL (SSRF), json-decodes
  unknown parts (a 500) and text fields (a class named ``0`` became the integer 0): it is
  replaced in its serde table by one that refuses the first two and keeps text as text.
- BentoML logs every 4xx an endpoint raises as an ERROR with a traceback: one INFO line instead."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import typing
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from _bentoml_impl.serde import ALL_SERDE, MultipartSerde
from _bentoml_impl.tasks.result import ResultStatus, Sqlite3Store
from _bentoml_sdk.validators import FileSchema
from bentoml._internal.server.http import instruments, traffic
from bentoml.exceptions import BadInput, BentoMLException
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Message, Scope
from uvicorn.protocols.http import httptools_impl

from bento_service.http.routes import MULTIPART, RouteInput, read_form, replaying, takes_many, validation_sentence

UPSTREAM_TIMEOUT_CALL = traffic.TimeoutMiddleware.__call__
UPSTREAM_FILE_DECODE = FileSchema.decode
UPSTREAM_METRICS_SETUP = instruments.RunnerTrafficMetricsMiddleware._setup
UPSTREAM_SET_RESULT = Sqlite3Store.set_result
UPSTREAM_HTTPTOOLS_400 = httptools_impl.HttpToolsProtocol.send_400_response
UPSTREAM_MULTIPART_SERDE = ALL_SERDE["multipart/form-data"]
UPSTREAM_CONNECTION_MADE = httptools_impl.HttpToolsProtocol.connection_made
UPSTREAM_CONNECTION_LOST = httptools_impl.HttpToolsProtocol.connection_lost
UPSTREAM_MESSAGE_BEGIN = httptools_impl.HttpToolsProtocol.on_message_begin
UPSTREAM_HEADERS_COMPLETE = httptools_impl.HttpToolsProtocol.on_headers_complete
UPSTREAM_RESPONSE_COMPLETE = httptools_impl.HttpToolsProtocol.on_response_complete
HEADER_DEADLINE_PATCHED = (  # what header_deadline wraps, in the order of its patches
    UPSTREAM_CONNECTION_MADE,
    UPSTREAM_CONNECTION_LOST,
    UPSTREAM_MESSAGE_BEGIN,
    UPSTREAM_HEADERS_COMPLETE,
    UPSTREAM_RESPONSE_COMPLETE,
)

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


HEADER_TIMER = "_bouncer_header_timer"


def header_deadline(timeout_s: float) -> None:
    """uvicorn's httptools protocol with a deadline on each request's headers: 408 and close past it.

    The clock starts when the connection opens and again when an answer is complete (the
    keep-alive wait counts too), and stops when the headers are complete. A client that
    sends a request line and then nothing, or a header a byte at a time, is closed after
    ``timeout_s``; one whose request is being answered is never timed.
    """
    protocol = httptools_impl.HttpToolsProtocol

    def arm(self: Any) -> None:
        if getattr(self, HEADER_TIMER, None) is None:
            setattr(self, HEADER_TIMER, self.loop.call_later(timeout_s, _headers_too_slow, self, timeout_s))

    def disarm(self: Any) -> None:
        timer = getattr(self, HEADER_TIMER, None)
        if timer is not None:
            timer.cancel()
            setattr(self, HEADER_TIMER, None)

    def connection_made(self: Any, transport: Any) -> None:
        UPSTREAM_CONNECTION_MADE(self, transport)
        arm(self)

    def connection_lost(self: Any, exc: Exception | None) -> None:
        disarm(self)
        UPSTREAM_CONNECTION_LOST(self, exc)

    def on_message_begin(self: Any) -> None:
        UPSTREAM_MESSAGE_BEGIN(self)
        arm(self)

    def on_headers_complete(self: Any) -> None:
        disarm(self)
        UPSTREAM_HEADERS_COMPLETE(self)

    def on_response_complete(self: Any) -> None:
        UPSTREAM_RESPONSE_COMPLETE(self)
        if not self.transport.is_closing():
            arm(self)

    protocol.connection_made = connection_made  # type: ignore[method-assign]
    protocol.connection_lost = connection_lost  # type: ignore[method-assign]
    protocol.on_message_begin = on_message_begin  # type: ignore[method-assign]
    protocol.on_headers_complete = on_headers_complete  # type: ignore[method-assign]
    protocol.on_response_complete = on_response_complete  # type: ignore[method-assign]


def _headers_too_slow(self: Any, timeout_s: float) -> None:
    setattr(self, HEADER_TIMER, None)
    if self.transport.is_closing():
        return
    if self.cycle is not None and not self.cycle.response_complete:
        return  # a request is being answered (pipelined headers wait their turn): not idle
    body = json.dumps({"error": f"the request's headers did not arrive within {timeout_s:g} s"}).encode()
    self.transport.write(
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        + b"content-length: "
        + str(len(body)).encode("ascii")
        + b"\r\nconnection: close\r\n\r\n"
        + body
    )
    self.transport.close()


class GuardedMultipartSerde:
    """BentoML's multipart reader, refusing unknown parts and text in file fields before it acts on them.

    It is installed in BentoML's serde table for multipart and urlencoded bodies. The
    form is parsed once: Starlette caches it on the request BentoML's own reader uses.
    A text field's value is JSON-decoded as BentoML does (``k=5`` is 5, ``label=null``
    is None), but a text field keeps its text when the JSON is another type (a class
    named ``0`` is "0", not the integer 0 and a 400).
    """

    @staticmethod
    def register() -> None:
        from _bentoml_impl.serde import ALL_SERDE

        class Guarded(MultipartSerde):
            async def parse_request(self, request: Request, cls: Any) -> Any:
                form = await check_form(request, cls)
                data: dict[str, Any] = {}
                for name in form:
                    field, values = cls.model_fields[name], form.getlist(name)
                    if len(values) > 1 and not takes_many(field.annotation):
                        raise BadInput(f"field {name!r} takes one value, got {len(values)}")
                    if name in cls.multipart_fields:
                        data[name] = values if takes_many(field.annotation) else values[0]
                    else:
                        data[name] = form_value(str(values[0]), text=_takes_text(field.annotation))
                return cls.model_validate(data)

        for media_type in (MULTIPART, "application/x-www-form-urlencoded"):
            ALL_SERDE[media_type] = Guarded  # type: ignore[index]


def form_value(raw: str, *, text: bool) -> Any:
    """A form field's value: its JSON when it is JSON (and, for a text field, a string or null), else its text."""
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return raw if text and value is not None and not isinstance(value, str) else value


def _takes_text(annotation: Any) -> bool:
    return annotation is str or str in typing.get_args(annotation)


async def check_form(request: Request, cls: Any) -> FormData:
    """The parsed form; BadInput (400) for a malformed form, an unknown field, or a text value in a file field."""
    form, problem = await read_form(request, frozenset(cls.model_fields), frozenset(cls.multipart_fields))
    if problem:
        raise BadInput(problem)
    return form


async def submitted_body_problem(scope: Scope, body: bytes, media_type: str, route: RouteInput) -> str | None:
    """What is wrong with a task submission, read the way BentoML will read it when the task runs; None if fine."""
    from _bentoml_impl.serde import ALL_SERDE
    from pydantic import ValidationError

    serde = ALL_SERDE.get(media_type or "application/json", ALL_SERDE["application/json"])()
    try:
        await route.spec.from_http_request(Request(scope, replaying(body, _disconnected)), serde)
    except ValidationError as exc:
        return validation_sentence(exc.errors(include_context=False, include_input=False), scope["path"], route.fields)
    except BadInput as exc:
        return str(exc)
    return None


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}


# The logger and message of BentoML's log_exception (bentoml 1.4.39).
BENTOML_EXCEPTION_LOGGER = "bentoml._internal.server.http_app"

BENTOML_EXCEPTION_MESSAGE = "Exception on %s [%s]"


class ClientErrorsInOneLine(logging.Filter):
    """Rewrite BentoML's "Exception on ..." record of a 4xx into one INFO line: path, method, status, message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != BENTOML_EXCEPTION_MESSAGE or not record.exc_info or record.exc_info[1] is None:
            return True
        status = client_error_status(record.exc_info[1])
        if status is None:
            return True
        path, method = record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?")
        text = str(record.exc_info[1]).strip()
        message = text.splitlines()[0] if text else type(record.exc_info[1]).__name__
        record.msg, record.args = "%s [%s] answered %d: %s", (path, method, status, message)
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.exc_info, record.exc_text = None, None
        return True


def client_error_status(exc: BaseException) -> int | None:
    """The 4xx status BentoML answers ``exc`` with, or None for a server error."""
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500:
        return int(exc.error_code.value)
    return None


def install_client_error_filter() -> None:
    """Add the filter to BentoML's exception logger once per process (each worker imports the service)."""
    logger = logging.getLogger(BENTOML_EXCEPTION_LOGGER)
    if not any(isinstance(f, ClientErrorsInOneLine) for f in logger.filters):
        logger.addFilter(ClientErrorsInOneLine())


def strict_inputs(service: Any) -> None:
    """Make each endpoint's generated input model refuse fields it does not take (a 400 naming them).

    A JSON endpoint's model is also strict: ``"offset": false`` or ``"k": "5"`` is a 400,
    not 0 and 5 (a form sends every value as text, so upload endpoints stay lax).
    """
    for api in service.apis.values():
        spec = api.input_spec
        if getattr(spec, "__root_input__", False):
            continue
        wanted = {"extra": "forbid", **({} if spec.multipart_fields else {"strict": True})}
        if any(spec.model_config.get(key) != value for key, value in wanted.items()):
            spec.model_config.update(wanted)  # type: ignore[typeddict-item]
            spec.model_rebuild(force=True)


def apply(*, header_timeout_s: float) -> None:
    """Every fix that must be in place before the service class is defined (its input models keep ``decode``)."""
    traffic.TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign]
    FileSchema.decode = _file_decode  # type: ignore[method-assign]
    Sqlite3Store.set_result = _set_result  # type: ignore[method-assign]
    httptools_impl.HttpToolsProtocol.send_400_response = _httptools_400  # type: ignore[method-assign]
    header_deadline(header_timeout_s)
    GuardedMultipartSerde.register()
    install_client_error_filter()  # a 4xx is one INFO line in the server log, not an ERROR traceback


def label_metrics_by_route(endpoint_label: Callable[[str], str]) -> None:
    """Metrics label each request by ``endpoint_label(path)``, its route's template (the service knows them)."""
    instruments.RunnerTrafficMetricsMiddleware._setup = _labelled_by_route(endpoint_label)  # type: ignore[method-assign]
