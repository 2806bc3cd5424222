"""What each POST route takes, and reading its form once: shared by the guards and the predict route."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class RouteInput:
    """What one POST route takes: its field names, which of them are file uploads, and its input model.

    ``submit``: a task's submit route, whose body BentoML stores and validates only when
    the task runs (a typo would be a 200 and a failed task): it is validated on arrival.
    """

    fields: frozenset[str]
    files: frozenset[str] = frozenset()
    spec: Any = None  # the endpoint's BentoML input model
    submit: bool = False


def api_routes(service: Any) -> dict[str, RouteInput]:
    """Each POST route and what its endpoint takes (a task also at its /submit route)."""
    routes: dict[str, RouteInput] = {}
    for api in service.apis.values():
        fields = frozenset(api.input_spec.model_fields)
        files = frozenset(api.input_spec.multipart_fields)
        routes[api.route] = RouteInput(fields, files, api.input_spec)
        if api.is_task:
            routes[f"{api.route}/submit"] = RouteInput(fields, files, api.input_spec, submit=True)
    return routes


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
    return f"unknown field {', '.join(map(repr, unknown))} for {path}; it takes: {takes}"
