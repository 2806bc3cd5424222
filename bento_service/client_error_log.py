"""A 4xx answer is one INFO line in the server log, not an ERROR with a traceback.

BentoML 1.4 logs every exception an endpoint raises through ``log_exception``
(``bentoml._internal.server.http_app``): "Exception on /x [POST]" at ERROR with the
full traceback, also for the ``BentoMLException`` 4xx we raise on purpose and for
validation errors (400). A log full of tracebacks for a client's typo buries the
real failures; those (5xx, anything else) keep their traceback.
"""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

# The logger and message of BentoML's log_exception (bentoml 1.4.39).
BENTOML_EXCEPTION_LOGGER = "bentoml._internal.server.http_app"
BENTOML_EXCEPTION_MESSAGE = "Exception on %s [%s]"


class ClientErrorsInOneLine(logging.Filter):
    """Rewrite BentoML's "Exception on ..." record of a 4xx into one INFO line: path, method, status, message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != BENTOML_EXCEPTION_MESSAGE or not record.exc_info or record.exc_info[1] is None:
            return True
        status = client_error_status(record.exc_info[1])
        if status is None:
            return True
        path, method = record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?")
        text = str(record.exc_info[1]).strip()
        message = text.splitlines()[0] if text else type(record.exc_info[1]).__name__
        record.msg, record.args = "%s [%s] answered %d: %s", (path, method, status, message)
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.exc_info, record.exc_text = None, None
        return True


def client_error_status(exc: BaseException) -> int | None:
    """The 4xx status BentoML answers ``exc`` with, or None for a server error."""
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500:
        return int(exc.error_code.value)
    return None


def install_client_error_filter() -> None:
    """Add the filter to BentoML's exception logger once per process (each worker imports the service)."""
    logger = logging.getLogger(BENTOML_EXCEPTION_LOGGER)
    if not any(isinstance(f, ClientErrorsInOneLine) for f in logger.filters):
        logger.addFilter(ClientErrorsInOneLine())
