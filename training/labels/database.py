"""The label database's connection core: engines, read sessions, write transactions, the dataset's identity.

SQLite (WAL mode, ``BEGIN IMMEDIATE`` writes) by default so several worker processes can
share one file; any SQLAlchemy URL (e.g. PostgreSQL) works too. Every job over the database
(:mod:`~training.labels.queries`, :mod:`~training.labels.events`, the folder sync, the
registry's promotions) reads in :meth:`Database.read` and writes in :meth:`Database.write`.

``dataset_id`` names the dataset this database curates: a UUID made when the database is
created, recorded with every model trained on it (model metadata), so a model store shared
by several datasets never serves one dataset's model for another.
"""

from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from training.labels.migrate import upgrade_to_head
from training.labels.schema import DatasetRow

# Ids bound in one IN (...): SQLite refuses over 250,000 variables (a 500 once), PostgreSQL over 65,535.
IDS_PER_QUERY = 10_000


def _sqlite_engine(url: str, *, for_writes: bool) -> Engine:
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        if for_writes:
            dbapi_connection.isolation_level = None  # let us issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    if for_writes:

        @event.listens_for(engine, "begin")
        def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
            # Take the write lock up front: a deferred transaction that reads and then
            # writes can fail with SQLITE_BUSY when another worker wrote in between.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class WriterTurn:
    """One writer at a time across threads and processes, for a SQLite file: waiters wake at once.

    SQLite alone makes a second writer poll (its busy handler sleeps in growing steps of up
    to 100 ms, so a waiter wakes late): with 16 clients relabelling over 2 workers, relabel's
    p99 was 0.5-1 s (benchmarks/soak.py, issue 14). An flock on a file beside the database is
    handed on by the kernel the moment it is released, and dropped if its holder dies.
    Re-entrant within a thread. ``path`` None (an in-memory database): the thread lock alone.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._thread_turn = threading.RLock()
        self._depth = 0  # how deep the holding thread is nested
        self._fd: int | None = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._thread_turn:
            if self._depth == 0 and self.path is not None:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._thread_turn:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _writer_turn_file(url: str) -> Path | None:
    """``labels.db-writer`` beside a SQLite file (like its ``-wal`` and ``-shm``); None for an in-memory one."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(f"{database}-writer")


class Database:
    """One label database, upgraded to the newest schema when opened; :meth:`close` when done."""

    def __init__(self, url: str) -> None:
        self.writer_turn: WriterTurn | None = None  # PostgreSQL: its row locks order writers, no polling
        if url.startswith("sqlite"):
            self.engine = _sqlite_engine(url, for_writes=True)
            read_engine = _sqlite_engine(url, for_writes=False)
            self.writer_turn = WriterTurn(_writer_turn_file(url))
        else:
            self.engine = read_engine = create_engine(url, pool_pre_ping=True)
        try:  # every opener upgrades (one query when at head): `bouncer` and each worker start on the newest schema
            upgrade_to_head(self.engine, reads=read_engine)
        except BaseException:
            self.engine.dispose()
            read_engine.dispose()
            raise
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(read_engine, expire_on_commit=False)
        self._read_engine = read_engine
        self.dataset_id: str = self._existing_dataset_id() or self._create_dataset_id()
        """This dataset's identity (a UUID), recorded in the metadata of every model trained on it."""

    @property
    def url(self) -> str:
        """The database's URL (password masked): what caches of its rows are keyed on."""
        return str(self.engine.url)

    def read(self) -> Session:
        """A read session (``with database.read() as session``)."""
        return self._reader()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction; on SQLite, after this writer's turn (:class:`WriterTurn`)."""
        if self.writer_turn is None:
            with self._writer.begin() as session:
                yield session
            return
        with self.writer_turn(), self._writer.begin() as session:
            yield session

    def _existing_dataset_id(self) -> str | None:
        with self.read() as session:
            return session.scalar(select(DatasetRow.dataset_id).where(DatasetRow.id == 1))

    def _create_dataset_id(self) -> str:
        """Made once, by whichever process opens the database first (a database from before gets one now)."""
        try:
            with self.write() as session:
                if session.get(DatasetRow, 1) is None:  # under the write lock: no other process made it meanwhile
                    session.add(DatasetRow(id=1, dataset_id=str(uuid.uuid4()), created_at=datetime.now(UTC)))
        except IntegrityError:  # a server database without a write lock: another process inserted it first
            pass
        dataset_id = self._existing_dataset_id()
        if dataset_id is None:  # just written, by us or by another process: cannot happen
            raise RuntimeError("the dataset identity row vanished right after it was written")
        return dataset_id

    def close(self) -> None:
        self.engine.dispose()
        self._read_engine.dispose()
        if self.writer_turn is not None:
            self.writer_turn.close()


def current_revision(session: Session) -> int:
    """The dataset's revision as ``session`` sees it (see :func:`training.labels.events.bump_revision`)."""
    return int(session.scalar(select(DatasetRow.revision).where(DatasetRow.id == 1)) or 0)
