"""Where BentoML 1.4 answers badly on its own, and what stands in front of it: one :func:`install`.

What BentoML does by itself, and what we do about it:

- It ignores JSON fields an endpoint does not take (``{"lable": "cat"}`` searched
  every class): every endpoint's input model forbids extra fields.
- A text value in a file field (``curl -F image=http://...``), or a JSON body that is
  a URL, is downloaded server-side (an SSRF path once uvloop is installed); a binary
  file under an unknown multipart field was a 500 (it json-decodes unknown fields); a
  multipart body without a boundary or with over 1000 parts was a 500. Upload routes
  take multipart only (:class:`RequestGuard`, from the headers), and
  :class:`GuardedMultipartSerde` checks the parts during BentoML's own, single parse.
- It reads any body size: :class:`RequestGuard` answers 413 over the cap.
- A 4xx raised as ``BentoMLException`` gets a body wrapped in a list
  (bentoml/BentoML#4232), validation errors say "1 validation error for Input":
  :class:`ErrorBodyFix` makes every 4xx one ``{"error": ...}`` object that names the problem.
- Writes need the API token whatever the HTTP method (BentoML's own
  ``PUT /train/cancel`` took none and only flipped a status), and BentoML replaces every
  401 message with "Authorization error": :class:`WriteGate` answers 401/409 itself
  and really cancels a training.
- Its OpenAPI page carries BentoML's boilerplate (default README with badges, "BentoML
  Team" as contact, no version outside a bento) and no option to change it:
  :class:`bento_service.openapi.OpenAPIInfo` answers ``/docs.json`` with Bouncer's ``info``,
  and documents every answer these guards add (401, 409, 413, 415, the error body).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BadInput
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse

from bento_service.openapi import OpenAPIInfo
from bento_service.predict_route import PredictRoute
from bento_service.routes import (
    MULTIPART,
    ASGIApp,
    Message,
    Receive,
    RouteInput,
    Scope,
    Send,
    api_routes,
    json_nul_problem,
    read_form,
    unknown_fields_message,
)
from training.jobs.runner import NotRunning, TrainRunner
from training.settings import Settings


def install(service: Any, *, settings: Settings, write_endpoints: Iterable[str]) -> None:
    """Put every guard in front of ``service`` (a ``@bentoml.service`` class), in this order.

    The first added is outermost (Starlette builds the stack in list order). Outermost:
    RequestGuard (size and content type, before anything reads the body); then the raw
    predict route (:mod:`bento_service.predict_route`, answering predict itself in its
    final form); then ErrorBodyFix (so BentoML's 4xx get fixed); then WriteGate (the
    token and the training lock); innermost: OpenAPIInfo (a read-only page).
    """
    routes = api_routes(service)
    writes = write_paths(service, write_endpoints)
    forbid_unknown_fields(service)
    GuardedMultipartSerde.register()
    service.add_asgi_middleware(RequestGuard, routes=routes, max_body_bytes=settings.max_request_bytes)
    if settings.fast_predict:
        service.add_asgi_middleware(PredictRoute, routes=routes)
    service.add_asgi_middleware(ErrorBodyFix, routes=routes)
    service.add_asgi_middleware(WriteGate, settings=settings, write_paths=writes)
    service.add_asgi_middleware(OpenAPIInfo, service=service, write_paths=writes)


def authorized(token: str | None, authorization: str) -> bool:
    """No token configured, or the header carries it (compared in constant time)."""
    return not token or hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


@dataclass(frozen=True)
class WritePaths:
    """Every HTTP path that reaches a write endpoint: plain writes, a task's starts, a task's cancel."""

    writes: frozenset[str]
    starts: frozenset[str]  # starting a training: refused while one runs
    cancels: frozenset[str]

    def __contains__(self, path: object) -> bool:
        return path in self.writes or path in self.starts or path in self.cancels


def write_paths(service: Any, endpoints: Iterable[str]) -> WritePaths:
    writes, starts, cancels = set(), set(), set()
    for name in endpoints:
        api = service.apis[name]
        if api.is_task:
            starts |= {api.route, f"{api.route}/submit", f"{api.route}/retry"}
            cancels.add(f"{api.route}/cancel")
        else:
            writes.add(api.route)
    return WritePaths(frozenset(writes), frozenset(starts), frozenset(cancels))


def forbid_unknown_fields(service: Any) -> None:
    """Make each endpoint's generated input model refuse fields it does not take (a 400 naming them)."""
    for api in service.apis.values():
        spec = api.input_spec
        if not getattr(spec, "__root_input__", False) and spec.model_config.get("extra") != "forbid":
            spec.model_config["extra"] = "forbid"
            spec.model_rebuild(force=True)


class GuardedMultipartSerde:
    """BentoML's multipart reader, refusing unknown parts and text in file fields before it acts on them.

    It is installed in BentoML's serde table for multipart and urlencoded bodies. The
    form is parsed once: Starlette caches it on the request BentoML's own reader uses.
    """

    @staticmethod
    def register() -> None:
        from _bentoml_impl.serde import ALL_SERDE, MultipartSerde

        class Guarded(MultipartSerde):
            async def parse_request(self, request: Request, cls: Any) -> Any:
                await check_form(request, cls)
                return await super().parse_request(request, cls)

        for media_type in (MULTIPART, "application/x-www-form-urlencoded"):
            ALL_SERDE[media_type] = Guarded  # type: ignore[index]


async def check_form(request: Request, cls: Any) -> None:
    """BadInput (400) for a malformed form, an unknown field, or a text value in a file field."""
    _, problem = await read_form(request, frozenset(cls.model_fields), frozenset(cls.multipart_fields))
    if problem:
        raise BadInput(problem)


class RequestGuard:
    """ASGI middleware: 413 for a body over the cap (before reading it all), 415 for a non-multipart upload."""

    def __init__(self, app: ASGIApp, *, routes: Mapping[str, RouteInput], max_body_bytes: int) -> None:
        self.app = app
        self.routes = routes
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if route.files and media_type != MULTIPART:
            uploads = ", ".join(map(repr, sorted(route.files)))
            sent = media_type or "a body without content type"
            message = f"{scope['path']} takes {MULTIPART} with the file field {uploads}, not {sent}"
            await _answer(scope, receive, send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, message)
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        try:
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLarge:
            await self._too_large(scope, receive, send)
            return
        if media_type in ("", "application/json") and (problem := json_nul_problem(body)):
            await _answer(scope, receive, send, HTTPStatus.BAD_REQUEST, problem)
            return
        if route.submit and (problem := await submitted_body_problem(scope, body, media_type, route)):
            await _answer(scope, receive, send, HTTPStatus.BAD_REQUEST, problem)
            return
        await self.app(scope, replaying(body, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body over the {self.max_body_bytes}-byte limit (BOUNCER_MAX_REQUEST_BYTES)"
        await _answer(scope, receive, send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)


class BodyTooLarge(Exception):
    pass


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


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing it as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # client went away: let the app see the disconnect
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class ErrorBodyFix:
    """ASGI middleware: every 4xx JSON body becomes one ``{"error": <a sentence>}`` object.

    BentoMLException 4xx bodies arrive as ``[{"error": ...}]``; validation errors as
    ``{"error": "1 validation error for Input", "detail": [...]}``, which becomes a
    sentence naming each field and problem (``detail`` stays for programs). Every 2xx
    passes straight through: only a 4xx has its headers read.
    """

    def __init__(self, app: ASGIApp, *, routes: Mapping[str, RouteInput]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        takes = self.routes.get(scope.get("path", ""), RouteInput(frozenset())).fields

        async def send_fixed(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if 400 <= message["status"] < 500 and is_json(Headers(raw=message.get("headers", []))):
                    start = message  # hold it: the body (and its length) may change
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = error_body(b"".join(chunks), scope.get("path", ""), takes)
                headers = MutableHeaders(raw=list(start.get("headers", [])))
                headers["content-length"] = str(len(body))
                await send({**start, "headers": headers.raw})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_fixed)


def is_json(headers: Headers) -> bool:
    return headers.get("content-type", "").startswith("application/json")


def error_body(body: bytes, path: str, takes: frozenset[str]) -> bytes:
    """The error object out of a one-element list, validation details as a sentence; anything else unchanged."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        return body
    if isinstance(document, list) and len(document) == 1 and isinstance(document[0], dict) and "error" in document[0]:
        return json.dumps(document[0]).encode()
    if isinstance(document, dict) and isinstance(document.get("detail"), list) and document["detail"]:
        document["error"] = validation_sentence(document["detail"], path, takes)
        return json.dumps(document).encode()
    return body


def validation_sentence(details: list[Any], path: str, takes: frozenset[str]) -> str:
    """'k: Input should be greater than or equal to 1; unknown field 'lable' ...' from pydantic's error list."""
    unknown = [str(d["loc"][0]) for d in details if isinstance(d, dict) and d.get("type") == "extra_forbidden"]
    parts = [unknown_fields_message(unknown, path, takes)] if unknown else []
    for detail in details:
        if not isinstance(detail, dict) or detail.get("type") == "extra_forbidden":
            continue
        where = ".".join(str(part) for part in detail.get("loc", ())) or "body"
        parts.append(f"{where}: {detail.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class WriteGate:
    """ASGI middleware: a write without a valid token is a 401 saying what is missing; a second training a 409.

    ``write_paths``: every path of a write endpoint (see :func:`write_paths`). A cancel
    (``PUT <task>/cancel?task_id=``) is answered here: it stops the training's process.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings, write_paths: WritePaths) -> None:
        self.app = app
        self.token = settings.api_token
        self.write_paths = write_paths
        self.runner = TrainRunner(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in self.write_paths:
            await self.app(scope, receive, send)
            return
        if not authorized(self.token, Headers(scope=scope).get("authorization", "")):
            message = f"{path} needs 'Authorization: Bearer <BOUNCER_API_TOKEN>'"
            await _answer(scope, receive, send, HTTPStatus.UNAUTHORIZED, message, {"WWW-Authenticate": "Bearer"})
        elif path in self.write_paths.cancels:
            await self._cancel(scope, receive, send)
        elif path in self.write_paths.starts and (busy := await asyncio.to_thread(self.runner.busy)):
            await _answer(scope, receive, send, HTTPStatus.CONFLICT, busy)
        else:
            await self.app(scope, receive, send)

    async def _cancel(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stop the training of ``?task_id=``: 200 once its process is gone, 409 if it is not running."""
        if scope["method"] != "PUT":
            await _answer(scope, receive, send, HTTPStatus.METHOD_NOT_ALLOWED, f"{scope['path']} takes PUT")
            return
        task_id = QueryParams(scope.get("query_string", b"")).get("task_id")
        if not task_id:
            await _answer(scope, receive, send, HTTPStatus.BAD_REQUEST, "task_id is required")
            return
        try:
            answer = JSONResponse(await asyncio.to_thread(self.runner.cancel, task_id))
        except NotRunning as exc:
            answer = JSONResponse({"error": str(exc)}, status_code=HTTPStatus.CONFLICT)
        await answer(scope, receive, send)


async def _answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: HTTPStatus,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)
