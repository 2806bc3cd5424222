"""Bouncer's HTTP layer over BentoML: what stands in front of the endpoints, in one package.

- :mod:`~bento_service.http.guards`: the ASGI middleware in front of every endpoint (one path per
  route, cross-site writes, the token, body sizes, types and pace, the training lock), added with
  BentoML's public ``add_asgi_middleware``.
- :mod:`~bento_service.http.errors`: domain errors -> statuses, and every 4xx body in one shape.
- :mod:`~bento_service.http.predict_route`: ``predict``/``predict_batch`` answered by a raw route.
- :mod:`~bento_service.http.openapi`: the OpenAPI document and page, telling the truth about every answer.
- :mod:`~bento_service.http.routes`: what each route takes; reading forms and bodies once.
- :mod:`~bento_service.http.upstream`: every reach into BentoML's internals, each tested against upstream.

:func:`install` puts it all in front of the service, in one order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from bento_service.http import upstream
from bento_service.http.errors import ErrorBodyFix
from bento_service.http.guards import (
    BodyBudget,
    BodyPace,
    CrossSiteGuard,
    RelativeRedirects,
    RequestGuard,
    RouteIdentity,
    TokenGuard,
    TrainingGate,
    write_paths,
)
from bento_service.http.openapi import OpenAPIInfo
from bento_service.http.predict_route import PredictRoute
from bento_service.http.routes import api_routes, endpoint_labeller, exact_paths
from training.settings import Settings


def install(
    service: Any,
    *,
    settings: Settings,
    write_endpoints: Iterable[str],
    mounts: Mapping[str, Any],
    classes: Callable[[], Sequence[str]] | None = None,
) -> None:
    """Put every guard in front of ``service`` (a ``@bentoml.service`` class, its apps mounted at ``mounts``).

    The first added is outermost (Starlette builds the stack in list order). Outermost:
    RouteIdentity (one path for every guard and the router); CrossSiteGuard (a browser's
    write from another site, from the headers alone); TokenGuard (the token, before any body
    is read); RelativeRedirects (no Host header reflected into a Location); RequestGuard
    (size, content type and pace, as the body arrives); then the raw predict route
    (answering predict itself in its final form); then ErrorBodyFix (so BentoML's 4xx get
    fixed); then TrainingGate (the training lock); innermost: OpenAPIInfo (the API's
    document and page). ``upstream.apply()`` must have run before the class was defined.
    """
    routes = api_routes(
        service,
        max_json_bytes=settings.max_json_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        max_request_bytes=settings.max_request_bytes,
    )
    writes = write_paths(service, write_endpoints)
    upstream.strict_inputs(service)
    upstream.label_metrics_by_route(endpoint_labeller(service, mounts))
    service.add_asgi_middleware(RouteIdentity, known=exact_paths(service))
    service.add_asgi_middleware(CrossSiteGuard, trusted_origins=settings.trusted_origin_set)
    service.add_asgi_middleware(TokenGuard, token=settings.api_token, write_paths=writes)
    service.add_asgi_middleware(RelativeRedirects)
    service.add_asgi_middleware(
        RequestGuard,
        routes=routes,
        budget=BodyBudget(settings.max_body_bytes_in_flight),
        pace=BodyPace(settings.body_idle_timeout_s, settings.body_min_bytes_per_s),
        sync_task_routes=writes.sync_task_routes,
    )
    if settings.fast_predict:
        service.add_asgi_middleware(PredictRoute, routes=routes)
    service.add_asgi_middleware(ErrorBodyFix, routes=routes)
    service.add_asgi_middleware(TrainingGate, settings=settings, write_paths=writes)
    service.add_asgi_middleware(OpenAPIInfo, service=service, write_paths=writes, classes=classes)
