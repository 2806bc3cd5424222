"""The HTTP errors the service answers, and the one place domain errors become them.

Every 4xx names the problem (the body is one ``{"error": ...}`` object, see
:mod:`bento_service.middleware`); a 5xx is a bug or a failed training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound

from training.curation.curator import InvalidRequest, NotAvailable
from training.data.folders import MissingSplitError
from training.data.images import ImageError
from training.labels.errors import InvalidTextError, NotFoundError, UndoConflictError, UnknownLabelError
from training.registry.serving import ModelResolutionError


class Conflict(BentoMLException):
    error_code = HTTPStatus.CONFLICT


class Unauthorized(BentoMLException):
    error_code = HTTPStatus.UNAUTHORIZED


class PayloadTooLarge(BentoMLException):
    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unavailable(BentoMLException):
    error_code = HTTPStatus.SERVICE_UNAVAILABLE


class TrainingError(BentoMLException):
    error_code = HTTPStatus.INTERNAL_SERVER_ERROR


@contextmanager
def client_errors(field: str | None = None) -> Iterator[None]:
    """Turn the domain's errors into 4xx answers that name the problem (``field``: the upload it was about)."""
    try:
        yield
    except (NotFoundError, MissingSplitError) as exc:
        raise NotFound(str(exc)) from exc
    except (UnknownLabelError, InvalidTextError, InvalidRequest, ModelResolutionError) as exc:
        raise InvalidArgument(str(exc)) from exc
    except ImageError as exc:
        raise InvalidArgument(f"{field}: {exc}" if field else str(exc)) from exc
    except (UndoConflictError, NotAvailable) as exc:
        raise Conflict(str(exc)) from exc
