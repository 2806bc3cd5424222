"""The OpenAPI page's title, description and version: Bouncer's, not BentoML's boilerplate.

BentoML 1.4 builds ``info`` itself (``_bentoml_sdk/service/openapi.py``): the title is
the service name, the description its default README ("This is a Machine Learning
Service created with BentoML", badges and links) unless it runs from a built bento, the
version ``"None"`` outside a bento, and the contact "BentoML Team" always. It offers no
option to change any of it (bentoml/BentoML#4669, still open), so :class:`OpenAPIInfo`
answers ``/docs.json`` with BentoML's own spec and only ``info`` replaced. Paths and
schemas stay BentoML's: the endpoints' docstrings and ``schemas`` document them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse

import training

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SPEC_PATH = "/docs.json"  # where BentoML serves the spec; its Swagger page at / loads it from here
TITLE = "Bouncer"
DESCRIPTION = (
    "Bouncer serves an image classifier and keeps its training labels honest. "
    "`predict` classifies an upload; the other endpoints find and fix the training images "
    "whose label is wrong. The loop: `evaluate` the trusted test split to see its errors, "
    "`trace` the training images that pull those errors to the wrong class (or ask "
    "`similar`), look at them with `image`, `relabel` the ones you confirm (`history` "
    "lists every change, `undo` reverts one), `expand` from the confirmed set and ask "
    "`suspects` for the errors no test image points at; then `train` on the fixed labels, "
    "which serves the new version only if its test accuracy is not lower (or with `force`), "
    'and `promote` rolls back. Every 4xx answer is one JSON object `{"error": ...}`.'
)


def openapi_info() -> dict[str, str]:
    """The spec's ``info``: no contact, since there is no one to write to but the project."""
    return {"title": TITLE, "description": DESCRIPTION, "version": training.__version__}


class OpenAPIInfo:
    """ASGI middleware: ``GET /docs.json`` is BentoML's spec for ``service`` with Bouncer's ``info``.

    The spec is generated per request, as BentoML's own handler does; every other
    request passes straight through.
    """

    def __init__(self, app: ASGIApp, *, service: Any) -> None:
        self.app = app
        self.service = service  # the @bentoml.service object whose spec this is

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != SPEC_PATH or scope.get("method") not in {"GET", "HEAD"}:
            await self.app(scope, receive, send)
            return
        spec = self.service.openapi_spec.asdict()
        spec["info"] = openapi_info()
        await JSONResponse(spec)(scope, receive, send)
