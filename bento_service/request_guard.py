"""Refuse request bodies BentoML would misread: unknown field names and oversized bodies.

BentoML ignores JSON fields an endpoint does not take (``{"lable": "cat"}`` silently
searches every class) and answers 500 when a binary file arrives under a multipart field
name it does not know (it tries to read the file as JSON). This ASGI middleware reads the
body first, answers 400 naming the unknown field (413 for a body over the cap, before
reading it all), and hands the same bytes on untouched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class RequestGuard:
    """ASGI middleware; ``fields`` maps a POST path to the field names its endpoint takes."""

    def __init__(self, app: ASGIApp, *, fields: Mapping[str, frozenset[str]], max_body_bytes: int) -> None:
        self.app = app
        self.fields = fields
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        allowed = self.fields.get(scope.get("path", "")) if scope["type"] == "http" else None
        if allowed is None or scope["method"] != "POST":
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
        unknown = await unknown_fields(scope, body, headers.get("content-type", ""), allowed)
        if unknown:
            takes = ", ".join(sorted(allowed)) or "no fields"
            message = f"unknown field {', '.join(map(repr, unknown))} for {scope['path']}; it takes: {takes}"
            await JSONResponse({"error": message}, status_code=HTTPStatus.BAD_REQUEST)(scope, replay, send)
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


async def unknown_fields(scope: Scope, body: bytes, content_type: str, allowed: frozenset[str]) -> list[str]:
    """Top-level field names in a JSON object or multipart form that the endpoint does not take.

    Bodies that do not parse are left to BentoML, which answers them with its own 400.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    names: list[str] = []
    if media_type == "application/json":
        try:
            document = json.loads(body) if body.strip() else {}
        except ValueError:
            return []
        if isinstance(document, dict):
            names = list(document)
    elif media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        request = Request(scope, replaying(body, _no_more_body))
        try:
            form = await request.form()
        except Exception:  # noqa: BLE001 - malformed forms are BentoML's to refuse
            return []
        try:
            names = list(dict.fromkeys(form.keys()))
        finally:
            for value in form.values():
                if isinstance(value, UploadFile):
                    await value.close()
    return [name for name in names if name not in allowed]


async def _no_more_body() -> Message:
    return {"type": "http.disconnect"}
