"""Every guard decides on the route that runs: path variants, the token before the body, bodies by what arrived."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Match, Mount, Route

from bento_service.http.guards import (
    BodyBudget,
    BodyPace,
    BodyTooSlow,
    RequestGuard,
    RouteIdentity,
    TokenGuard,
    WritePaths,
    authorized,
    canonical_path,
    read_body,
)
from bento_service.http.routes import RouteInput

TOKEN = "s3cret"
WRITES = WritePaths(frozenset({"/relabel"}), frozenset({"/train/submit"}), frozenset({"/train/cancel"}))
ROUTES = {"/relabel": RouteInput(frozenset({"image_ids", "label"}), max_body_bytes=1000)}
# What a client can make of a path; each is the plain route (same guards) or a 404, never a route unguarded.
VARIANTS = ["{}%0A", "{}%0D", "{}%00", "{}%09", "{}/", "/{}", "{}//", "{};x", "{}%2F", "{}/.", "/.{}", "{}%0A%0A"]


async def where(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path, "body": (await request.body()).decode()})


ROUTER = Starlette(
    routes=[
        Route("/relabel", where, methods=["POST"]),
        Route("/train/submit", where, methods=["POST"]),
        Route("/images", where, methods=["POST"]),
        Mount("/ui", routes=[Route("/thumbnail/{image_id}", where)]),
    ]
)
KNOWN = frozenset({"/relabel", "/train/submit", "/train/cancel", "/images"})
APP = RouteIdentity(
    TokenGuard(RequestGuard(ROUTER, routes=ROUTES), token=TOKEN, write_paths=WRITES),
    known=KNOWN,
)


def call(method: str, raw_path: str, app: object = APP, **kwargs: object) -> httpx.Response:
    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.request(method, httpx.URL("http://test" + raw_path), **kwargs)  # type: ignore[arg-type]

    return asyncio.run(run())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("route", ["/relabel", "/train/submit"])
def test_a_path_variant_of_a_write_is_its_route_with_its_guards_or_a_404(route: str, variant: str) -> None:
    path = variant.format(route)
    body = {"image_ids": ["a"], "label": "cat"}
    anonymous = call("POST", path, json=body)
    assert anonymous.status_code in (401, 404), (path, anonymous.status_code, anonymous.text)
    with_token = call("POST", path, json=body, headers={"authorization": f"Bearer {TOKEN}"})
    if with_token.status_code == 200:  # it ran: then it ran as the route, after the token was checked
        assert with_token.json()["path"] == route and anonymous.status_code == 401
    else:
        assert with_token.status_code == 404 and anonymous.status_code == 404


def test_the_router_matches_a_known_path_exactly_once_control_characters_are_gone() -> None:
    """What makes exact lookups safe: past RouteIdentity, no path the router runs differs from its route's."""
    for route in ROUTER.routes:
        if not isinstance(route, Route):
            continue
        for variant in VARIANTS:
            path = variant.format(route.path).replace("%0A", "\n").replace("%0D", "\r").replace("%00", "\0")
            path = path.replace("%09", "\t").replace("%2F", "/")
            scope = {"type": "http", "path": path, "root_path": "", "method": "POST"}
            matched = route.matches(scope)[0] is Match.FULL
            control = any(ord(c) < 32 for c in path)
            canonical = canonical_path(path)
            # Either RouteIdentity refuses it (control characters), or rewrites it to a known route, or
            # the router does not run this route for it.
            assert control or canonical in KNOWN or not matched, path
            if matched and not control:
                assert path == route.path or canonical == route.path


def test_the_token_is_checked_before_the_body_is_read_or_judged() -> None:
    assert call("POST", "/relabel", content=b"not json", headers={"content-type": "text/plain"}).status_code == 401
    too_large = call("POST", "/relabel", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert too_large.status_code == 401
    authorized_415 = call(
        "POST", "/relabel", content=b"x", headers={"content-type": "text/plain", "authorization": f"Bearer {TOKEN}"}
    )
    assert authorized_415.status_code == 415


def test_the_scheme_is_case_insensitive_and_two_authorization_headers_are_refused() -> None:
    assert authorized(TOKEN, f"bearer {TOKEN}") and authorized(TOKEN, f"BEARER  {TOKEN}")
    assert not authorized(TOKEN, f"Basic {TOKEN}") and not authorized(TOKEN, TOKEN) and not authorized(TOKEN, "")
    assert authorized(None, "")
    body = {"image_ids": ["a"], "label": "cat"}
    lower = call("POST", "/relabel", json=body, headers={"authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200
    twice = [("authorization", f"Bearer {TOKEN}"), ("authorization", "Bearer wrong")]
    doubled = call("POST", "/relabel", json=body, headers=twice)
    assert doubled.status_code == 400 and "one Authorization header" in doubled.json()["error"]


def test_a_control_character_anywhere_in_a_path_is_a_404_for_every_method() -> None:
    for method in ("GET", "POST", "PUT", "DELETE"):
        response = call(method, "/ui/thumbnail/abc%0A")
        assert response.status_code == 404 and "control character" in response.json()["error"]
    assert call("GET", "/ui/thumbnail/abc").json()["path"] == "/ui/thumbnail/abc"


def test_a_body_that_stops_arriving_or_crawls_is_refused() -> None:
    async def silent() -> dict:
        await asyncio.sleep(10)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def crawl() -> dict:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"x", "more_body": True}

    pace = BodyPace(idle_s=0.2, min_bytes_per_s=1000)
    started = time.monotonic()
    with pytest.raises(BodyTooSlow, match="stopped arriving"):
        asyncio.run(read_body(silent, 10**6, pace=pace))
    with pytest.raises(BodyTooSlow, match="too slowly"):
        asyncio.run(read_body(crawl, 10**6, pace=pace))
    assert time.monotonic() - started < 2


def test_the_budget_counts_what_arrived_not_what_was_declared() -> None:
    """A request that declared a huge body and sent nothing holds nothing: another one is read at once."""

    async def run() -> tuple[int, int]:
        budget = BodyBudget(1000)
        budget.WAIT_S = 0.5
        idle_started = asyncio.Event()

        async def idle_receive() -> dict:
            idle_started.set()
            await asyncio.sleep(5)
            return {"type": "http.request", "body": b"", "more_body": False}

        async def quick_receive() -> dict:
            return {"type": "http.request", "body": b"y" * 800, "more_body": False}

        async def idle() -> None:
            async with budget.holding() as hold:
                with pytest.raises(BodyTooSlow):
                    await read_body(idle_receive, 10**9, hold=hold, pace=BodyPace(idle_s=1.0))

        idle_task = asyncio.create_task(idle())
        await idle_started.wait()
        async with budget.holding() as hold:
            body = await read_body(quick_receive, 10**6, hold=hold)
            used_while_both = budget.used
        await idle_task
        return len(body), used_while_both

    size, used = asyncio.run(run())
    assert size == 800 and used == 800


@pytest.mark.parametrize("text", ["1h\n", "7d\n", "24h\r", " 1h", "1h "])
def test_a_duration_with_anything_around_it_is_refused(text: str) -> None:
    from training.monitoring.drift import DriftInputError, parse_window

    with pytest.raises(DriftInputError, match="is not a duration"):
        parse_window(text)
    assert parse_window("1h") == 3600


def test_error_messages_quote_a_value_in_a_line() -> None:
    from bento_service.http.errors import ERROR_CHARS, error_body
    from training.errors import QUOTED_CHARS, quoted

    assert quoted("abc") == "'abc'"
    long = quoted("x" * 1_000_000)
    assert len(long) < QUOTED_CHARS + 40 and long.endswith("(1000000 characters)")
    detail = [{"type": "x", "loc": ["k"], "msg": "bad", "input": "y" * 10**6}]
    listed = {"error": "1 validation error", "detail": detail}
    fixed = json.loads(error_body(json.dumps(listed).encode(), "/similar", frozenset({"k"})))
    assert len(json.dumps(fixed)) < ERROR_CHARS
    assert len(json.loads(error_body(json.dumps([{"error": "z" * 10**6}]).encode(), "/x", frozenset()))["error"]) < 3000


def test_bodies_read_piece_by_piece_never_wait_on_each_other_for_ever() -> None:
    """Four bodies of 60 bytes arriving 20 at a time in a budget of 100: each is read whole, none gets a 503."""

    async def run() -> tuple[list[int], int]:
        budget = BodyBudget(100)
        budget.WAIT_S = 2.0
        peak = 0

        def pieces() -> object:
            sent = 0

            async def receive() -> dict:
                nonlocal sent
                await asyncio.sleep(0.01)
                sent += 20
                return {"type": "http.request", "body": b"z" * 20, "more_body": sent < 60}

            return receive

        async def request() -> int:
            nonlocal peak
            async with budget.holding() as hold:
                body = await read_body(pieces(), 10**6, hold=hold)
                peak = max(peak, budget.used)
                await asyncio.sleep(0.05)  # the endpoint holds the body while it works
                return len(body)

        sizes = await asyncio.gather(*(request() for _ in range(4)))
        return list(sizes), peak

    sizes, peak = asyncio.run(run())
    assert sizes == [60] * 4 and peak <= 100 + 60
