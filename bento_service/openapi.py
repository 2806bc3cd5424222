"""Bouncer's OpenAPI document: BentoML's, made to tell the truth about every answer.

BentoML 1.4 builds the document itself (``_bentoml_sdk/service/openapi.py``) and offers no
option to change it (bentoml/BentoML#4669, still open), so :class:`OpenAPIInfo` answers
``/docs.json`` with BentoML's document post-processed by :func:`bouncer_spec`:

- ``info``: Bouncer's title, description and version, not BentoML's boilerplate (its
  default README with badges, "BentoML Team" as contact, version ``"None"`` outside a bento).
- Every answer the server can give is documented (a schemathesis run checks it:
  ``tests/service/test_openapi_contract.py``): BentoML lists 200/400/404/500 on every
  route; :mod:`bento_service.middleware` also answers 413 (body over the cap), 415 (an
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

from collections.abc import Awaitable, Callable, Container
from typing import Any

from starlette.responses import JSONResponse

import training

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SPEC_PATH = "/docs.json"  # where BentoML serves the spec; its Swagger page at / loads it from here
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
TOO_LARGE = "The body is over BOUNCER_MAX_REQUEST_BYTES, or an upload over BOUNCER_MAX_UPLOAD_BYTES."
UNSUPPORTED = "An upload route takes multipart/form-data only."
BAD_REQUEST = "Invalid JSON or form, a field the endpoint does not take, or a value out of range."
TRAINING_RUNS = "A training is already running (one at a time), or, for cancel, none is."


def bouncer_spec(service: Any, write_paths: Container[str] = ()) -> dict[str, Any]:
    """BentoML's document for ``service`` with every answer documented; ``write_paths`` need the API token."""
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
    spec = _nullable(spec)  # copies every object on the way: the constants above are never changed below
    schemas = spec["components"]["schemas"]
    apis = {api.route: api for api in service.apis.values()}
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            if isinstance(operation, dict):
                _document_answers(path, operation, apis, write_paths)
                _mark_nullable(operation, schemas)
    return spec


def _document_answers(path: str, operation: dict[str, Any], apis: dict[str, Any], write_paths: Container[str]) -> None:
    responses = operation["responses"] = {str(status): answer for status, answer in operation["responses"].items()}
    route, _, action = path.rpartition("/") if path not in apis else (path, "", "")
    api = apis.get(route)
    if api is None:  # infrastructure: /healthz, /livez, /readyz, /metrics
        return
    answers: dict[int, str] = {}
    takes_body = "requestBody" in operation
    if takes_body:
        answers[400] = BAD_REQUEST
        answers[413] = TOO_LARGE
        if api.input_spec.multipart_fields:
            answers[415] = UNSUPPORTED
        if any(field.is_required() for field in api.input_spec.model_fields.values()):
            operation["requestBody"]["required"] = True
    if path in write_paths:
        answers[401] = UNAUTHORIZED
        operation["security"] = [{BEARER: []}]
    if api.is_task and action in ("", "submit", "retry", "cancel"):
        answers[409] = TRAINING_RUNS
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

    def __init__(self, app: ASGIApp, *, service: Any, write_paths: Container[str] = ()) -> None:
        self.app = app
        self.service = service  # the @bentoml.service object whose spec this is
        self.write_paths = write_paths  # the routes that need the API token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != SPEC_PATH or scope.get("method") not in {"GET", "HEAD"}:
            await self.app(scope, receive, send)
            return
        await JSONResponse(bouncer_spec(self.service, self.write_paths))(scope, receive, send)
