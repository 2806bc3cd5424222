"""BentoML's own exception logging, through our filter: a 4xx is one INFO line, a 5xx keeps its traceback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from bentoml._internal.server.http_app import log_exception
from bentoml.exceptions import BentoMLException, InternalServerError, InvalidArgument, NotFound
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from bento_service.http.upstream import BENTOML_EXCEPTION_LOGGER, ClientErrorsInOneLine, install_client_error_filter


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    install_client_error_filter()
    install_client_error_filter()  # once per process, however often the service module is imported
    logger = logging.getLogger(BENTOML_EXCEPTION_LOGGER)
    assert sum(isinstance(f, ClientErrorsInOneLine) for f in logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=BENTOML_EXCEPTION_LOGGER):
        yield caplog
    logger.filters = [f for f in logger.filters if not isinstance(f, ClientErrorsInOneLine)]


def logged(error: BaseException, path: str = "/evaluate") -> None:
    """What BentoML's endpoint wrapper does with an exception an endpoint raised."""
    request = Request({"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b""})
    try:
        raise error
    except BaseException:
        log_exception(request)


class Payload(BaseModel):
    k: int


@pytest.mark.parametrize(
    ("error", "status"),
    [(NotFound("no test split in DATA_DIR /data"), 404), (InvalidArgument("unknown split 'holdout'\nmore"), 400)],
)
def test_a_client_error_is_one_info_line(
    captured: pytest.LogCaptureFixture, error: BentoMLException, status: int
) -> None:
    logged(error)
    (record,) = captured.records
    assert record.levelno == logging.INFO and record.exc_info is None
    first_line = str(error).splitlines()[0]
    assert record.getMessage() == f"/evaluate [POST] answered {status}: {first_line}"


def test_a_validation_error_is_a_400_line(captured: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValidationError) as invalid:
        Payload(k="many")
    logged(invalid.value, "/suspects")
    (record,) = captured.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == "/suspects [POST] answered 400: 1 validation error for Payload"


@pytest.mark.parametrize("error", [InternalServerError("the model file is gone"), RuntimeError("a bug")])
def test_a_server_error_keeps_its_traceback(captured: pytest.LogCaptureFixture, error: Exception) -> None:
    logged(error)
    (record,) = captured.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "Exception on /evaluate [POST]"
    assert record.exc_info is not None and record.exc_info[1] is error
