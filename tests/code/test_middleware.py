"""Our ASGI middlewares in front of a real Starlette app: field and size guards, error-body shape."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bento_service.error_body import ErrorBodyFix
from bento_service.request_guard import RequestGuard

FIELDS = {"/predict": frozenset({"image"}), "/similar": frozenset({"image_id", "k", "label"})}
CAP = 10_000


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)})


APP = RequestGuard(
    Starlette(routes=[Route(path, echo, methods=["POST"]) for path in [*FIELDS, "/open"]]),
    fields=FIELDS,
    max_body_bytes=CAP,
)


def post(path: str, **kwargs: object) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=APP), base_url="http://test") as client:
            return await client.post(path, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(call())


def test_known_fields_reach_the_app_byte_for_byte() -> None:
    png_like = bytes(range(256)) * 4  # not UTF-8: what made BentoML answer 500
    request = httpx.Request("POST", "http://test/predict", files={"image": ("x.png", png_like, "image/png")})
    body = request.read()
    response = post("/predict", content=body, headers={"content-type": request.headers["content-type"]})
    assert response.status_code == 200
    assert response.json() == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
    assert post("/similar", json={"image_id": "a", "k": 3}).status_code == 200


@pytest.mark.parametrize(
    ("path", "kwargs", "unknown"),
    [
        ("/similar", {"json": {"image_id": "a", "lable": "cat"}}, "'lable'"),
        ("/predict", {"files": {"file": ("x.png", bytes(range(256)), "image/png")}}, "'file'"),
        ("/predict", {"files": {"image": ("x.png", b"\x89PNG")}, "data": {"k": "3"}}, "'k'"),
    ],
)
def test_unknown_fields_are_refused_by_name(path: str, kwargs: dict, unknown: str) -> None:
    response = post(path, **kwargs)
    assert response.status_code == 400
    assert unknown in response.json()["error"]
    assert "it takes:" in response.json()["error"]


def test_bodies_over_the_cap_are_refused_declared_or_streamed() -> None:
    declared = post("/predict", content=b"x" * (CAP + 1), headers={"content-type": "application/octet-stream"})
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: cut off while reading
        for _ in range(CAP // 1000 + 2):
            yield b"x" * 1000

    streamed = post("/predict", content=chunks(), headers={"content-type": "application/octet-stream"})
    assert streamed.status_code == 413
    assert "limit" in streamed.json()["error"]


def test_paths_it_does_not_guard_and_unparseable_bodies_pass_through() -> None:
    assert post("/open", json={"anything": 1}).status_code == 200
    assert post("/open", content=b"x" * (CAP + 1)).status_code == 200  # the cap is for guarded routes
    broken = post("/similar", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 200 and broken.json()["size"] == len(b"{not json")


def test_error_body_fix_unwraps_listed_4xx_errors_only() -> None:
    async def bodies(request: Request) -> JSONResponse:
        status = int(request.query_params["status"])
        listed = request.query_params.get("listed") == "1"
        return JSONResponse([{"error": "unknown image_id 'x'"}] if listed else {"ok": True}, status_code=status)

    app = ErrorBodyFix(Starlette(routes=[Route("/", bodies, methods=["GET"])]))

    async def get(query: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get(f"/?{query}")

    fixed = asyncio.run(get("status=404&listed=1"))
    assert fixed.status_code == 404
    assert fixed.json() == {"error": "unknown image_id 'x'"}
    assert int(fixed.headers["content-length"]) == len(fixed.content)
    assert asyncio.run(get("status=200&listed=1")).json() == [{"error": "unknown image_id 'x'"}]  # a 200 is data
    assert asyncio.run(get("status=400")).json() == {"ok": True}
