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
- It takes a JSON body with any content type, or none, so any web page a reviewer
  visits could write (a ``<form enctype="text/plain">`` spelling JSON relabelled an
  image): JSON routes take ``application/json`` only (415), and :class:`CrossSiteGuard`
  refuses a browser's write from another origin (403) before anything is read.
- Its validation answer lists every error, so a million ids made a 200 MB body: every
  route has a body cap of its own (:class:`RequestGuard`, from ``Content-Length``),
  unknown JSON fields are refused before BentoML lists them, lists of ids are capped
  (BOUNCER_MAX_IDS) and every error body is cut to a few errors and a count.
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
import contextlib
import hmac
import json
import typing
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
from bentoml.exceptions import BadInput
from starlette.datastructures import FormData, Headers, MutableHeaders, QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse

from bento_service import memory
from bento_service.openapi import OpenAPIInfo
from bento_service.predict_route import PredictRoute
from bento_service.routes import (
    JSON,
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
    takes_many,
    unknown_fields_message,
)
from training.jobs.runner import NotRunning, TrainRunner
from training.settings import Settings


def install(
    service: Any,
    *,
    settings: Settings,
    write_endpoints: Iterable[str],
    classes: Callable[[], Sequence[str]] | None = None,
) -> None:
    """Put every guard in front of ``service`` (a ``@bentoml.service`` class), in this order.

    The first added is outermost (Starlette builds the stack in list order). Outermost:
    CrossSiteGuard (a browser's write from another site, from the headers alone); then
    RelativeRedirects (no Host header reflected into a Location); then RequestGuard
    (size and content type, before anything reads the body); then the raw predict route
    (:mod:`bento_service.predict_route`, answering predict itself in its final form);
    then ErrorBodyFix (so BentoML's 4xx get fixed); then WriteGate (the token and the
    training lock); innermost: OpenAPIInfo (a read-only page).
    """
    routes = api_routes(
        service,
        max_json_bytes=settings.max_json_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        max_request_bytes=settings.max_request_bytes,
    )
    writes = write_paths(service, write_endpoints)
    forbid_unknown_fields(service)
    GuardedMultipartSerde.register()
    service.add_asgi_middleware(CrossSiteGuard, trusted_origins=settings.trusted_origin_set)
    service.add_asgi_middleware(RelativeRedirects)
    service.add_asgi_middleware(
        RequestGuard,
        routes=routes,
        budget=BodyBudget(settings.max_body_bytes_in_flight),
        sync_task_routes=writes.sync_task_routes,
    )
    if settings.fast_predict:
        service.add_asgi_middleware(PredictRoute, routes=routes)
    service.add_asgi_middleware(ErrorBodyFix, routes=routes)
    service.add_asgi_middleware(WriteGate, settings=settings, write_paths=writes)
    service.add_asgi_middleware(OpenAPIInfo, service=service, write_paths=writes, classes=classes)


def authorized(token: str | None, authorization: str) -> bool:
    """No token configured, or the header carries it (compared in constant time)."""
    return not token or hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


@dataclass(frozen=True)
class WritePaths:
    """Every HTTP path that reaches a write endpoint: plain writes, a task's starts, a task's cancel.

    ``sync_task_routes``: a task's own route (``POST /train``), which BentoML serves by
    running the task inside the request: a training no one could watch or cancel, and a
    504 after the traffic timeout. It is not served (404 naming the task's routes).
    """

    writes: frozenset[str]
    starts: frozenset[str]  # starting a training (POST): refused while one runs
    cancels: frozenset[str]
    sync_task_routes: frozenset[str] = frozenset()

    def __contains__(self, path: object) -> bool:
        return path in self.writes or path in self.starts or path in self.cancels


def write_paths(service: Any, endpoints: Iterable[str]) -> WritePaths:
    writes, starts, cancels = set(), set(), set()
    for name in endpoints:
        api = service.apis[name]
        if api.is_task:
            starts |= {f"{api.route}/submit", f"{api.route}/retry"}
            cancels.add(f"{api.route}/cancel")
        else:
            writes.add(api.route)
    sync = frozenset(api.route for api in service.apis.values() if api.is_task)
    return WritePaths(frozenset(writes), frozenset(starts), frozenset(cancels), sync)


def forbid_unknown_fields(service: Any) -> None:
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
        from _bentoml_impl.serde import ALL_SERDE, MultipartSerde

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


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CrossSiteGuard:
    """ASGI middleware: 403 for a browser's request that changes something from another site's page.

    A reviewer's browser carries its cookies and network position to any site it
    visits, and a page there can POST to this server without asking (a form, or
    ``fetch`` in ``no-cors`` mode). Browsers say where a request comes from: a
    ``Sec-Fetch-Site`` other than ``same-origin`` or ``none`` (typed by the user), or
    an ``Origin`` whose host is not the ``Host`` asked for, is another site (the
    algorithm of Go's ``http.CrossOriginProtection``). Requests without either header
    come from programs (curl, the BentoML client, the notebooks) and pass;
    BOUNCER_TRUSTED_ORIGINS names other sites' pages that may write.
    """

    def __init__(self, app: ASGIApp, *, trusted_origins: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.trusted = trusted_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        unsafe = scope["type"] == "http" and scope["method"] not in SAFE_METHODS
        if unsafe and (problem := cross_site_problem(Headers(scope=scope), self.trusted)):
            await _answer(scope, receive, send, HTTPStatus.FORBIDDEN, problem)
            return
        await self.app(scope, receive, send)


def cross_site_problem(headers: Headers, trusted: frozenset[str] = frozenset()) -> str | None:
    """Why a state-changing request is refused as cross-site, or None when it is same-origin or not a browser's."""
    origin = headers.get("origin", "").rstrip("/").lower()
    if origin and origin in trusted:
        return None
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if fetch_site:
        if fetch_site in ("same-origin", "none"):
            return None
        return (
            f"cross-site request refused: a page of another site ({origin or fetch_site}) may not change anything "
            "here; add its origin to BOUNCER_TRUSTED_ORIGINS to allow it"
        )
    if not origin:
        return None  # not sent by a browser
    host = headers.get("host", "").lower()
    if origin.partition("://")[2] == host:
        return None
    return (
        f"cross-site request refused: Origin {origin} is not this server ({host or 'no Host header'}); "
        "add it to BOUNCER_TRUSTED_ORIGINS to allow it"
    )


class BodyBudget:
    """The request bytes one worker holds at once: a request that would pass the budget waits for room.

    Every body is read whole before an endpoint sees it, so 64 concurrent 20 MB
    uploads held 1.3 GB. A request larger than the whole budget runs alone.
    """

    WAIT_S = 10.0

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._room = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes of the budget for the block; TimeoutError after WAIT_S without room."""
        async with self._room:
            room = self._room.wait_for(lambda: self.used == 0 or self.used + size <= self.limit)
            await asyncio.wait_for(room, self.WAIT_S)
            self.used += size
        try:
            yield
        finally:
            async with self._room:
                self.used -= size
                self._room.notify_all()


class RequestGuard:
    """ASGI middleware: a POST route's body checked from its headers, then read once, within its cap.

    415 for an upload route without multipart or a JSON route without ``application/json``;
    413 over the route's cap (from ``Content-Length`` before reading, else while reading);
    400 for JSON that is not an object, names fields the route does not take, or holds NUL;
    404 for a task's synchronous route (see :class:`WritePaths`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Mapping[str, RouteInput],
        budget: BodyBudget | None = None,
        sync_task_routes: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.routes = routes
        self.budget = budget or BodyBudget(1 << 62)
        self.sync_task_routes = sync_task_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path in self.sync_task_routes:
            message = f"{path} is not served: start a training with POST {path}/submit (a task to watch and cancel)"
            await _answer(scope, receive, send, HTTPStatus.NOT_FOUND, message)
            return
        route = self.routes.get(path)
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        declared = headers.get("content-length", "")
        if not route.files and not media_type and declared == "0":
            media_type = JSON  # no body at all: every field at its default, as '{}'
        if problem := media_type_problem(path, route, media_type):
            await _answer(scope, receive, send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, problem)
            return
        if declared.isdigit() and int(declared) > route.max_body_bytes:
            await self._too_large(scope, receive, send, route)
            return
        try:
            async with self.budget.reserve(int(declared) if declared.isdigit() else route.max_body_bytes):
                await self._read_and_pass(scope, receive, send, route, media_type)
        except TimeoutError:
            message = "too many large requests at once; try again in a moment"
            await _answer(scope, receive, send, HTTPStatus.SERVICE_UNAVAILABLE, message, {"Retry-After": "5"})

    async def _read_and_pass(
        self, scope: Scope, receive: Receive, send: Send, route: RouteInput, media_type: str
    ) -> None:
        try:
            body = await read_body(receive, route.max_body_bytes)
        except BodyTooLarge:
            await self._too_large(scope, receive, send, route)
            return
        if not route.files and (problem := json_body_problem(body, scope["path"], route)):
            await _answer(scope, receive, send, HTTPStatus.BAD_REQUEST, problem)
            return
        if route.submit and (problem := await submitted_body_problem(scope, body, media_type, route)):
            await _answer(scope, receive, send, HTTPStatus.BAD_REQUEST, problem)
            return
        size = len(body)
        try:
            await self.app(scope, replaying(body, receive), send)
        finally:
            if size >= memory.MMAP_THRESHOLD_BYTES:
                memory.trim()  # the body arrived in small pieces on the heap: hand their pages back

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, route: RouteInput) -> None:
        if route.files:
            setting = "BOUNCER_MAX_UPLOAD_BYTES per file, BOUNCER_MAX_REQUEST_BYTES in all"
        else:
            setting = "BOUNCER_MAX_JSON_BYTES"
        message = f"request body over the {route.max_body_bytes}-byte limit of {scope['path']} ({setting})"
        await _answer(scope, receive, send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)


def media_type_problem(path: str, route: RouteInput, media_type: str) -> str | None:
    """Why ``route`` refuses a body of ``media_type`` (a 415), or None."""
    sent = media_type or "a body without content type"
    if route.files and media_type != MULTIPART:
        uploads = ", ".join(map(repr, sorted(route.files)))
        return f"{path} takes {MULTIPART} with the file field {uploads}, not {sent}"
    if not route.files and media_type != JSON:
        return f"{path} takes {JSON} (send 'Content-Type: {JSON}'), not {sent}"
    return None


# Unknown field names one 400 lists: a body of a million made-up fields is answered in a line.
UNKNOWN_FIELDS_LISTED = 10


def json_body_problem(body: bytes, path: str, route: RouteInput) -> str | None:
    """A 400 message for a JSON body that is no object, names fields ``route`` does not take, or holds NUL."""
    if problem := json_nul_problem(body):
        return problem
    try:
        document = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        return f"invalid JSON: {exc}"
    if not isinstance(document, dict):
        return f"the JSON body of {path} must be an object of its fields, not {type(document).__name__}"
    if unknown := [name for name in document if name not in route.fields]:
        listed = unknown[:UNKNOWN_FIELDS_LISTED]
        more = f" (and {len(unknown) - len(listed)} more)" if len(unknown) > len(listed) else ""
        return unknown_fields_message(listed, path, route.fields) + more
    return None


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
    """ASGI middleware: every 4xx body becomes one short ``{"error": <a sentence>}`` object.

    BentoMLException 4xx bodies arrive as ``[{"error": ...}]``; validation errors as
    ``{"error": "1 validation error for Input", "detail": [...]}``, which becomes a
    sentence naming each field and problem (``detail`` stays for programs, its first
    DETAILS_KEPT entries); Starlette's own plain-text 404/405 become the same object.
    Every 2xx passes straight through: only a 4xx has its headers read.
    """

    def __init__(self, app: ASGIApp, *, routes: Mapping[str, RouteInput]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD":  # a HEAD answer has no body to fix
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        takes = self.routes.get(scope.get("path", ""), RouteInput(frozenset())).fields

        async def send_fixed(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if 400 <= message["status"] < 500 and _fixable(Headers(raw=message.get("headers", []))):
                    start = message  # hold it: the body (and its length) may change
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = error_body(b"".join(chunks), scope.get("path", ""), takes, start["status"])
                headers = MutableHeaders(raw=list(start.get("headers", [])))
                headers["content-length"] = str(len(body))
                headers["content-type"] = JSON
                await send({**start, "headers": headers.raw})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_fixed)


def _fixable(headers: Headers) -> bool:
    """A JSON error body, or a short plain-text one (Starlette's 404/405); never an image or a page."""
    kind = headers.get("content-type", "")
    return kind.startswith(JSON) or (kind.startswith("text/plain") and int(headers.get("content-length") or 0) < 4096)


# How much of an error a 4xx answer carries: the sentence names the first few problems, ``detail``
# keeps the first DETAILS_KEPT for programs, and both say how many there were.
PROBLEMS_NAMED = 5
DETAILS_KEPT = 20


def error_body(body: bytes, path: str, takes: frozenset[str], status: int = 400) -> bytes:
    """The error object out of a one-element list, validation details as a sentence, text as an object."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase
        return json.dumps({"error": f"{text}: {path}" if status in (404, 405) else text}).encode()
    if isinstance(document, list) and len(document) == 1 and isinstance(document[0], dict) and "error" in document[0]:
        return json.dumps(document[0]).encode()
    if isinstance(document, dict) and isinstance(document.get("detail"), list) and document["detail"]:
        details = document["detail"]
        document["error"] = validation_sentence(details, path, takes)
        if len(details) > DETAILS_KEPT:
            document["detail"] = details[:DETAILS_KEPT]
            document["detail_count"] = len(details)
        return json.dumps(document).encode()
    return body


def validation_sentence(details: list[Any], path: str, takes: frozenset[str]) -> str:
    """'k: Input should be greater than or equal to 1; unknown field 'lable' ...' from pydantic's error list.

    At most PROBLEMS_NAMED problems are named, and the count of the rest.
    """
    unknown = [str(d["loc"][0]) for d in details if isinstance(d, dict) and d.get("type") == "extra_forbidden"]
    parts = [unknown_fields_message(unknown[:UNKNOWN_FIELDS_LISTED], path, takes)] if unknown else []
    others = [d for d in details if not isinstance(d, dict) or d.get("type") != "extra_forbidden"]
    for detail in others[:PROBLEMS_NAMED]:
        if not isinstance(detail, dict):
            continue
        where = ".".join(str(part) for part in detail.get("loc", ())) or "body"
        parts.append(f"{where}: {detail.get('msg', 'invalid')}")
    untold = max(0, len(unknown) - UNKNOWN_FIELDS_LISTED) + max(0, len(others) - PROBLEMS_NAMED)
    if untold:
        parts.append(f"and {untold} more problem{'s' if untold > 1 else ''}")
    return "; ".join(parts) or "invalid request"


class RelativeRedirects:
    """ASGI middleware: a redirect's ``Location`` is a path, never an absolute URL built from the request.

    Starlette's router answers ``/ui`` with ``307 Location: http://<Host header>/ui/``:
    the client's ``Host`` reflected into where it is sent next. Every redirect here
    points into this server, so the path (and query) is all it needs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_relative(message: Message) -> None:
            if message["type"] == "http.response.start" and 300 <= message["status"] < 400:
                headers = MutableHeaders(raw=list(message.get("headers", [])))
                if location := headers.get("location"):
                    target = urlsplit(location)
                    headers["location"] = urlunsplit(("", "", target.path or "/", target.query, target.fragment))
                    message = {**message, "headers": headers.raw}
            await send(message)

        await self.app(scope, receive, send_relative)


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
        elif (
            path in self.write_paths.starts
            and scope["method"] == "POST"
            and (busy := await asyncio.to_thread(self.runner.busy))
        ):
            await _answer(scope, receive, send, HTTPStatus.CONFLICT, busy)
        else:  # another method than the route's reaches the router: its 405 names the one it takes
            await self.app(scope, receive, send)

    async def _cancel(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stop the training of ``?task_id=``: 200 once its process is gone, 409 if it is not running.

        BentoML's own cancel route runs first, its answer discarded ("not supported in
        local development"): it records the task as canceled in the result store, which
        then keeps that state when the task's answer arrives (``bentoml_fixes``).
        """
        if scope["method"] != "PUT":
            message = f"{scope['path']} takes PUT"
            await _answer(scope, receive, send, HTTPStatus.METHOD_NOT_ALLOWED, message, {"Allow": "PUT"})
            return
        task_id = QueryParams(scope.get("query_string", b"")).get("task_id")
        if not task_id:
            await _answer(scope, receive, send, HTTPStatus.BAD_REQUEST, "task_id is required")
            return
        try:
            await asyncio.to_thread(self.runner.cancelable, task_id)
            await self.app(scope, _disconnected, _discard)
            answer = JSONResponse(await asyncio.to_thread(self.runner.cancel, task_id))
        except NotRunning as exc:
            answer = JSONResponse({"error": str(exc)}, status_code=HTTPStatus.CONFLICT)
        await answer(scope, receive, send)


async def _discard(message: Message) -> None:
    """A send for an answer nobody reads."""


async def _answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: HTTPStatus,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)
