"""Bouncer's OpenAPI document (BentoML's, made to tell the truth about every answer) and its page.

BentoML 1.4 builds the document itself (``_bentoml_sdk/service/openapi.py``) and offers no
option to change it (bentoml/BentoML#4669, still open), so :class:`OpenAPIInfo` answers
``/docs.json`` with BentoML's document post-processed by :func:`bouncer_spec`:

- ``info``: Bouncer's title, description and version, not BentoML's boilerplate (its
  default README with badges, "BentoML Team" as contact, version ``"None"`` outside a bento).
- Every answer the server can give is documented (a schemathesis run checks it:
  ``tests/service/test_openapi_contract.py``): BentoML lists 200/400/404/500 on every
  route; :mod:`bento_service.http.guards` also answers 413 (body over the cap), 415 (an
  upload route without multipart), 401 (a write without the token), 409 (a second
  training, an undo over a later change, suspects without out-of-fold probabilities) and
  503 (predict's batcher overloaded). Every error body is ``{"error": str}``, validation
  errors add ``detail`` (pydantic's list; BentoML documented a string).
- Nullable fields say so: BentoML copies pydantic's ``anyOf: [..., {"type": "null"}]``,
  which is not OpenAPI 3.0 (no ``null`` type): it becomes ``nullable: true``.
- A request body is required where the endpoint has a required field, and ``image``
  answers the image file's own type, not ``application/octet-stream``.

Paths and field schemas stay BentoML's: the endpoints' docstrings and ``schemas`` document them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Container, Sequence
from pathlib import Path
from typing import Any

from starlette.responses import FileResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

import training

SPEC_PATH = "/docs.json"  # where BentoML serves the spec; its Swagger page at / loads it from here
# The Swagger page itself: BentoML's hides the title (its CSS), says "BentoML Prediction Service" in the
# tab and loads Google Tag Manager; Bouncer's shows its name and a link to the review page.
PAGE_PATH = "/"
PAGE = Path(__file__).parents[1] / "ui" / "static" / "api.html"
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


ERROR = "Error"  # the one error body schema, in components
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": ERROR,
    "description": "Every 4xx and 5xx answer: one object naming the problem.",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "title": "Message", "description": "What is wrong, in a sentence."},
        "detail": {
            "type": "array",
            "title": "Error Detail",
            "description": "Validation errors only: each field and its problem (pydantic's error list).",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                    "url": {"type": "string"},
                },
            },
        },
    },
}
BENTOML_ERRORS = ("InvalidArgument", "NotFound", "InternalServerError")  # its components, kept under their names
BEARER = "bearer"
# Answers some endpoints give besides 400/404/500 (middleware adds 401, 413, 415 and the training 409s).
ENDPOINT_ANSWERS: dict[str, dict[int, str]] = {
    "undo": {409: "A later event changed, or a later confirm vouched for, the same images."},
    "suspects": {409: "The serving version has no out-of-fold probabilities (retrain to get suspects)."},
    "predict": {503: "The request waited longer than BOUNCER_BATCH_MAX_LATENCY_MS for the batcher."},
    "predict_batch": {503: "The request waited longer than BOUNCER_BATCH_MAX_LATENCY_MS for the batcher."},
}
UNAUTHORIZED = "BOUNCER_API_TOKEN is set and the request has no 'Authorization: Bearer <token>' carrying it."
CROSS_SITE = "A browser's request from another site's page (Origin / Sec-Fetch-Site); see BOUNCER_TRUSTED_ORIGINS."
TOO_LARGE = (
    "The body is over the route's limit: BOUNCER_MAX_JSON_BYTES for JSON, BOUNCER_MAX_UPLOAD_BYTES per file "
    "and BOUNCER_MAX_REQUEST_BYTES in all for uploads."
)
UNSUPPORTED = "An upload route takes multipart/form-data only; every other route application/json only."
BAD_REQUEST = "Invalid JSON or form, a field the endpoint does not take, or a value out of range."
BUSY = "Too many large request bodies in this worker at once (BOUNCER_MAX_BODY_BYTES_IN_FLIGHT): retry."
TRAINING_RUNS = "A training is already running (one at a time), or, for cancel, none is."
TRAINING_CANCELED = "The training was canceled: it has no result."
NO_NUL = "^[^\\u0000]*$"  # no text field takes a NUL character (PostgreSQL cannot store one): a 400
# A task's answers, as Bouncer serves them: BentoML documents other status values than it stores.
TASK_STATES = ["pending", "in_progress", "completed", "failed", "canceled"]
TASK_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "TaskStatusResponse",
    "description": "A task's state: completed, failed (its answer was an error) or canceled once it ended.",
    "required": ["task_id", "status", "created_at", "executed_at"],
    "properties": {
        "task_id": {"type": "string", "title": "Task Id"},
        "status": {"type": "string", "title": "Status", "enum": TASK_STATES},
        "created_at": {"type": "string", "title": "Created At"},
        "executed_at": {"type": "string", "title": "Executed At", "nullable": True},
    },
}
TASK_SUBMITTED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "TaskSubmitted",
    "description": "A task accepted: watch it at <task>/status?task_id=, read its answer at <task>/get?task_id=.",
    "required": ["task_id", "status"],
    "properties": {
        "task_id": {"type": "string", "title": "Task Id"},
        "status": {"type": "string", "title": "Status", "enum": TASK_STATES},
    },
}
TASK_CANCELED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "TaskCanceled",
    "description": "The training's process is stopped; its task reads canceled, its MLflow run failed.",
    "required": ["task_id", "run_id", "status"],
    "properties": {
        "task_id": {"type": "string", "title": "Task Id"},
        "run_id": {"type": "string", "title": "Run Id", "nullable": True},
        "status": {"type": "string", "title": "Status", "enum": ["canceled"]},
    },
}
TASK_ANSWERS = {"submit": "TaskSubmitted", "retry": "TaskSubmitted", "cancel": "TaskCanceled"}
# Marks a field that takes a class name of the dataset (``json_schema_extra``): the document lists them.
CLASS_NAMES: dict[str, Any] = {"x-bouncer-enum": "classes"}


def bouncer_spec(
    service: Any, write_paths: Container[str] = (), classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """BentoML's document for ``service`` with every answer documented; ``write_paths`` need the API token.

    ``classes``: the dataset's class names, listed as the values of every field marked CLASS_NAMES.
    """
    spec = service.openapi_spec.asdict()
    spec["info"] = openapi_info()
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas[ERROR] = ERROR_SCHEMA
    for name in BENTOML_ERRORS:
        if name in schemas:
            schemas[name] = {**ERROR_SCHEMA, "title": name, "description": schemas[name].get("description", "")}
    components["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "description": "BOUNCER_API_TOKEN, when it is set."}
    }
    schemas["TaskStatusResponse"] = TASK_STATUS_SCHEMA
    schemas["TaskSubmitted"] = TASK_SUBMITTED_SCHEMA
    schemas["TaskCanceled"] = TASK_CANCELED_SCHEMA
    spec = _nullable(spec)  # copies every object on the way: the constants above are never changed below
    schemas = spec["components"]["schemas"]
    apis = {api.route: api for api in service.apis.values()}
    for task in (api.route for api in service.apis.values() if api.is_task):
        spec.get("paths", {}).pop(task, None)  # a task runs through <task>/submit only (guards.WritePaths)
    for path, item in spec.get("paths", {}).items():
        for method, operation in item.items():
            if isinstance(operation, dict):
                _document_answers(path, method, operation, apis, write_paths)
                _mark_nullable(operation, schemas)
                _no_nul_in_text(operation)
    for name, schema in schemas.items():
        if name.endswith("__Input"):
            _no_nul_in_text(schema)
    _list_classes(spec, classes)
    _null_in_nullable_enums(spec)
    _uploads_not_empty(spec.get("paths", {}))
    return spec


def _null_in_nullable_enums(node: Any) -> None:
    """A nullable enum lists null among its values: OpenAPI 3.0 allows only the values an enum lists."""
    if isinstance(node, list):
        for item in node:
            _null_in_nullable_enums(item)
    elif isinstance(node, dict):
        if node.get("nullable") and isinstance(node.get("enum"), list) and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]
        for value in node.values():
            _null_in_nullable_enums(value)


def _uploads_not_empty(node: Any) -> None:
    """An uploaded file has at least one byte (an empty file is a 400: no image has none)."""
    if isinstance(node, list):
        for item in node:
            _uploads_not_empty(item)
    elif isinstance(node, dict):
        if node.get("format") == "binary" and node.get("type") == "string":
            node.setdefault("minLength", 1)
        for key, value in node.items():
            if key != "responses":
                _uploads_not_empty(value)


def _list_classes(node: Any, classes: Sequence[str] | None) -> None:
    """Each CLASS_NAMES field becomes an enum of ``classes`` (no marker left when they are unknown)."""
    if isinstance(node, list):
        for item in node:
            _list_classes(item, classes)
    elif isinstance(node, dict):
        if node.pop("x-bouncer-enum", None) == "classes" and classes:
            node["enum"] = [*classes, *([None] if node.get("nullable") else [])]
            node.pop("pattern", None)
        for value in node.values():
            _list_classes(value, classes)


def _document_answers(
    path: str, method: str, operation: dict[str, Any], apis: dict[str, Any], write_paths: Container[str]
) -> None:
    responses = operation["responses"] = {str(status): answer for status, answer in operation["responses"].items()}
    route, _, action = path.rpartition("/") if path not in apis else (path, "", "")
    api = apis.get(route)
    if api is None:  # infrastructure: /healthz, /livez, /readyz, /metrics
        return
    answers: dict[int, str] = {}
    if method.upper() not in ("GET", "HEAD", "OPTIONS"):
        answers[403] = CROSS_SITE
    takes_body = "requestBody" in operation
    if takes_body:
        answers[400] = BAD_REQUEST
        answers[413] = TOO_LARGE
        answers[415] = UNSUPPORTED
        answers[503] = BUSY
        if any(field.is_required() for field in api.input_spec.model_fields.values()):
            operation["requestBody"]["required"] = True
    if path in write_paths:
        answers[401] = UNAUTHORIZED
        operation["security"] = [{BEARER: []}]
    if api.is_task and action in ("submit", "retry", "cancel"):
        answers[409] = TRAINING_RUNS
    if api.is_task and action == "get":
        answers[409] = TRAINING_CANCELED
    for parameter in operation.get("parameters", []):
        if parameter.get("name") == "task_id":  # an empty id is a 400 ("task_id is required")
            parameter["schema"]["minLength"] = 1
    if api.is_task and action in TASK_ANSWERS:
        ok = {"$ref": f"#/components/schemas/{TASK_ANSWERS[action]}"}
        responses["200"] = {**responses.get("200", {}), "content": {"application/json": {"schema": ok}}}
    if not action:
        answers.update(ENDPOINT_ANSWERS.get(api.name, {}))
    for status, description in sorted(answers.items()):
        responses.setdefault(str(status), {"description": description})
    for status, response in responses.items():
        if status[0] in "45":
            response["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR}"}}}
    if api.name == "image" and not action:  # BentoML serves a file with the type its name says
        binary = {"schema": {"type": "string", "format": "binary"}}
        responses["200"]["content"] = {"image/*": binary, "application/octet-stream": binary}
    operation["responses"] = dict(sorted(responses.items()))


def _no_nul_in_text(node: Any) -> None:
    """Every text field of a request says it takes no NUL character (a 400 otherwise); uploads are bytes."""
    if isinstance(node, list):
        for item in node:
            _no_nul_in_text(item)
    elif isinstance(node, dict):
        if node.get("type") == "string" and "format" not in node and "pattern" not in node and "enum" not in node:
            node["pattern"] = NO_NUL
        for key, value in node.items():
            if key not in ("responses", "example", "default"):
                _no_nul_in_text(value)


def _mark_nullable(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """BentoML inlines each endpoint's input and output schema with the null option dropped: put it back.

    The component of the same model (``<endpoint>__Input``, or the output's title) kept it.
    """
    inline: list[tuple[dict[str, Any], str]] = []
    for response in operation.get("responses", {}).values():
        for media in response.get("content", {}).values():
            schema = media.get("schema", {})
            inline.append((schema, schema.get("title", "")))
    name = str(operation.get("x-bentoml-name", ""))
    for media in operation.get("requestBody", {}).get("content", {}).values():
        inline.append((media.get("schema", {}), f"{name.removesuffix('_submit')}__Input"))
    for schema, component in inline:
        properties = schemas.get(component, {}).get("properties", {})
        for field, definition in schema.get("properties", {}).items():
            if properties.get(field, {}).get("nullable"):
                definition["nullable"] = True


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0 has no ``null`` type: ``anyOf: [X, {"type": "null"}]`` becomes X with ``nullable: true``.

    (Nor a ``file`` type: an upload is a binary string.)
    """
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.get("type") == "file":  # BentoML's upload fields in components: Swagger 2.0, not OpenAPI 3.0
        node["type"] = "string"
    options = node.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1 and "$ref" not in rest[0]:
            node = {**rest[0], **node}
        elif len(rest) == 1:
            node["allOf"] = rest  # a $ref takes no sibling keywords in 3.0
        else:
            node["anyOf"] = rest
        node["nullable"] = True
    return node


def openapi_info() -> dict[str, str]:
    """The spec's ``info``: no contact, since there is no one to write to but the project."""
    return {"title": TITLE, "description": DESCRIPTION, "version": training.__version__}


class OpenAPIInfo:
    """ASGI middleware: ``GET /docs.json`` is :func:`bouncer_spec` for ``service``.

    The spec is generated per request, as BentoML's own handler does; every other
    request passes straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        service: Any,
        write_paths: Container[str] = (),
        classes: Callable[[], Sequence[str]] | None = None,
    ) -> None:
        self.app = app
        self.service = service  # the @bentoml.service object whose spec this is
        self.write_paths = write_paths  # the routes that need the API token
        self.classes = classes  # the dataset's class names, read per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in (SPEC_PATH, PAGE_PATH) or scope.get("method") not in {"GET", "HEAD"}:
            await self.app(scope, receive, send)
            return
        if path == PAGE_PATH:
            await FileResponse(PAGE, headers={"Cache-Control": "no-cache"})(scope, receive, send)
            return
        classes = await asyncio.to_thread(self.classes) if self.classes else None
        await JSONResponse(bouncer_spec(self.service, self.write_paths, classes))(scope, receive, send)
