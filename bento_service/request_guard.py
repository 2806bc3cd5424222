"""Refuse request bodies BentoML would misread, crash on, or act on dangerously.

BentoML ignores JSON fields an endpoint does not take (``{"lable": "cat"}`` silently
searches every class), answers 500 to a binary file under an unknown multipart field,
a multipart body without a boundary or with more than 1000 parts, and a urlencoded
body to an upload endpoint, and treats a *text* value in a file field (or a JSON body
that is a URL) as an address to download server-side. A JSON body nested 1000 levels
deep made our own check raise ``RecursionError`` and left the request unanswered.

This ASGI middleware reads the body first (413 over the cap, before reading it all),
answers 400/415 naming the problem, and hands the same bytes on untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Our endpoints take flat objects whose values are at most lists of scalars (depth 2);
# 32 leaves room for any client's wrapping and is far below Python's recursion limit.
MAX_JSON_DEPTH = 32
MULTIPART = "multipart/form-data"
FORM_TYPES = (MULTIPART, "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class RouteInput:
    """What one POST route takes: its field names, and which of them are file uploads."""

    fields: frozenset[str]
    files: frozenset[str] = frozenset()


class BodyTooLarge(Exception):
    pass


class BadBody(Exception):
    """The body cannot be what the route takes; ``status`` is the 4xx to answer."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class RequestGuard:
    """ASGI middleware; ``routes`` maps a POST path to what its endpoint takes."""

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
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        try:
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLarge:
            await self._too_large(scope, receive, send)
            return
        replay = replaying(body, receive)
        try:
            await check_body(scope, body, headers.get("content-type", ""), route)
        except BadBody as exc:
            await JSONResponse({"error": str(exc)}, status_code=exc.status)(scope, replay, send)
            return
        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body over the {self.max_body_bytes}-byte limit (BOUNCER_MAX_REQUEST_BYTES)"
        await JSONResponse({"error": message}, status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)(scope, receive, send)


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


async def check_body(scope: Scope, body: bytes, content_type: str, route: RouteInput) -> None:
    """Raise :class:`BadBody` unless ``body`` is a well-formed request for ``route``."""
    path = scope["path"]
    media_type = content_type.split(";", 1)[0].strip().lower()
    if route.files and media_type != MULTIPART:
        uploads = ", ".join(map(repr, sorted(route.files)))
        sent = media_type or "a body without content type"
        raise BadBody(
            f"{path} takes {MULTIPART} with the file field {uploads}, not {sent}", HTTPStatus.UNSUPPORTED_MEDIA_TYPE
        )
    if media_type in FORM_TYPES:
        names = await _form_names(scope, body, route)
    elif media_type == "application/json" or (not media_type and body.strip()):
        names = _json_names(body)
    else:
        names = []
    unknown = [name for name in names if name not in route.fields]
    if unknown:
        takes = ", ".join(sorted(route.fields)) or "no fields"
        raise BadBody(f"unknown field {', '.join(map(repr, unknown))} for {path}; it takes: {takes}")


def _json_names(body: bytes) -> list[str]:
    if not body.strip():
        return []
    try:
        document = json.loads(body)
    except RecursionError:
        raise BadBody(f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for non-UTF-8 bytes
        raise BadBody(f"invalid JSON: {_short(exc)}") from None
    if not isinstance(document, dict):
        raise BadBody(f"the JSON body must be an object of fields, not {type(document).__name__}")
    if json_depth(document) > MAX_JSON_DEPTH:
        raise BadBody(f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    return list(document)


def json_depth(document: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion (a scalar is 0)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_JSON_DEPTH:  # no need to walk further than the limit
            stack.extend((child, depth + 1) for child in children)
    return deepest


async def _form_names(scope: Scope, body: bytes, route: RouteInput) -> list[str]:
    request = Request(scope, replaying(body, _no_more_body))
    try:
        form = await request.form()
    except (MultiPartException, HTTPException) as exc:  # no boundary, too many parts, a part over the size cap...
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail  # request.form() wraps it
        raise BadBody(f"malformed form body: {detail}") from None
    except Exception as exc:  # noqa: BLE001 - the multipart parser raises its own error types
        raise BadBody(f"malformed form body: {_short(exc)}") from None
    try:
        _check_file_fields(form, route, scope["path"])
        return list(dict.fromkeys(form.keys()))
    finally:
        for value in form.values():
            if isinstance(value, UploadFile):
                await value.close()


def _check_file_fields(form: FormData, route: RouteInput, path: str) -> None:
    """A file field must hold uploaded files: BentoML would fetch a text value as a URL (SSRF)."""
    for name in route.files:
        if any(not isinstance(value, UploadFile) for value in form.getlist(name)):
            raise BadBody(f"field {name!r} of {path} must be a file upload, not a text value")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


async def _no_more_body() -> Message:
    return {"type": "http.disconnect"}
