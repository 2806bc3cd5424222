"""``POST /predict`` and ``/predict_batch`` answered by a raw ASGI route in front of BentoML's handler.

Same contract as the ``@bentoml.api`` endpoints, which stay the documented schema (and
serve when ``BOUNCER_FAST_PREDICT=false``): same multipart fields, same answer, same
400/413/415 sentences. What it skips is measured (issue 13, 2 cores, 32 clients):
BentoML's handler writes each upload to a temp file and reads it back, validates the
input and output models, and builds the response through pydantic; through it the
same worker answered ~800 req/s, through this route ~1300.

It sits behind :class:`~bento_service.http.guards.RequestGuard`, which has already
refused a wrong content type or an oversized body and read the body once; the form is
parsed once here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import bentoml
import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from bento_service.http.routes import RouteInput, read_form
from bento_service.predictor import BadUpload, Predictor
from training.errors import BouncerError

log = logging.getLogger("bentoml.bouncer")
# path -> (file field, most files, whether the answer is a list)
ROUTES = {"/predict": ("image", 1, False), "/predict_batch": ("images", 256, True)}


class PredictRoute:
    def __init__(self, app: ASGIApp, *, routes: Mapping[str, RouteInput]) -> None:
        self.app = app
        self.routes = {path: routes[path] for path in ROUTES if path in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            status, document = HTTPStatus.OK, await self._predict(Request(scope, receive), route)
        except BouncerError as exc:  # the one table: BadUpload 400/413, Overloaded 503
            status, document = exc.error_code, {"error": str(exc)}
        if status != HTTPStatus.OK:  # one line, as for BentoML's own 4xx (upstream's log filter)
            log.info("%s [POST] answered %d: %s", scope["path"], status, document["error"])
        body = orjson.dumps(document)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _predict(self, request: Request, route: RouteInput) -> Any:
        field, most, many = ROUTES[request.url.path]
        form, problem = await read_form(request, route.fields, route.files)
        try:
            if problem:
                raise BadUpload(problem)
            uploads = await self._read_uploads(form.getlist(field), field, most, many)
        finally:
            await form.close()
        predictor: Predictor = bentoml.get_current_service().predictor
        answers = await predictor.predict_uploads(uploads)
        return answers if many else answers[0]

    @staticmethod
    async def _read_uploads(files: list[Any], field: str, most: int, many: bool) -> list[tuple[str, bytes]]:
        if not files:
            raise BadUpload(f"{field}: Field required (a multipart file field)")
        if len(files) > most:
            raise BadUpload(f"{field}: takes at most {most} file{'s' if most > 1 else ''}, got {len(files)}")
        return [(f"{field}[{i}]" if many else field, await upload.read()) for i, upload in enumerate(files)]
