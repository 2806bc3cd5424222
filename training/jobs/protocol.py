"""How the service and the train task's child process talk: files in ``Settings.runtime_dir`` and an flock.

- ``train.lock``: an ``flock`` held for the whole run; the kernel drops it when the
  holder dies, so "is a training running?" never goes stale.
- On PostgreSQL, also a session advisory lock in the label database, held by the child
  for its whole run (:class:`ReplicaTrainingLock`): replicas on other machines share
  that database but not this folder, and still run one training at a time.
- ``train_progress.json``: the latest :class:`~training.progress.TrainingProgress`, plus ``run_id``.
- ``train_result.json``: ``{run_id, state: succeeded|failed|canceled, result|error}``.
- ``train_job.json``: ``{run_id, task_id, pid}`` of the running child, so any worker can cancel it.
- ``train.log``: the child's stdout/stderr.
- ``train_claim.json``: ``{at, pid}`` of a start that was let through and whose task has not taken
  ``train.lock`` yet, written under an ``flock`` on ``train_claim.lock``: two starts at once, one wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.settings import Settings

LOCAL_BUSY = "a training is already running; watch it with train_progress"
REPLICA_BUSY = "a training is already running on another replica of this label database"


class TrainingCanceled(BaseException):
    """Raised in the child by SIGTERM; a BaseException so no ``except Exception`` swallows it."""


@dataclass(frozen=True)
class JobFiles:
    lock: Path
    progress: Path
    result: Path
    log: Path
    job: Path
    claim: Path

    @classmethod
    def of(cls, settings: Settings) -> JobFiles:
        root = settings.runtime_dir
        root.mkdir(parents=True, exist_ok=True)
        return cls(
            root / "train.lock",
            root / "train_progress.json",
            root / "train_result.json",
            root / "train.log",
            root / "train_job.json",
            root / "train_claim.json",
        )


class TrainingLock:
    """An exclusive, non-blocking flock: at most one training per runtime directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing our copy; a child that inherited the fd keeps the lock
            self.fd = None

    def is_held_elsewhere(self) -> bool:
        if self.fd is not None:
            return True
        if not self.acquire():
            return True
        self.release()
        return False


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """A blocking ``flock`` on ``path`` for the block: the critical section of every process on this machine."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class ReplicaTrainingLock:
    """One training across every replica of a PostgreSQL label database (a no-op on SQLite: one machine).

    A session-level ``pg_try_advisory_lock`` on a connection of its own: the server drops
    it when that connection ends, so a killed holder never leaves it stale.
    """

    KEY = 0x426F756E636572  # "Bouncer": the training lock's key in this database

    def __init__(self, database_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        self.engine = create_engine(database_url, poolclass=NullPool)
        self.connection: Any = None

    @property
    def shared(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def acquire(self) -> bool:
        if not self.shared:
            return True
        from sqlalchemy import text

        connection = self.engine.connect()
        if connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.KEY}):
            connection.commit()  # the lock is the session's; nothing else stays open in a transaction
            self.connection = connection
            return True
        connection.close()
        return False

    def release(self) -> None:
        if self.connection is not None:
            self.connection.close()  # ends the session, and with it the lock
            self.connection = None

    def held_elsewhere(self) -> bool:
        if not self.acquire():
            return True
        self.release()
        return False


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
