"""Every 4xx answer as one JSON object ``{"error": ...}``, as BentoML's OpenAPI page declares.

BentoML 1.4 wraps the body of a 4xx raised as a ``BentoMLException`` in a one-element
list (``[{"error": "..."}]``, a stray tuple: bentoml/BentoML#4232, fix pending in
PR #5709), while its validation errors and every other status are objects. Clients
reading ``response.json()["error"]`` should not have to care which one they hit.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.datastructures import Headers, MutableHeaders

from bento_service.request_guard import ASGIApp, Message, Receive, Scope, Send


class ErrorBodyFix:
    """ASGI middleware: unwrap ``[{"error": ...}]`` 4xx bodies into ``{"error": ...}``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_fixed(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                # every 2xx passes straight on: only a 4xx has its headers read
                if 400 <= message["status"] < 500 and is_json(Headers(raw=message.get("headers", []))):
                    start = message  # hold it: the body (and its length) may change
                    return
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = unwrapped(b"".join(chunks))
                headers = MutableHeaders(raw=list(start.get("headers", [])))
                headers["content-length"] = str(len(body))
                await send({**start, "headers": headers.raw})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_fixed)


def is_json(headers: Headers) -> bool:
    return headers.get("content-type", "").startswith("application/json")


def unwrapped(body: bytes) -> bytes:
    """The error object out of a one-element list; anything else unchanged."""
    try:
        document: Any = json.loads(body)
    except ValueError:
        return body
    if isinstance(document, list) and len(document) == 1 and isinstance(document[0], dict) and "error" in document[0]:
        return json.dumps(document[0]).encode()
    return body
