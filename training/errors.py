"""The one table of errors a user can fix: each kind carries the HTTP status that names it.

Every error Bouncer raises for something asked wrongly (an unknown id, a bad value, a conflict
with a later change, a dataset too small) derives from :class:`BouncerError`, whose
``error_code`` is its status. BentoML answers one raised by an endpoint with that status and
its message; the review page and the raw predict route answer it the same way; the CLI
prints it as one line and exits 2. Any other exception is a bug: a 500 with a traceback in the
server log, a traceback in the terminal.
"""

from __future__ import annotations

from http import HTTPStatus

from bentoml.exceptions import BentoMLException

# How much of a value an error message quotes: a million-character id is named in a line, not echoed.
QUOTED_CHARS = 100


def quoted(value: object) -> str:
    """``repr(value)``, cut to its first QUOTED_CHARS characters (and how long it was) when longer."""
    text = repr(value)
    if len(text) <= QUOTED_CHARS:
        return text
    length = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[:QUOTED_CHARS] + "..." + length


class BouncerError(BentoMLException):
    """A request Bouncer will not do as asked (400 unless a subclass says otherwise)."""

    error_code = HTTPStatus.BAD_REQUEST

    def __init__(self, message: str, error_code: HTTPStatus | None = None) -> None:
        super().__init__(message, error_code=error_code or type(self).error_code)


class Invalid(BouncerError, ValueError):
    """A value that cannot be (an unknown class or split, a malformed window, an unreadable image): 400."""


class NotFound(BouncerError, LookupError):
    """Something named does not exist (an image, an event, a model version): 404."""

    error_code = HTTPStatus.NOT_FOUND


class Missing(NotFound, FileNotFoundError):
    """A file or folder a command needs is not there (a dataset folder, a scores manifest): 404."""


class Conflict(BouncerError):
    """The request clashes with what is there (a later change, a running training): 409."""

    error_code = HTTPStatus.CONFLICT


class AlreadyThere(Conflict, FileExistsError):
    """Files a command would overwrite exist (use its --force): 409."""


class TooLarge(BouncerError):
    """More than a limit allows: 413."""

    error_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class Unavailable(BouncerError):
    """Not now, try again (an overloaded batcher, a missing database extension): 503."""

    error_code = HTTPStatus.SERVICE_UNAVAILABLE
