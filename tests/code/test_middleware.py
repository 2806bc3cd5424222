"""Our ASGI middlewares in front of a real Starlette app: body, field and size guards, error-body shape."""

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
from bento_service.request_guard import MAX_JSON_DEPTH, RequestGuard, RouteInput, json_depth

ROUTES = {
    "/predict": RouteInput(frozenset({"image"}), files=frozenset({"image"})),
    "/similar": RouteInput(frozenset({"image_id", "k", "label"})),
}
CAP = 200_000  # room for the deeply nested and many-part bodies below


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)})


APP = RequestGuard(
    Starlette(routes=[Route(path, echo, methods=["POST"]) for path in [*ROUTES, "/open"]]),
    routes=ROUTES,
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


def test_paths_it_does_not_guard_pass_through() -> None:
    assert post("/open", json={"anything": 1}).status_code == 200
    assert post("/open", content=b"x" * (CAP + 1)).status_code == 200  # the cap is for guarded routes


def _nested(depth: int) -> bytes:
    return b'{"image_id": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        (b"[1, 2]", "must be an object"),
        (b'"http://169.254.169.254/latest"', "must be an object"),
        (_nested(MAX_JSON_DEPTH + 1), "nested deeper"),
        (_nested(1000), "nested deeper"),  # json.loads raises RecursionError here: the request was never answered
        (_nested(90_000), "nested deeper"),
    ],
)
def test_json_bodies_that_are_not_a_flat_object_are_refused(body: bytes, message: str) -> None:
    response = post("/similar", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_nesting_up_to_the_limit_is_accepted() -> None:
    body = _nested(MAX_JSON_DEPTH - 1)
    assert json_depth(__import__("json").loads(body)) == MAX_JSON_DEPTH
    assert post("/similar", content=body, headers={"content-type": "application/json"}).status_code == 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": {"image": "http://127.0.0.1:9/secret"}},  # urlencoded: BentoML would download it
        {"json": "http://127.0.0.1:9/secret"},  # a JSON string body: the same
        {"content": b"\x89PNG", "headers": {"content-type": "image/png"}},
        {"content": b"\x89PNG"},
    ],
)
def test_upload_routes_take_only_multipart(kwargs: dict) -> None:
    response = post("/predict", **kwargs)
    assert response.status_code == 415, response.text
    assert "multipart/form-data" in response.json()["error"] and "'image'" in response.json()["error"]


def test_a_text_value_in_a_file_field_is_refused() -> None:
    """BentoML treats a text value in a file field as a URL and fetches it server-side (SSRF)."""
    form = httpx.Request("POST", "http://test/predict", files={"x": ("x.png", b"1")}, data={"image": "http://a/b"})
    body = form.read()
    response = post("/predict", content=body, headers={"content-type": form.headers["content-type"]})
    assert response.status_code == 400
    assert "must be a file upload" in response.json()["error"]


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("multipart/form-data", b"--x\r\n", "boundary"),
        (
            "multipart/form-data; boundary=B",
            b"".join(b'--B\r\nContent-Disposition: form-data; name="k"\r\n\r\n1\r\n' for _ in range(1001)) + b"--B--",
            "Too many fields",
        ),
    ],
)
def test_malformed_forms_get_a_400_naming_the_problem(content_type: str, body: bytes, message: str) -> None:
    response = post("/similar", content=body, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


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
