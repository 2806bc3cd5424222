"""Every 4xx body in one shape: one ``{"error": ...}`` object naming the problem (validation errors add ``detail``).

Which status an error gets is the table of ``training.errors``: a ``BouncerError`` raised by an
endpoint is answered by BentoML with its ``error_code``, by the raw predict route and the review
page the same way. A 5xx is a bug or a failed training (:class:`TrainingError`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from bentoml.exceptions import BentoMLException
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bento_service.http.routes import JSON, RouteInput, validation_sentence
from training.errors import QUOTED_CHARS


class TrainingError(BentoMLException):
    """A training that failed (a 500: a bug, or the machine ran out of something); a user's mistakes are
    ``training.errors.BouncerError``s, which BentoML answers with their own status."""

    error_code = HTTPStatus.INTERNAL_SERVER_ERROR


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


# Validation details a 4xx body keeps for programs (its sentence names PROBLEMS_NAMED), with their count.
DETAILS_KEPT = 20
# The longest error sentence answered, and the most of a value a detail's ``input`` keeps: a
# million-character value is named, never echoed (messages quote at most QUOTED_CHARS of one).
ERROR_CHARS = 2000


def short(text: str, limit: int = ERROR_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _short_detail(detail: Any) -> Any:
    if isinstance(detail, dict) and "input" in detail:
        value = detail["input"]
        if not isinstance(value, str | int | float | bool | None) or len(str(value)) > QUOTED_CHARS:
            return {**detail, "input": short(json.dumps(value, default=str)[: QUOTED_CHARS + 1], QUOTED_CHARS)}
    return detail


def error_body(body: bytes, path: str, takes: frozenset[str], status: int = 400) -> bytes:
    """The error object out of a one-element list, validation details as a sentence, text as an object."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        text = short(body.decode("utf-8", "replace").strip() or HTTPStatus(status).phrase)
        return json.dumps({"error": f"{text}: {short(path, QUOTED_CHARS)}" if status in (404, 405) else text}).encode()
    if isinstance(document, list) and len(document) == 1 and isinstance(document[0], dict) and "error" in document[0]:
        document = document[0]
    if isinstance(document, dict) and isinstance(document.get("detail"), list) and document["detail"]:
        details = document["detail"]
        document["error"] = validation_sentence(details, path, takes)
        document["detail"] = [_short_detail(d) for d in details[:DETAILS_KEPT]]
        if len(details) > DETAILS_KEPT:
            document["detail_count"] = len(details)
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        document["error"] = short(document["error"])
        return json.dumps(document).encode()
    return body


async def answer(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: HTTPStatus,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)
