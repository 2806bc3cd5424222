"""Schema migrations of the label database: real SQLite files, a database the previous release made, real processes."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event, text

from training.labels.errors import UndoConflictError
from training.labels.migrate import LabelDatabaseSchemaError, alembic_config, head_revision, migration_transaction
from training.labels.schema import Base
from training.labels.store import LabelStore
from training.registry.promotions import Promotion, serving

PROJECT = Path(__file__).resolve().parents[2]
PREVIOUS_RELEASE_DDL = Path(__file__).with_name("fixtures") / "labels_1b62949.sql"

# What the previous release wrote (SQLAlchemy keeps SQLite datetimes as text, without the zone).
PREVIOUS_RELEASE_ROWS = """
INSERT INTO classes (name) VALUES ('cat'), ('dog');
INSERT INTO images (image_id, path, split, folder_label, label, sha256, size, mtime_ns, present) VALUES
    ('a1', 'train/cat/1.png', 'train', 'cat', 'dog', 'aa', 101, 1700000000000000001, 1),
    ('b2', 'train/dog/2.png', 'train', 'dog', 'dog', 'bb', 102, 1700000000000000002, 1),
    ('c3', 'test/cat/3.png', 'test', 'cat', 'cat', 'cc', 103, 1700000000000000003, 1),
    ('d4', 'train/cat/4.png', 'train', 'cat', 'cat', 'dd', 104, 1700000000000000004, 0);
INSERT INTO label_events (event_id, kind, created_at, actor, reason, reverts_event_id) VALUES
    (1, 'relabel', '2026-11-20 10:00:00.000000', 'alice', 'they are dogs', NULL),
    (2, 'undo', '2026-11-20 10:05:00.000000', 'bob', 'undo event 1', 1),
    (3, 'relabel', '2026-11-20 10:10:00.000000', 'alice', 'only this one', NULL);
INSERT INTO label_changes (id, event_id, image_id, old_label, new_label) VALUES
    (1, 1, 'a1', 'cat', 'dog'), (2, 1, 'c3', 'cat', 'dog'),
    (3, 2, 'a1', 'dog', 'cat'), (4, 2, 'c3', 'dog', 'cat'),
    (5, 3, 'a1', 'cat', 'dog');
INSERT INTO promotions (id, model_name, tag, created_at, actor, reason) VALUES
    (1, 'bouncer', 'bouncer:first', '2026-11-19 09:00:00.000000', 'train', 'first model'),
    (2, 'bouncer', 'bouncer:second', '2026-11-21 09:00:00.000000', 'carol', 'rollback test');
"""


def run_script(path: Path, script: str) -> None:
    """Run SQL statements on the SQLite file with the plain driver, committed."""
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(script)


def query(path: Path, statement: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(statement).fetchall()


def previous_release_database(path: Path) -> Path:
    """A label database as the release before migrations left it: its DDL, then a curated history."""
    run_script(path, PREVIOUS_RELEASE_DDL.read_text() + PREVIOUS_RELEASE_ROWS)
    return path


def schema_of(path: Path) -> set[tuple[object, ...]]:
    """Every table and index with its CREATE statement (whitespace normalised), Alembic's own table left out."""
    rows = query(path, "SELECT type, name, sql FROM sqlite_master WHERE tbl_name != 'alembic_version'")
    return {(kind, name, re.sub(r"\s+", " ", str(statement))) for kind, name, statement in rows}


def differences_from_the_code(url: str) -> list[object]:
    """What Alembic's autogenerate would change to make the database match ``Base.metadata`` (empty: it matches)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()


def rows(url: str, statement: str) -> list[tuple[object, ...]]:
    """``statement``'s rows, through a throw-away engine: the same for SQLite and PostgreSQL."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(statement))]
    finally:
        engine.dispose()


def stamped_revision(url: str) -> list[object]:
    return [version for (version,) in rows(url, "SELECT version_num FROM alembic_version")]


@pytest.fixture(params=["sqlite", "postgresql"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database nobody opened yet: an SQLite file, or an empty PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'labels.db'}"
        return
    yield request.getfixturevalue("postgres_database")


@contextmanager
def statements_sent() -> Iterator[list[str]]:
    """Every SQL statement any engine sends while the block runs (connection PRAGMAs go to the driver directly)."""
    sent: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        sent.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_a_new_database_is_migrated_to_exactly_the_schema_of_the_code(new_database: str) -> None:
    LabelStore(new_database).close()
    assert stamped_revision(new_database) == [head_revision()]
    assert differences_from_the_code(new_database) == []


@pytest.mark.parametrize("revision", ["0001", "0002"])
def test_a_database_from_before_migrations_is_stamped_by_its_tables_then_upgraded(
    new_database: str, revision: str
) -> None:
    """What create_all left: the tables of that revision and no alembic_version (see the SQLite fixture test too)."""
    engine = create_engine(new_database)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)
        connection.execute(text("DROP TABLE alembic_version"))
        connection.execute(text("INSERT INTO classes (name) VALUES ('cat')"))
    engine.dispose()
    with LabelStore(new_database) as store:
        assert store.queries.classes() == ["cat"]
        assert uuid.UUID(store.dataset_id)
    assert stamped_revision(new_database) == [head_revision()]
    assert differences_from_the_code(new_database) == []


def test_revision_1_makes_exactly_the_previous_release_schema(tmp_path: Path) -> None:
    migrated = tmp_path / "migrated.db"
    engine = create_engine(f"sqlite:///{migrated}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
    engine.dispose()
    assert schema_of(migrated) == schema_of(previous_release_database(tmp_path / "previous.db"))


def test_a_previous_release_database_keeps_labels_history_and_promotions(tmp_path: Path) -> None:
    path = previous_release_database(tmp_path / "labels.db")
    url = f"sqlite:///{path}"

    with LabelStore(url) as store:
        assert stamped_revision(url) == [head_revision()]
        assert differences_from_the_code(url) == []
        dataset_id = store.dataset_id
        assert uuid.UUID(dataset_id)

        assert store.queries.classes() == ["cat", "dog"]
        assert [(r.image_id, r.path, r.split, r.folder_label, r.label) for r in store.queries.images()] == [
            ("c3", "test/cat/3.png", "test", "cat", "cat"),
            ("a1", "train/cat/1.png", "train", "cat", "dog"),
            ("b2", "train/dog/2.png", "train", "dog", "dog"),
        ]  # d4 was removed from disk: still in the database, still hidden

        history = store.queries.history()
        assert [(e.event_id, e.kind, e.actor, e.reason) for e in history] == [
            (3, "relabel", "alice", "only this one"),
            (2, "undo", "bob", "undo event 1"),
            (1, "relabel", "alice", "they are dogs"),
        ]
        assert [(e.reverts_event_id, e.reverted_by_event_id) for e in history] == [(None, None), (1, None), (None, 2)]
        assert [[(c.image_id, c.old_label, c.new_label) for c in e.changes] for e in history] == [
            [("a1", "cat", "dog")],
            [("a1", "dog", "cat"), ("c3", "dog", "cat")],
            [("a1", "cat", "dog"), ("c3", "cat", "dog")],
        ]
        assert history[2].created_at.isoformat() == "2026-11-20T10:00:00+00:00"
        assert [e.event_id for e in store.queries.history(image_id="c3")] == [2, 1]

        assert serving(store.database, "bouncer") == Promotion(
            "bouncer:second", datetime(2026, 11, 21, 9), "carol", "rollback test"
        )

        # reviewed: in a relabel or confirm no undo reverted (a1 by event 3; c3's event 1 was undone)
        assert query(path, "SELECT image_id, reviewed FROM images ORDER BY image_id") == [
            ("a1", 1),
            ("b2", 0),
            ("c3", 0),
            ("d4", 0),
        ]

        csv_path = tmp_path / "labels.csv"
        store.csv.export(csv_path)
        assert csv_path.read_text().splitlines() == [
            "path,image_id,split,label,sha256",
            "test/cat/3.png,c3,test,cat,cc",
            "train/cat/1.png,a1,train,dog,aa",
            "train/dog/2.png,b2,train,dog,bb",
        ]

        # The trail goes on where it stopped: undo links and ids continue, the old undo still guards.
        with pytest.raises(UndoConflictError, match="already undone by event 2"):
            store.events.undo(1)
        assert store.events.undo(3, actor="dave").event_id == 4
        assert store.queries.get("a1").label == "cat"
        assert store.queries.history(limit=1)[0].reverts_event_id == 3

    schema_version = query(path, "PRAGMA schema_version")
    with statements_sent() as sent, LabelStore(url) as again:
        assert again.dataset_id == dataset_id
    assert query(path, "PRAGMA schema_version") == schema_version  # no DDL the second time
    assert query(path, "SELECT count(*) FROM dataset") == [(1,)]
    assert [s for s in sent if "alembic_version" in s] == ["SELECT version_num FROM alembic_version"]
    assert not [s for s in sent if s.startswith(("BEGIN", "CREATE", "ALTER", "INSERT", "UPDATE"))]


def test_a_revision_may_copy_a_table_that_others_reference(tmp_path: Path) -> None:
    """SQLite changes a column by copying the table (batch mode): images and label_events have children."""
    url = f"sqlite:///{previous_release_database(tmp_path / 'labels.db')}"
    with LabelStore(url) as store:
        with migration_transaction(store.database.engine) as connection:
            operations = Operations(MigrationContext.configure(connection))
            for table in ("images", "label_events"):
                with operations.batch_alter_table(table, recreate="always") as batch:
                    batch.add_column(sa.Column("note", sa.String(64), nullable=True))
        assert [e.event_id for e in store.queries.history(image_id="a1")] == [3, 2, 1]
        assert query(tmp_path / "labels.db", "SELECT count(*) FROM images WHERE note IS NULL") == [(4,)]
        with store.database.engine.connect() as connection:  # back on for the store's own writes
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1

        dangling = pytest.raises(LabelDatabaseSchemaError, match="foreign keys point nowhere")
        with dangling, migration_transaction(store.database.engine) as connection:
            connection.execute(text("DELETE FROM images WHERE image_id = 'a1'"))  # its changes would dangle
        assert store.queries.get("a1").label == "dog"  # rolled back


def test_a_database_at_head_costs_one_query_and_no_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    LabelStore(url).close()
    with statements_sent() as sent, LabelStore(url):
        pass
    # The version check, then the store's read of the dataset identity; no BEGIN IMMEDIATE.
    assert [" ".join(statement.split()) for statement in sent] == [
        "SELECT version_num FROM alembic_version",
        "SELECT dataset.dataset_id FROM dataset WHERE dataset.id = ?",
    ]


def test_processes_opening_a_new_database_at_once_all_get_a_migrated_store(new_database: str, tmp_path: Path) -> None:
    """Three processes open the same new database together: one migrates, the others wait and use it."""
    url = new_database
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import pathlib, sys, time
        from training.labels.store import LabelStore
        from training.registry.promotions import promote
        pathlib.Path(sys.argv[1]).touch()  # ready
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.001)
        with LabelStore({url!r}) as store:
            promote(store.database, "bouncer", "bouncer:" + sys.argv[2], actor=sys.argv[2])
            print(store.dataset_id)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT), os.environ.get("PYTHONPATH")]))}
    names = ["one", "two", "three"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / f"ready-{name}"), name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready-{name}").exists() for name in names) and time.monotonic() < deadline:
            time.sleep(0.01)  # each has imported everything: they open the database within a millisecond
        go.touch()
        outputs = [w.communicate(timeout=120) for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert [w.returncode for w in workers] == [0, 0, 0], [err for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1  # one identity, made once
    assert stamped_revision(url) == [head_revision()]
    assert differences_from_the_code(url) == []
    assert rows(url, "SELECT count(*) FROM promotions") == [(3,)]


def test_a_database_of_a_newer_release_is_refused_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "labels.db"
    LabelStore(f"sqlite:///{path}").close()
    run_script(path, "UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(LabelDatabaseSchemaError, match="revision 9999, which this Bouncer does not know"):
        LabelStore(f"sqlite:///{path}")
    assert stamped_revision(f"sqlite:///{path}") == ["9999"]


def test_a_database_with_only_some_of_the_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.db"
    run_script(path, "CREATE TABLE images (image_id VARCHAR(32) PRIMARY KEY); CREATE TABLE notes (text TEXT);")
    # notes is someone else's table: not counted
    with pytest.raises(LabelDatabaseSchemaError, match="some of Bouncer's tables \\(images\\) but not classes"):
        LabelStore(f"sqlite:///{path}")
