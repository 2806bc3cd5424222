"""The guards in front of every endpoint: ASGI middleware added with BentoML's public ``add_asgi_middleware``.

In order, outermost first (see :func:`bento_service.http.install`):

- :class:`RouteIdentity`: one path for every guard and for the router. A path holding a control
  character is a 404; a spelling of a known route (``//relabel``, ``/./relabel``, ``/relabel/``)
  becomes that route. Every guard below looks the path up exactly, and for a path without a
  control character Starlette's router matches a route's template exactly too.
- :class:`CrossSiteGuard`: a browser's write from another site's page is a 403, from its headers.
- :class:`TokenGuard`: the API token on every write, before anything reads the body.
- :class:`RelativeRedirects`: no ``Host`` header reflected into a redirect.
- :class:`RequestGuard`: each POST route's body checked from its headers (content type, size) and
  read once within its cap, at a minimum rate, in a per-worker budget of the bytes that arrived;
  JSON that is no object or names fields the route does not take is a 400 before BentoML lists each error.
- :class:`TrainingGate`: one training at a time (decided atomically), and a cancel that stops it."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bento_service import memory
from bento_service.http.errors import answer
from bento_service.http.routes import (
    JSON,
    MULTIPART,
    UNKNOWN_FIELDS_LISTED,
    RouteInput,
    json_nul_problem,
    replaying,
    unknown_fields_message,
)
from bento_service.http.upstream import _disconnected, submitted_body_problem
from training.jobs.runner import NotRunning, TrainRunner
from training.settings import Settings


def authorized(token: str | None, authorization: str) -> bool:
    """No token configured, or the header carries it: scheme ``Bearer`` in any case (RFC 7235), the token
    compared in constant time."""
    if not token:
        return True
    scheme, _, credentials = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())


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


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# U+0000-U+001F and U+007F: no route of this server holds one. Starlette compiles a route to
# ``^/relabel$``, and ``$`` also matches before a final newline: ``/relabel\n`` would reach
# ``relabel`` while a guard looking the path up exactly saw no route.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def canonical_path(path: str) -> str:
    """``path`` without empty or ``.`` segments and without a trailing slash: ``//a/./b/`` -> ``/a/b``."""
    return "/" + "/".join(part for part in path.split("/") if part not in ("", "."))


class RouteIdentity:
    """ASGI middleware, outermost: the guards, the metrics and the router all see one path.

    A path holding a control character (``%0A``, ``%0D``, ``%00``...) is a 404. A path whose
    canonical form (:func:`canonical_path`; uvicorn has already decoded ``%2F`` to ``/``) is one
    of ``known``, the exact paths the guards decide on, is rewritten to it: the same route with
    the same guards. Anything else goes on unchanged, to a route's template or to the router's 404.
    """

    def __init__(self, app: ASGIApp, *, known: frozenset[str]) -> None:
        self.app = app
        self.known = known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            if CONTROL_CHARACTERS.search(path):
                if scope["type"] == "http":
                    message = "no route here has a control character (such as an encoded newline) in its path"
                    await answer(scope, receive, send, HTTPStatus.NOT_FOUND, message)
                return  # a websocket scope that is never accepted is closed by the server (403)
            canonical = canonical_path(path)
            if canonical != path and canonical in self.known:
                scope = {**scope, "path": canonical, "raw_path": canonical.encode()}
        await self.app(scope, receive, send)


class TokenGuard:
    """ASGI middleware: a write without the API token is a 401 saying what is missing, before its body is read.

    ``write_paths``: every path of a write endpoint (see :func:`write_paths`). Two
    ``Authorization`` headers are a 400: servers and proxies disagree on which one counts.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, write_paths: WritePaths) -> None:
        self.app = app
        self.token = token
        self.write_paths = write_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not self.token or path not in self.write_paths:
            await self.app(scope, receive, send)
            return
        sent = [value for name, value in scope.get("headers", ()) if name.lower() == b"authorization"]
        if len(sent) > 1:
            message = f"send one Authorization header, not {len(sent)}"
            await answer(scope, receive, send, HTTPStatus.BAD_REQUEST, message)
        elif not sent or not authorized(self.token, sent[0].decode("latin-1")):
            message = f"{path} needs 'Authorization: Bearer <BOUNCER_API_TOKEN>'"
            await answer(scope, receive, send, HTTPStatus.UNAUTHORIZED, message, {"WWW-Authenticate": "Bearer"})
        else:
            await self.app(scope, receive, send)


# After a cancel stopped the training, how long it may wait for the task to record its answer.
CANCEL_SETTLE_S = 30.0


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
            await answer(scope, receive, send, HTTPStatus.FORBIDDEN, problem)
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


class BodyBudget:
    """The request bytes one worker holds at once, counted as they arrive: bytes that would pass it wait for room.

    Every body is read whole before an endpoint sees it, so 64 concurrent 20 MB uploads
    would hold 1.3 GB. What counts is what arrived, never what ``Content-Length``
    declares: a connection that declares 64 MB and sends nothing holds nothing. The
    oldest request holding bytes never waits (so partly read bodies cannot wait on each
    other for ever): the worker holds at most the limit plus one request's body.
    """

    WAIT_S = 10.0

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._room = asyncio.Condition()
        self._holds: dict[int, BudgetHold] = {}  # in the order the requests started reading

    def _fits(self, hold: BudgetHold, size: int) -> bool:
        if self.used + size <= self.limit:
            return True
        oldest = next((held for held in self._holds.values() if held.size), None)
        return oldest is None or oldest is hold

    async def _take(self, hold: BudgetHold, size: int) -> None:
        """Add ``size`` bytes to ``hold`` once they fit (TimeoutError after WAIT_S)."""
        async with self._room:
            await asyncio.wait_for(self._room.wait_for(lambda: self._fits(hold, size)), self.WAIT_S)
            self.used += size
            hold.size += size

    async def _release(self, hold: BudgetHold) -> None:
        async with self._room:
            self.used -= hold.size
            hold.size = 0
            self._holds.pop(id(hold), None)
            self._room.notify_all()

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[BudgetHold]:
        """A hold that grows with :meth:`BudgetHold.take` as a body arrives, given back when the block ends."""
        hold = BudgetHold(self)
        self._holds[id(hold)] = hold
        try:
            yield hold
        finally:
            await self._release(hold)


class BudgetHold:
    """The part of a :class:`BodyBudget` one request holds."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    async def take(self, size: int) -> None:
        await self.budget._take(self, size)


@dataclass(frozen=True)
class BodyPace:
    """How slowly a body may arrive: ``idle_s`` at most between two pieces, and after the first ``idle_s``
    at least ``min_bytes_per_s`` on average. A slower body is a 408 and its connection is closed."""

    idle_s: float = 10.0
    min_bytes_per_s: int = 16 * 1024


class RequestGuard:
    """ASGI middleware: a POST route's body checked from its headers, then read once, within its cap.

    415 for an upload route without multipart or a JSON route without ``application/json``;
    413 over the route's cap (from ``Content-Length`` before reading, else while reading);
    408 for a body that stops arriving or arrives too slowly (:class:`BodyPace`);
    503 when the worker's :class:`BodyBudget` has no room for what arrives;
    400 for JSON that is not an object, names fields the route does not take, or holds NUL;
    404 for a task's synchronous route (see :class:`WritePaths`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Mapping[str, RouteInput],
        budget: BodyBudget | None = None,
        pace: BodyPace | None = None,
        sync_task_routes: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.routes = routes
        self.budget = budget or BodyBudget(1 << 62)
        self.pace = pace or BodyPace()
        self.sync_task_routes = sync_task_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path in self.sync_task_routes:
            message = f"{path} is not served: start a training with POST {path}/submit (a task to watch and cancel)"
            await answer(scope, receive, send, HTTPStatus.NOT_FOUND, message)
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
            await answer(scope, receive, send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, problem)
            return
        if declared.isdigit() and int(declared) > route.max_body_bytes:
            await self._too_large(scope, receive, send, route)
            return
        async with self.budget.holding() as hold:
            try:
                body = await read_body(receive, route.max_body_bytes, hold=hold, pace=self.pace)
            except BodyTooLarge:
                await self._too_large(scope, receive, send, route)
                return
            except BodyTooSlow as exc:
                await answer(scope, receive, send, HTTPStatus.REQUEST_TIMEOUT, str(exc), {"Connection": "close"})
                return
            except TimeoutError:
                message = "too many large requests at once; try again in a moment"
                headers = {"Retry-After": "5", "Connection": "close"}
                await answer(scope, receive, send, HTTPStatus.SERVICE_UNAVAILABLE, message, headers)
                return
            await self._check_and_pass(scope, receive, send, route, media_type, body)

    async def _check_and_pass(
        self, scope: Scope, receive: Receive, send: Send, route: RouteInput, media_type: str, body: bytes
    ) -> None:
        if not route.files and (problem := json_body_problem(body, scope["path"], route)):
            await answer(scope, receive, send, HTTPStatus.BAD_REQUEST, problem)
            return
        if route.submit and (problem := await submitted_body_problem(scope, body, media_type, route)):
            await answer(scope, receive, send, HTTPStatus.BAD_REQUEST, problem)
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
        await answer(scope, receive, send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message, {"Connection": "close"})


def media_type_problem(path: str, route: RouteInput, media_type: str) -> str | None:
    """Why ``route`` refuses a body of ``media_type`` (a 415), or None."""
    sent = media_type or "a body without content type"
    if route.files and media_type != MULTIPART:
        uploads = ", ".join(map(repr, sorted(route.files)))
        return f"{path} takes {MULTIPART} with the file field {uploads}, not {sent}"
    if not route.files and media_type != JSON:
        return f"{path} takes {JSON} (send 'Content-Type: {JSON}'), not {sent}"
    return None


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


class BodyTooSlow(Exception):
    """A body that stopped arriving, or arrives slower than its :class:`BodyPace`."""


async def read_body(
    receive: Receive, limit: int, *, hold: BudgetHold | None = None, pace: BodyPace | None = None
) -> bytes:
    """The whole request body, refused as soon as it passes ``limit`` bytes; each piece taken from ``hold``
    as it arrives (TimeoutError when the budget has no room), BodyTooSlow when it breaks ``pace``."""
    pace = pace or BodyPace()
    chunks: list[bytes] = []
    size = 0
    started = time.monotonic()
    while True:
        try:
            message = await asyncio.wait_for(receive(), pace.idle_s)
        except TimeoutError:
            raise BodyTooSlow(f"the request body stopped arriving: nothing for {pace.idle_s:g} s") from None
        if message["type"] != "http.request":  # client went away: let the app see the disconnect
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        if hold is not None and chunk:
            await hold.take(len(chunk))
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
        elapsed = time.monotonic() - started
        if elapsed > pace.idle_s and size < elapsed * pace.min_bytes_per_s:
            raise BodyTooSlow(
                f"the request body arrives too slowly: {size} bytes in {elapsed:.0f} s, "
                f"under {pace.min_bytes_per_s} bytes/s (BOUNCER_BODY_MIN_BYTES_PER_S)"
            )
    return b"".join(chunks)


class TrainingGate:
    """ASGI middleware: one training at a time (a second start is a 409), and a cancel that stops it.

    A start is claimed atomically (:meth:`~training.jobs.runner.TrainRunner.claim_start`):
    of two submissions at once, one is a 200 and the other a 409, in any worker. A cancel
    (``PUT <task>/cancel?task_id=``) is answered here: it stops the training's process.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings, write_paths: WritePaths) -> None:
        self.app = app
        self.write_paths = write_paths
        self.runner = TrainRunner(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif path in self.write_paths.cancels:
            await self._cancel(scope, receive, send)
        elif path in self.write_paths.starts and scope["method"] == "POST":
            await self._start(scope, receive, send)
        else:  # another method than the route's reaches the router: its 405 names the one it takes
            await self.app(scope, receive, send)

    async def _start(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A submission, once it holds the claim; a refused one (not a 200) gives the claim back."""
        if busy := await asyncio.to_thread(self.runner.claim_start):
            await answer(scope, receive, send, HTTPStatus.CONFLICT, busy)
            return
        accepted = False

        async def watch(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "http.response.start":
                accepted = message["status"] < 300
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not accepted:
                await asyncio.to_thread(self.runner.release_claim)

    async def _cancel(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stop the training of ``?task_id=``: 200 once its process is gone, 409 if it is not running.

        BentoML's own cancel route runs first, its answer discarded ("not supported in
        local development"): it records the task as canceled in the result store, which
        then keeps that state when the task's answer arrives (``upstream``).
        """
        if scope["method"] != "PUT":
            message = f"{scope['path']} takes PUT"
            await answer(scope, receive, send, HTTPStatus.METHOD_NOT_ALLOWED, message, {"Allow": "PUT"})
            return
        task_id = QueryParams(scope.get("query_string", b"")).get("task_id")
        if not task_id:
            await answer(scope, receive, send, HTTPStatus.BAD_REQUEST, "task_id is required")
            return
        try:
            await asyncio.to_thread(self.runner.cancelable, task_id)
            await self.app(scope, _disconnected, _discard)
            response = JSONResponse(await asyncio.to_thread(self.runner.cancel, task_id))
            await self._until_answered(scope, task_id)
        except NotRunning as exc:
            response = JSONResponse({"error": str(exc)}, status_code=HTTPStatus.CONFLICT)
        await response(scope, receive, send)

    async def _until_answered(self, scope: Scope, task_id: str) -> None:
        """Wait (bounded) until the task's answer is in BentoML's result store, asking its own ``get`` route.

        The process is gone, but the task still closes its MLflow run and records its answer: a
        client that reads ``get`` right after the cancel must find "canceled" (409), not BentoML's
        "not completed yet" (400).
        """
        path = scope["path"].removesuffix("/cancel") + "/get"
        query = urlencode({"task_id": task_id}).encode()
        get = {**scope, "method": "GET", "path": path, "raw_path": path.encode(), "query_string": query}
        deadline = time.monotonic() + CANCEL_SETTLE_S
        while time.monotonic() < deadline:
            statuses: list[int] = []

            async def keep_status(message: Message, statuses: list[int] = statuses) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(int(message["status"]))

            await self.app(get, _disconnected, keep_status)
            if statuses and statuses[0] != HTTPStatus.BAD_REQUEST:  # 400: "task ... is not completed yet"
                return
            await asyncio.sleep(0.1)


async def _discard(message: Message) -> None:
    """A send for an answer nobody reads."""
