"""Schema migrations of the label database: real SQLite files, real processes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, event

from training.labels.migrate import LabelDatabaseSchemaError, head_revision
from training.labels.schema import Base
from training.labels.store import LabelStore

PROJECT = Path(__file__).resolve().parents[2]


def run_script(path: Path, script: str) -> None:
    """Run SQL statements on the SQLite file with the plain driver, committed."""
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.executescript(script)


def query(path: Path, statement: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(statement).fetchall()


def differences_from_the_code(url: str) -> list[object]:
    """What Alembic's autogenerate would change to make the database match ``Base.metadata`` (empty: it matches)."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()


def stamped_revision(path: Path) -> list[object]:
    return [version for (version,) in query(path, "SELECT version_num FROM alembic_version")]


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


def test_a_new_database_is_migrated_to_exactly_the_schema_of_the_code(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    LabelStore(url).close()
    assert stamped_revision(tmp_path / "labels.db") == [head_revision()]
    assert differences_from_the_code(url) == []


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


def test_processes_opening_a_new_database_at_once_all_get_a_migrated_store(tmp_path: Path) -> None:
    """Three processes start on the same missing SQLite file together: one migrates, the others wait and use it."""
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        import pathlib, sys, time
        from training.labels.store import LabelStore
        pathlib.Path(sys.argv[1]).touch()  # ready
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.001)
        with LabelStore({url!r}) as store:
            store.promote("bouncer", "bouncer:" + sys.argv[2], actor=sys.argv[2])
            print(store.dataset_id)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
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
    assert stamped_revision(tmp_path / "labels.db") == [head_revision()]
    assert differences_from_the_code(url) == []
    with LabelStore(url) as store:
        assert store.serving("bouncer") is not None
    assert query(tmp_path / "labels.db", "SELECT count(*) FROM promotions") == [(3,)]


def test_a_database_of_a_newer_release_is_refused_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "labels.db"
    LabelStore(f"sqlite:///{path}").close()
    run_script(path, "UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(LabelDatabaseSchemaError, match="revision 9999, which this Bouncer does not know"):
        LabelStore(f"sqlite:///{path}")
    assert stamped_revision(path) == ["9999"]


def test_a_database_with_only_some_of_the_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.db"
    run_script(path, "CREATE TABLE images (image_id VARCHAR(32) PRIMARY KEY); CREATE TABLE notes (text TEXT);")
    # notes is someone else's table: not counted
    with pytest.raises(LabelDatabaseSchemaError, match="some of Bouncer's tables \\(images\\) but not classes"):
        LabelStore(f"sqlite:///{path}")
