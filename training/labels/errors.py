"""What can go wrong with a label request: errors callers turn into a 4xx answer."""

from __future__ import annotations


class LabelStoreError(Exception):
    """Base for errors callers should turn into a 4xx answer."""


class NotFoundError(LabelStoreError, KeyError):
    """Something named by id does not exist (a 404)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class UnknownImageError(NotFoundError):
    pass


class UnknownEventError(NotFoundError):
    pass


class UnknownLabelError(LabelStoreError, ValueError):
    pass


class UndoConflictError(LabelStoreError):
    """Undoing would overwrite a later change, or the event was already undone."""
