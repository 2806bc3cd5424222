"""What can go wrong with a label request: errors callers turn into a 4xx answer."""

from __future__ import annotations

from training.errors import BouncerError, Conflict, Invalid, NotFound


class LabelStoreError(BouncerError):
    """Base for errors callers should turn into a 4xx answer."""


class NotFoundError(LabelStoreError, NotFound, KeyError):
    """Something named by id does not exist (a 404)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class UnknownImageError(NotFoundError):
    pass


class UnknownEventError(NotFoundError):
    pass


class UnknownLabelError(LabelStoreError, Invalid):
    pass


class UndoConflictError(LabelStoreError, Conflict):
    """Undoing would overwrite a later change, or the event was already undone."""


class InvalidTextError(LabelStoreError, Invalid):
    """A free-text value the store will not keep: too long, or with NUL characters (PostgreSQL refuses them)."""


REASON_MAX = 2000  # characters; the columns hold 2048
ACTOR_MAX = 200


def checked_text(value: str, name: str, limit: int) -> str:
    """``value`` if every database can store it as given; InvalidTextError naming ``name`` otherwise."""
    if "\x00" in value:
        raise InvalidTextError(f"{name} must not contain NUL characters")
    if len(value) > limit:
        raise InvalidTextError(f"{name} is {len(value)} characters; at most {limit}")
    return value


def check_reason_and_actor(reason: str, actor: str) -> None:
    """Refused before any write: a 1 MB reason or a NUL character (PostgreSQL rejects it) is a 400, not a 500."""
    checked_text(reason, "reason", REASON_MAX)
    checked_text(actor, "actor", ACTOR_MAX)
