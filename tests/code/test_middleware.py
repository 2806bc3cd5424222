"""Our guards in front of a real Starlette app: size and content type, multipart checks, error-body shape."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
from bentoml.exceptions import BadInput
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bento_service.middleware import (
    ErrorBodyFix,
    RequestGuard,
    RouteInput,
    check_form,
    validation_sentence,
)

ROUTES = {
    "/predict": RouteInput(frozenset({"image"}), files=frozenset({"image"})),
    "/similar": RouteInput(frozenset({"image_id", "k", "label"})),
}
CAP = 200_000


class Spec:
    """What check_form needs of a BentoML input model: its field names and which are files."""

    def __init__(self, route: RouteInput) -> None:
        self.model_fields = dict.fromkeys(route.fields)
        self.multipart_fields = sorted(route.files)


async def echo(request: Request) -> JSONResponse:
    """Stands for BentoML's endpoint: runs the multipart check as GuardedMultipartSerde does, then echoes."""
    if request.headers.get("content-type", "").startswith(("multipart/", "application/x-www-form")):
        try:
            await check_form(request, Spec(ROUTES[request.url.path]))
        except BadInput as exc:
            return JSONResponse([{"error": str(exc)}], status_code=400)  # BentoML's listed 4xx body
        form = await request.form()  # the parse is cached: this does not parse again
        return JSONResponse({"fields": sorted(form.keys())})
    body = await request.body()
    return JSONResponse({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)})


APP = RequestGuard(
    ErrorBodyFix(Starlette(routes=[Route(path, echo, methods=["POST"]) for path in [*ROUTES, "/open"]]), routes=ROUTES),
    routes=ROUTES,
    max_body_bytes=CAP,
)


def post(path: str, **kwargs: object) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=APP), base_url="http://test") as client:
            return await client.post(path, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(call())


def test_bodies_reach_the_app_byte_for_byte() -> None:
    assert post("/similar", json={"image_id": "a", "k": 3}).json()["size"] == len(b'{"image_id":"a","k":3}')
    png_like = bytes(range(256)) * 4
    response = post("/predict", files={"image": ("x.png", png_like, "image/png")})
    assert response.status_code == 200 and response.json() == {"fields": ["image"]}


@pytest.mark.parametrize(
    ("path", "kwargs", "unknown"),
    [
        ("/predict", {"files": {"file": ("x.png", bytes(range(256)), "image/png")}}, "'file'"),
        ("/predict", {"files": {"image": ("x.png", b"\x89PNG")}, "data": {"k": "3"}}, "'k'"),
    ],
)
def test_unknown_multipart_fields_are_refused_by_name(path: str, kwargs: dict, unknown: str) -> None:
    response = post(path, **kwargs)
    assert response.status_code == 400
    assert unknown in response.json()["error"] and "it takes:" in response.json()["error"]


def test_bodies_over_the_cap_are_refused_declared_or_streamed() -> None:
    declared = post("/similar", content=b"x" * (CAP + 1), headers={"content-type": "application/json"})
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: cut off while reading
        for _ in range(CAP // 1000 + 2):
            yield b"x" * 1000

    streamed = post("/similar", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    assert "limit" in streamed.json()["error"]


def test_paths_it_does_not_guard_pass_through() -> None:
    assert post("/open", json={"anything": 1}).status_code == 200
    assert post("/open", content=b"x" * (CAP + 1)).status_code == 200  # the cap is for guarded routes


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
    body = b'--B\r\nContent-Disposition: form-data; name="image"\r\n\r\nhttp://169.254.169.254/\r\n--B--\r\n'
    response = post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
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


def test_error_bodies_become_one_object_with_a_sentence() -> None:
    async def bodies(request: Request) -> JSONResponse:
        status = int(request.query_params["status"])
        kind = request.query_params.get("kind")
        if kind == "listed":
            return JSONResponse([{"error": "unknown image_id 'x'"}], status_code=status)
        if kind == "validation":
            detail = [
                {"type": "extra_forbidden", "loc": ["lable"], "msg": "Extra inputs are not permitted"},
                {"type": "greater_than_equal", "loc": ["k"], "msg": "Input should be greater than or equal to 1"},
            ]
            return JSONResponse({"error": "2 validation errors for Input", "detail": detail}, status_code=status)
        return JSONResponse({"ok": True}, status_code=status)

    app = ErrorBodyFix(Starlette(routes=[Route("/similar", bodies, methods=["GET"])]), routes=ROUTES)

    async def get(query: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get(f"/similar?{query}")

    fixed = asyncio.run(get("status=404&kind=listed"))
    assert fixed.status_code == 404
    assert fixed.json() == {"error": "unknown image_id 'x'"}
    assert int(fixed.headers["content-length"]) == len(fixed.content)
    validation = asyncio.run(get("status=400&kind=validation")).json()
    assert validation["error"] == (
        "unknown field 'lable' for /similar; it takes: image_id, k, label; "
        "k: Input should be greater than or equal to 1"
    )
    assert len(validation["detail"]) == 2  # kept for programs
    assert asyncio.run(get("status=200&kind=listed")).json() == [{"error": "unknown image_id 'x'"}]  # a 200 is data
    assert asyncio.run(get("status=400")).json() == {"ok": True}


def test_validation_sentence_without_details_still_says_something() -> None:
    assert validation_sentence([], "/x", frozenset()) == "invalid request"
    assert validation_sentence([{"loc": [], "msg": "Invalid JSON"}], "/x", frozenset()) == "body: Invalid JSON"
