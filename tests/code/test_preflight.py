"""A server that cannot serve its dataset says why before any worker starts, and writes nothing.

Every served test passes through the check on its way up (the service's on_deployment hook);
these are the refusals, on real folders and databases. ``tests/container/`` shows them as a
container's one log line and exit code, with the cases that need a non-root user.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import SHAPES, digest_tree, write_mixed_formats
from training.jobs.processes import free_port
from training.labels.store import open_store
from training.labels.sync import import_folder
from training.registry.preflight import CONNECT_TIMEOUT_S, CannotServe, _mount_point, check_can_serve
from training.settings import Settings


@pytest.fixture
def imported(settings: Settings) -> Settings:
    """A small dataset with its labels.db, and no model trained on it."""
    for kind in SHAPES:
        write_mixed_formats(settings.data_dir / "train" / kind, kind, 3)
    with open_store(settings) as store:
        import_folder(settings, store)
    return settings


def refusal(settings: Settings) -> str:
    with pytest.raises(CannotServe) as refused:
        check_can_serve(settings)
    return str(refused.value)


def test_a_missing_data_folder_is_named_and_not_created(settings: Settings) -> None:
    expected = f"the data folder BOUNCER_DATA_DIR={settings.data_dir} does not exist: point BOUNCER_DATA_DIR at it"
    assert refusal(settings) == expected
    assert not settings.data_dir.exists()


def test_a_folder_never_imported_gets_no_new_label_database(settings: Settings) -> None:
    write_mixed_formats(settings.data_dir / "train" / "ring", "ring", 2)
    assert "has no labels.db: its images were never imported" in refusal(settings)
    assert not (settings.data_dir / "labels.db").exists()


def test_a_label_database_from_a_newer_bouncer_is_left_as_it_is(imported: Settings) -> None:
    with closing(sqlite3.connect(imported.data_dir / "labels.db")) as db, db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    before = digest_tree(imported.data_dir)
    assert "is at schema revision 9999, which this Bouncer does not know" in refusal(imported)
    assert digest_tree(imported.data_dir) == before


def test_an_unreachable_postgresql_is_named_without_its_password(imported: Settings) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg://bouncer:secret@127.0.0.1:{port}/bouncer"
    started = time.monotonic()
    message = refusal(imported.model_copy(update={"database_url": url}))
    assert message.startswith(f"cannot reach the database postgresql+psycopg://bouncer:***@127.0.0.1:{port}/bouncer: ")
    assert "secret" not in message
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 5


def test_no_model_of_this_dataset_says_to_train_one(imported: Settings) -> None:
    assert "train one with `bouncer train`" in refusal(imported)


def test_in_a_container_the_data_folder_must_be_a_volume(imported: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOML_CONTAINERIZED", "true")
    if _mount_point(imported.data_dir) != Path("/"):
        pytest.skip(f"{imported.data_dir} is on a mounted file system here, as a volume would be")
    before = digest_tree(imported.data_dir)
    assert "is not on a volume" in refusal(imported) and "-v /path/to/data:" in refusal(imported)
    assert digest_tree(imported.data_dir) == before
