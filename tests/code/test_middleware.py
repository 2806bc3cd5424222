"""The HTTP guards (bento_service.http) before a real Starlette app: size, content type, forms, error bodies."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from bentoml.exceptions import BadInput
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bento_service.http.errors import ErrorBodyFix
from bento_service.http.guards import RequestGuard
from bento_service.http.routes import RouteInput, validation_sentence
from bento_service.http.upstream import check_form

CAP = 200_000
ROUTES = {
    "/predict": RouteInput(frozenset({"image"}), files=frozenset({"image"}), max_body_bytes=CAP),
    "/similar": RouteInput(frozenset({"image_id", "k", "label"}), max_body_bytes=CAP),
}


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
    response = post("/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"content": b'{"image_id": "a"}', "headers": {"content-type": "text/plain"}},  # a cross-site form's type
        {"content": b'{"image_id": "a"}'},  # none at all: what fetch(no-cors) may send
        {"data": {"image_id": "a"}},  # urlencoded
        {"files": {"image_id": ("a", b"a")}},  # multipart
    ],
    ids=["text-plain", "no-content-type", "urlencoded", "multipart"],
)
def test_json_routes_take_only_application_json(kwargs: dict) -> None:
    response = post("/similar", **kwargs)
    assert response.status_code == 415, response.text
    assert "takes application/json" in response.json()["error"]


def test_a_json_body_must_be_an_object_of_known_fields() -> None:
    assert post("/similar", json=["a"]).json()["error"].endswith("must be an object of its fields, not list")
    assert post("/similar", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    flood = {f"f{i}": 1 for i in range(12_000)}  # ~130 KB of made-up fields: BentoML listed each in its 400
    response = post("/similar", json=flood)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("unknown field 'f0', 'f1'") and error.endswith("(and 11990 more)")
    assert len(response.content) < 1000


def test_an_empty_json_body_is_an_empty_object() -> None:
    assert post("/similar", content=b"", headers={"content-type": "application/json"}).status_code == 200


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


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ({}, False),  # curl, the BentoML client, a notebook: no browser headers
        ({"sec-fetch-site": "same-origin", "origin": "http://bouncer:3000"}, False),  # the review page
        ({"sec-fetch-site": "none"}, False),  # typed into the address bar
        ({"sec-fetch-site": "cross-site", "origin": "https://evil.example"}, True),
        ({"sec-fetch-site": "same-site", "origin": "http://bouncer:8888"}, True),  # another port is another origin
        ({"origin": "https://evil.example"}, True),  # an older browser: Origin only
        ({"origin": "null"}, True),  # a sandboxed frame or a file: page
        ({"origin": "http://bouncer:3000"}, False),
        ({"sec-fetch-site": "cross-site", "origin": "https://review.example.org"}, False),  # trusted
    ],
)
def test_a_browser_may_write_only_from_the_servers_own_origin(headers: dict[str, str], refused: bool) -> None:
    from starlette.datastructures import Headers

    from bento_service.http.guards import cross_site_problem

    problem = cross_site_problem(
        Headers({"host": "bouncer:3000", **headers}), frozenset({"https://review.example.org"})
    )
    assert (problem is not None) == refused, problem
    if refused:
        assert "cross-site request refused" in problem and "BOUNCER_TRUSTED_ORIGINS" in problem


def test_the_cross_site_guard_lets_reads_through_and_refuses_writes_before_reading() -> None:
    from bento_service.http.guards import CrossSiteGuard

    seen: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        seen.append(scope["method"])
        await JSONResponse({"ok": True})(scope, receive, send)  # type: ignore[arg-type]

    async def call(method: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=CrossSiteGuard(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://bouncer:3000") as client:
            return await client.request(method, "/relabel", headers={"origin": "https://evil.example"})

    assert asyncio.run(call("GET")).status_code == 200
    refused = asyncio.run(call("POST"))
    assert refused.status_code == 403 and refused.json()["error"].startswith("cross-site request refused")
    assert asyncio.run(call("PUT")).status_code == 403
    assert seen == ["GET"]


def test_the_body_budget_makes_large_requests_take_turns() -> None:
    from bento_service.http.guards import BodyBudget

    async def run() -> tuple[int, list[str]]:
        budget = BodyBudget(100)
        events: list[str] = []
        peak = 0

        async def request(name: str, size: int) -> None:
            nonlocal peak
            async with budget.holding() as hold:
                await hold.take(size)
                peak = max(peak, budget.used)
                events.append(f"{name} in")
                await asyncio.sleep(0.01)
                events.append(f"{name} out")

        await asyncio.gather(request("a", 60), request("b", 60), request("c", 500), request("d", 10))
        return peak, events

    peak, events = asyncio.run(run())
    assert peak == 500  # the one larger than the whole budget ran alone
    assert events.index("b in") > events.index("a out")  # 60 + 60 > 100: b waited for a
    assert events.index("c in") > max(events.index("a out"), events.index("d out"))


def test_the_body_budget_gives_up_after_its_wait() -> None:
    from bento_service.http.guards import BodyBudget

    async def run() -> None:
        budget = BodyBudget(100)
        budget.WAIT_S = 0.05
        async with budget.holding() as first, budget.holding() as second:
            await first.take(90)
            await second.take(20)

    with pytest.raises(TimeoutError):
        asyncio.run(run())


def test_an_error_body_names_a_few_problems_and_counts_the_rest() -> None:
    from bento_service.http.errors import DETAILS_KEPT, error_body

    detail = [
        {"type": "string_type", "loc": ["image_ids", i], "msg": "Input should be a valid string"} for i in range(5000)
    ]
    body = json.dumps({"error": "5000 validation errors for Input", "detail": detail}).encode()
    fixed = json.loads(error_body(body, "/trace", frozenset({"image_ids"})))
    assert fixed["error"].startswith("image_ids.0: Input should be a valid string; image_ids.1:")
    assert fixed["error"].endswith("; and 4995 more problems")
    assert len(fixed["detail"]) == DETAILS_KEPT and fixed["detail_count"] == 5000
    assert len(json.dumps(fixed)) < 5000


def test_plain_text_errors_become_json_objects() -> None:
    from bento_service.http.errors import error_body

    assert json.loads(error_body(b"Not Found", "/nope", frozenset(), 404)) == {"error": "Not Found: /nope"}
    assert json.loads(error_body(b"", "/x", frozenset(), 405)) == {"error": "Method Not Allowed: /x"}


def test_starlettes_own_404_and_405_answer_json() -> None:
    app = ErrorBodyFix(Starlette(routes=[Route("/similar", echo, methods=["POST"])]), routes=ROUTES)

    async def call(method: str, path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, path)

    missing = asyncio.run(call("GET", "/nope"))
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found: /nope"}
    wrong = asyncio.run(call("DELETE", "/similar"))
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST" and wrong.json()["error"].startswith("Method")
    assert int(wrong.headers["content-length"]) == len(wrong.content)


def test_a_redirect_never_reflects_the_host_header() -> None:
    from bento_service.http.guards import RelativeRedirects

    app = RelativeRedirects(Starlette(routes=[Route("/ui/", echo, methods=["GET"])]))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://evil.example") as client:
            return await client.get("/ui?x=1", headers={"host": "evil.example"})

    response = asyncio.run(get())
    assert response.status_code == 307 and response.headers["location"] == "/ui/?x=1"
