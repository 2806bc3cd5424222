"""Bring a label database to the newest schema with Alembic when it is opened, whoever opens it first.

The revisions live in ``training/labels/migrations/versions``. Every process that
opens a database (the CLI, each service worker, the train task) calls
:func:`upgrade_to_head`; it costs one query when the database is already at head.
Otherwise the upgrade runs in one transaction under one lock, so concurrent
openers wait for the first and then find nothing to do:

* SQLite: the transaction starts with ``BEGIN IMMEDIATE`` (the store's write engine),
  SQLite's write lock; DDL is transactional there, so a crash leaves the old schema.
* PostgreSQL: ``pg_advisory_xact_lock`` inside the transaction (DDL is transactional too).

A database made before migrations existed has our tables but no ``alembic_version``:
its tables say which revision it is at (see :func:`revision_of_unversioned`); it is
stamped at that revision, then upgraded.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from training.errors import Conflict

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

# Alembic is imported inside functions, under _alembic_logs_quiet: importing it logs INFO lines.
log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
VERSION_TABLE = "alembic_version"  # Alembic's default name
# The tables of the release before migrations (commit 1b62949), and the one revision 0002 adds.
PREVIOUS_RELEASE_TABLES = frozenset({"images", "classes", "label_events", "label_changes", "promotions"})
PREVIOUS_RELEASE_REVISION = "0001"
DATASET_TABLE_REVISION = "0002"
LABEL_REVISION_REVISION = "0003"
IMAGE_REVISION_REVISION = "0004"
PAGING_INDEXES_REVISION = "0005"
# Any constant 64-bit key, the same in every process migrating a Bouncer label database.
_POSTGRES_LOCK_KEY = int.from_bytes(hashlib.sha256(b"bouncer label database").digest()[:8], "big", signed=True)


class LabelDatabaseSchemaError(Conflict, ValueError):
    """The database's schema is not one this Bouncer can upgrade (a newer release's, or not ours)."""


@functools.cache
def script_directory() -> ScriptDirectory:
    """The revisions (read once per process: opening a store should not re-read the files)."""
    with _alembic_logs_quiet():
        from alembic.script import ScriptDirectory

        return ScriptDirectory(str(MIGRATIONS_DIR))


def head_revision() -> str:
    head = script_directory().get_current_head()
    if head is None:  # the package shipped without its versions/ folder
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision stamped in the database; None when it has no ``alembic_version`` table (one query)."""
    try:
        with engine.connect() as connection:
            return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    except DBAPIError:  # no such table: a new database, or one from before migrations
        return None


def upgrade_to_head(engine: Engine, *, reads: Engine | None = None) -> None:
    """Migrate the database to the newest revision unless it is there already.

    ``engine`` runs the upgrade; for SQLite its transactions must begin with
    ``BEGIN IMMEDIATE`` (the label store's write engine does), which is the lock.
    ``reads``: where to check the revision first without taking a lock (default ``engine``).
    """
    head = head_revision()
    if current_revision(reads or engine) == head:
        return
    with _alembic_logs_quiet(), migration_transaction(engine) as connection:
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        current = MigrationContext.configure(connection).get_current_revision()  # again: someone may have been first
        if current == head:
            return
        config = alembic_config(connection)
        if current is None:
            current = revision_of_unversioned(connection)
            if current is not None:
                log.info("label database from before migrations: its tables are revision %s; stamping it", current)
                command.stamp(config, current)
        elif current not in {script.revision for script in script_directory().walk_revisions()}:
            raise LabelDatabaseSchemaError(
                f"the label database {_name(engine)} is at schema revision {current}, which this Bouncer does not "
                f"know (its newest is {head}): it was made by a newer release; upgrade Bouncer"
            )
        log.info("upgrading the label database %s from revision %s to %s", _name(engine), current or "none", head)
        command.upgrade(config, "head")


@contextmanager
def migration_transaction(engine: Engine) -> Iterator[Connection]:
    """The one transaction revisions run in, holding the migration lock until it commits.

    On SQLite, foreign keys are off for its length and checked before the commit:
    changing a column copies the table (``op.batch_alter_table``), and dropping the old
    ``images`` or ``label_events`` would otherwise fail on the rows that reference it
    (SQLite only switches them outside a transaction, and deferring does not help).
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        foreign_keys = _sqlite_pragma(connection, "foreign_keys") if sqlite else None
        if sqlite:
            _sqlite_pragma(connection, "foreign_keys", 0)
        try:
            with connection.begin():
                _lock(connection)
                yield connection
                if sqlite and (dangling := connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                    raise LabelDatabaseSchemaError(
                        f"a migration left rows whose foreign keys point nowhere (table, rowid, parent): {dangling[:5]}"
                    )
        finally:
            if sqlite:
                _sqlite_pragma(connection, "foreign_keys", foreign_keys)


def revision_of_unversioned(connection: Connection) -> str | None:
    """The revision a database without ``alembic_version`` is at, by its tables; None if it has none of ours."""
    ours = set(inspect(connection).get_table_names()) & (PREVIOUS_RELEASE_TABLES | {"dataset"})
    if not ours:
        return None  # new (other applications' tables in the same database are left alone)
    if ours == PREVIOUS_RELEASE_TABLES:
        return PREVIOUS_RELEASE_REVISION
    if ours == PREVIOUS_RELEASE_TABLES | {"dataset"}:
        # a stamp lost from a database at 0003+ (its version table dropped by hand) is read back, not re-applied
        if "revision" in {column["name"] for column in inspect(connection).get_columns("images")}:
            indexes = {index["name"] for index in inspect(connection).get_indexes("images")}
            return PAGING_INDEXES_REVISION if "ix_images_split_present_path" in indexes else IMAGE_REVISION_REVISION
        columns = {column["name"] for column in inspect(connection).get_columns("dataset")}
        return LABEL_REVISION_REVISION if "revision" in columns else DATASET_TABLE_REVISION
    missing = sorted(PREVIOUS_RELEASE_TABLES - ours)
    raise LabelDatabaseSchemaError(
        f"the label database has some of Bouncer's tables ({', '.join(sorted(ours))}) but not "
        f"{', '.join(missing)}: no release made that schema, so it is not upgraded"
    )


def _lock(connection: Connection) -> None:
    """Hold the lock that makes this transaction the only migrator until it ends."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _POSTGRES_LOCK_KEY})
    elif dialect == "sqlite" and not connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
        # A deferred BEGIN takes no lock (and pysqlite's default commits DDL at once):
        # two processes would both create the tables.
        raise ValueError("upgrade_to_head needs an SQLite engine whose transactions begin with BEGIN IMMEDIATE")


def _sqlite_pragma(connection: Connection, name: str, value: int | None = None) -> int:
    """Read or set a pragma through the driver: SQLAlchemy would begin a transaction (BEGIN IMMEDIATE) first."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if value is not None:
            cursor.execute(f"PRAGMA {name}={int(value)}")
        return int(cursor.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        cursor.close()


@contextmanager
def _alembic_logs_quiet() -> Iterator[None]:
    """Alembic's INFO lines (plugins set up on import, "Will assume non-transactional DDL", wrong
    under our transaction) tell a user nothing ours do not; warnings still show."""
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic_log.setLevel(level)


def _name(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration, built here: the revisions' folder and the connection for ``env.py``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config
