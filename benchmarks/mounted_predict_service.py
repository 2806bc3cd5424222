"""Bouncer's service with predict also answered by a Starlette app mounted with ``mount_asgi_app``.

Only for ``benchmarks/http_layer.py``: the same predictor, the same form checks, behind
BentoML's supported mounting rather than Bouncer's raw ASGI middleware route, so the two
designs of issue 23 (item 2) are measured on one server.
"""

from __future__ import annotations

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bento_service.http.routes import read_form
from bento_service.service import Bouncer
from training.errors import BouncerError

FIELDS = frozenset({"image"})


async def predict(request: Request) -> JSONResponse:
    form, problem = await read_form(request, FIELDS, FIELDS)
    try:
        if problem:
            return JSONResponse({"error": problem}, status_code=400)
        uploads = [("image", await upload.read()) for upload in form.getlist("image")]
    finally:
        await form.close()
    try:
        answers = await bentoml.get_current_service().predictor.predict_uploads(uploads)
    except BouncerError as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.error_code)
    return JSONResponse(answers[0])


MOUNTED = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
Bouncer.mount_asgi_app(MOUNTED, path="/mounted")

__all__ = ["Bouncer"]
