"""What each route takes and what the guards, the error bodies and the predict route share: forms, bodies, messages."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import Message, Receive

from training.errors import quoted

MULTIPART = "multipart/form-data"


JSON = "application/json"
# A form's own bytes around its one file: boundaries, part headers and the few text fields beside it.
FORM_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class RouteInput:
    """What one POST route takes: its field names, which of them are file uploads, and its input model.

    ``submit``: a task's submit route, whose body BentoML stores and validates only when
    the task runs (a typo would be a 200 and a failed task): it is validated on arrival.
    ``max_body_bytes``: the largest body the route can need, refused above it before it is read.
    """

    fields: frozenset[str]
    files: frozenset[str] = frozenset()
    spec: Any = None  # the endpoint's BentoML input model
    submit: bool = False
    max_body_bytes: int = 64 * 1024 * 1024


def api_routes(
    service: Any, *, max_json_bytes: int, max_upload_bytes: int, max_request_bytes: int
) -> dict[str, RouteInput]:
    """Each POST route and what its endpoint takes (a task also at its /submit route).

    A JSON route's body is capped at ``max_json_bytes``; a route taking one file at one
    upload and its form, so a 30 MB upload to ``predict`` is refused from its
    Content-Length; a route taking a list of files at ``max_request_bytes``.
    """
    routes: dict[str, RouteInput] = {}
    for api in service.apis.values():
        fields = frozenset(api.input_spec.model_fields)
        files = frozenset(api.input_spec.multipart_fields)
        if not files:
            cap = max_json_bytes
        elif any(takes_many(api.input_spec.model_fields[name].annotation) for name in files):
            cap = max_request_bytes
        else:
            cap = min(max_request_bytes, len(files) * max_upload_bytes + FORM_OVERHEAD_BYTES)
        routes[api.route] = RouteInput(fields, files, api.input_spec, max_body_bytes=cap)
        if api.is_task:
            routes[f"{api.route}/submit"] = RouteInput(fields, files, api.input_spec, submit=True, max_body_bytes=cap)
    return routes


def takes_many(annotation: Any) -> bool:
    """Whether a file field's type is a list of files (``list[Path]``, possibly inside Annotated/Optional)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    return any(takes_many(arg) for arg in typing.get_args(annotation) if not isinstance(arg, str | int | float))


async def read_form(request: Request, fields: frozenset[str], files: frozenset[str]) -> tuple[FormData, str | None]:
    """The parsed form (cached on ``request``) and what is wrong with it for a route taking ``fields``, if anything."""
    try:
        form = await request.form()
    except (MultiPartException, HTTPException) as exc:  # no boundary, too many parts, a part over the size cap...
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail  # request.form() wraps it
        return FormData(), f"malformed form body: {detail}"
    unknown = [name for name in dict.fromkeys(form.keys()) if name not in fields]
    if unknown:
        return form, unknown_fields_message(unknown, request.url.path, fields)
    for name in files:
        if any(not isinstance(value, UploadFile) for value in form.getlist(name)):
            return form, f"field {name!r} of {request.url.path} must be a file upload, not a text value"
    for name, value in form.multi_items():
        if isinstance(value, str) and "\x00" in value:
            return form, NUL_MESSAGE.format(name=repr(name))
    return form, None


NUL_MESSAGE = "field {name} contains a NUL character (\\u0000): no text field takes one"
# a \u0000 escape in a JSON string: an unescaped backslash (odd run of them) before u0000
JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def json_nul_problem(body: bytes) -> str | None:
    """A 400 message if a JSON body carries a NUL character in any string (PostgreSQL cannot store one)."""
    return (
        "a JSON string contains a NUL character (\\u0000): no text field takes one" if JSON_NUL.search(body) else None
    )


def unknown_fields_message(unknown: Iterable[str], path: str, takes: Iterable[str]) -> str:
    takes = ", ".join(sorted(takes)) or "no fields"
    return f"unknown field {', '.join(map(quoted, unknown))} for {path}; it takes: {takes}"


# BentoML's own routes besides the endpoints (its Swagger page, spec, probes, metrics).
SYSTEM_PATHS = frozenset({"/", "/docs.json", "/schema.json", "/healthz", "/livez", "/readyz", "/metrics"})
SYSTEM_PREFIXES = ("/static_content/",)
TASK_ACTIONS = ("submit", "status", "get", "retry", "cancel")
OTHER_PATHS = "other"  # the one metrics label of every path no route serves


def exact_paths(service: Any) -> frozenset[str]:
    """Each path a route of ``service`` serves as it is (no template): endpoints, task actions, BentoML's own."""
    exact = set(SYSTEM_PATHS)
    for api in service.apis.values():
        exact.add(api.route)
        if api.is_task:
            exact.update(f"{api.route}/{action}" for action in TASK_ACTIONS)
    return frozenset(exact)


def endpoint_labeller(service: Any, mounts: Mapping[str, Any]) -> Callable[[str], str]:
    """A request path -> its route's template (``/ui/thumbnail/{image_id}``), or ``other`` when nothing serves it.

    Metrics label requests with it: one series per route, however many paths clients make up.
    ``mounts``: path prefix -> the Starlette app mounted there.
    """
    exact = exact_paths(service)

    def label(path: str) -> str:
        if path in exact:
            return path
        for prefix, app in mounts.items():
            if path == prefix or path.startswith(prefix + "/"):
                scope = {"type": "http", "path": path[len(prefix) :] or "/", "root_path": "", "method": "GET"}
                for route in app.routes:
                    if route.matches(scope)[0] is not Match.NONE:
                        return prefix + route.path
                return OTHER_PATHS
        return next((p.rstrip("/") for p in SYSTEM_PREFIXES if path.startswith(p)), OTHER_PATHS)

    return label


# Unknown field names one 400 lists: a body of a million made-up fields is answered in a line.
UNKNOWN_FIELDS_LISTED = 10

# How much of an error a 4xx sentence says: the first few problems, and how many more there were.
PROBLEMS_NAMED = 5


def validation_sentence(details: list[Any], path: str, takes: frozenset[str]) -> str:
    """'k: Input should be greater than or equal to 1; unknown field 'lable' ...' from pydantic's error list.

    At most PROBLEMS_NAMED problems are named, and the count of the rest.
    """
    unknown = [str(d["loc"][0]) for d in details if isinstance(d, dict) and d.get("type") == "extra_forbidden"]
    parts = [unknown_fields_message(unknown[:UNKNOWN_FIELDS_LISTED], path, takes)] if unknown else []
    others = [d for d in details if not isinstance(d, dict) or d.get("type") != "extra_forbidden"]
    for detail in others[:PROBLEMS_NAMED]:
        if not isinstance(detail, dict):
            continue
        where = ".".join(str(part) for part in detail.get("loc", ())) or "body"
        parts.append(f"{where}: {detail.get('msg', 'invalid')}")
    untold = max(0, len(unknown) - UNKNOWN_FIELDS_LISTED) + max(0, len(others) - PROBLEMS_NAMED)
    if untold:
        parts.append(f"and {untold} more problem{'s' if untold > 1 else ''}")
    return "; ".join(parts) or "invalid request"


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
