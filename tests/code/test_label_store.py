"""The label store against a real folder of real images and a real SQLite file."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import SHAPES, write_mixed_formats
from training.labels.errors import UndoConflictError, UnknownEventError, UnknownImageError, UnknownLabelError
from training.labels.export import data_version_of, labels_csv_text
from training.labels.store import LabelStore, open_store
from training.labels.sync import import_folder
from training.registry.promotions import promote, serving
from training.settings import Settings


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Every test here runs on SQLite and on PostgreSQL (a fresh database each time)."""
    base = Settings(data_dir=tmp_path / "data", mlflow_dir=tmp_path / "mlruns")
    if request.param == "sqlite":
        return base
    return base.model_copy(update={"database_url": request.getfixturevalue("postgres_database")})


@pytest.fixture
def store(settings: Settings, shapes_dataset: Path) -> LabelStore:
    store = open_store(settings)
    import_folder(settings, store)
    yield store
    store.close()


def test_import_reads_every_format_and_reports_broken_files(settings: Settings, shapes_dataset: Path) -> None:
    store = open_store(settings)
    report = import_folder(settings, store)
    assert report.added == len(SHAPES) * 14
    skipped = dict(report.skipped)
    assert set(skipped) == {"train/square/notes.jpg", "train/ring/truncated.png"}
    assert "not an image" in skipped["train/square/notes.jpg"]
    assert store.queries.classes() == sorted(SHAPES)
    suffixes = {Path(r.path).suffix for r in store.queries.images()}
    assert suffixes == {".png", ".jpg", ".bmp"}
    record = store.queries.images(split="test", label="ring")[0]
    assert (record.split, record.label, record.folder_label) == ("test", "ring", "ring")
    assert record.path.startswith("test/ring/")
    assert settings.labels_csv.exists()
    for split, label in [(None, None), ("train", None), ("test", "ring")]:  # what paged lists report as their total
        assert store.queries.count(split=split, label=label) == len(store.queries.images(split=split, label=label))


def test_sqlite_store_runs_in_wal_mode(store: LabelStore, settings: Settings) -> None:
    if settings.database_url:
        pytest.skip("SQLite only")
    with sqlite3.connect(settings.data_dir / "labels.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_relabel_undo_and_audit_history(store: LabelStore) -> None:
    squares = [r.image_id for r in store.queries.images(split="train", label="square")[:3]]
    ring = store.queries.images(split="train", label="ring")[0].image_id
    result = store.events.relabel([*squares, ring], "ring", reason="they are rings", actor="alice")
    assert [c.image_id for c in result.changed] == squares
    assert {(c.old_label, c.new_label) for c in result.changed} == {("square", "ring")}
    assert result.unchanged == [ring]
    assert {store.queries.get(i).label for i in squares} == {"ring"}

    event = store.queries.history(image_id=squares[0])[0]
    assert (event.event_id, event.kind, event.actor, event.reason) == (
        result.event_id,
        "relabel",
        "alice",
        "they are rings",
    )
    assert event.changes[0].old_label == "square"
    assert event.created_at.tzinfo is not None

    undone = store.events.undo(result.event_id, actor="bob")
    assert {store.queries.get(i).label for i in squares} == {"square"}
    newest = store.queries.history(limit=2)
    assert [e.kind for e in newest] == ["undo", "relabel"]
    assert newest[0].reverts_event_id == result.event_id
    assert newest[1].reverted_by_event_id == undone.event_id
    with pytest.raises(UndoConflictError, match="already undone"):
        store.events.undo(result.event_id)


def test_undo_refuses_to_overwrite_a_later_relabel(store: LabelStore) -> None:
    image_id = store.queries.images(split="train", label="cross")[0].image_id
    first = store.events.relabel([image_id], "ring")
    store.events.relabel([image_id], "square")
    with pytest.raises(UndoConflictError, match="later event"):
        store.events.undo(first.event_id)
    assert store.queries.get(image_id).label == "square"


def test_bad_relabels_change_nothing(store: LabelStore) -> None:
    before = store.csv.text()
    good = store.queries.images(split="train")[0].image_id
    with pytest.raises(UnknownLabelError, match="unknown label 'bunny'"):
        store.events.relabel([good], "bunny")
    with pytest.raises(UnknownImageError, match="nope"):
        store.events.relabel([good, "nope"], "ring")
    with pytest.raises(UnknownEventError, match="9999"):
        store.events.undo(9999)
    assert store.csv.text() == before
    assert store.queries.history() == []


def test_rescan_keeps_relabels_and_picks_up_changes(store: LabelStore, settings: Settings) -> None:
    data = settings.data_dir
    target = store.queries.images(split="train", label="cross")[0]
    store.events.relabel([target.image_id], "ring", reason="curated")
    removed = store.queries.images(split="train", label="square")[0]
    stash = data.parent / "stash.bin"
    shutil.move(data / removed.path, stash)
    write_mixed_formats(data / "train" / "ring", "ring", 2, start=500)

    report = import_folder(settings, store)
    assert (report.added, report.removed) == (2, 1)
    assert store.queries.get(target.image_id).label == "ring"
    with pytest.raises(UnknownImageError):
        store.queries.get(removed.image_id)

    # a user relabels by moving the file between class folders: same id, recorded
    moved = store.queries.images(split="train", label="square")[0]
    new_path = data / "train" / "cross" / Path(moved.path).name
    shutil.move(data / moved.path, new_path)
    # the removed file comes back: its id and label come back with it
    shutil.move(stash, data / removed.path)
    report = import_folder(settings, store)
    assert (report.moved, report.restored) == (1, 1)
    assert store.queries.get(moved.image_id).label == "cross"
    assert store.queries.get(moved.image_id).path == f"train/cross/{new_path.name}"
    assert store.queries.history(image_id=moved.image_id)[0].kind == "move"
    assert store.queries.get(removed.image_id).label == "square"
    assert store.queries.get(target.image_id).label == "ring"


def test_labels_csv_is_deterministic_and_a_relabel_is_a_one_line_diff(
    store: LabelStore, settings: Settings, tmp_path: Path
) -> None:
    first = settings.labels_csv.read_text()
    other = Settings(data_dir=settings.data_dir, database_url=f"sqlite:///{tmp_path / 'other.db'}")
    second_store = open_store(other)
    import_folder(other, second_store)
    assert settings.labels_csv.read_text() == first  # a fresh import writes identical bytes
    lines = first.splitlines()
    assert lines[0] == "path,image_id,split,label,sha256"
    assert lines[1:] == sorted(lines[1:])

    version = store.csv.data_version()
    image_id = store.queries.images(split="train", label="ring")[0].image_id
    store.events.relabel([image_id], "cross")
    new_version = store.csv.export(settings.labels_csv)
    after = settings.labels_csv.read_text().splitlines()
    diff = [(a, b) for a, b in zip(lines, after, strict=True) if a != b]
    assert len(diff) == 1 and image_id in diff[0][1] and ",cross," in diff[0][1]
    assert new_version != version
    second_store.close()


def test_relabels_from_several_processes_are_all_kept(store: LabelStore, settings: Settings) -> None:
    """Two writer processes hammer the same database: no lost update, no 'database is locked'."""
    ids = [r.image_id for r in store.queries.images(split="train")][:20]
    script = textwrap.dedent(
        f"""
        import sys
        from training.labels.store import LabelStore
        store = LabelStore({settings.label_db_url!r})
        ids = sys.argv[2].split(",")
        for round_ in range(15):
            for image_id in ids:
                store.events.relabel([image_id], sys.argv[1], actor=sys.argv[1])
                store.events.relabel([image_id], "square" if sys.argv[1] != "square" else "cross")
        store.events.relabel(ids, sys.argv[1], actor="final-" + sys.argv[1])
        """
    )
    halves = [ids[:10], ids[10:]]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    workers = [
        subprocess.Popen([sys.executable, "-c", script, label, ",".join(half)], env=env)
        for label, half in zip(("ring", "cross"), halves, strict=True)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    assert {store.queries.get(i).label for i in halves[0]} == {"ring"}
    assert {store.queries.get(i).label for i in halves[1]} == {"cross"}
    assert len(store.queries.history(limit=10_000)) == 2 * (10 * 15 * 2 + 1)


def test_confirm_marks_images_reviewed_until_undone(store: LabelStore) -> None:
    squares = [r.image_id for r in store.queries.images(split="train", label="square")[:2]]
    csv_before = store.csv.text()
    confirmed = store.events.confirm(squares, reason="looked right", actor="reviewer")
    assert [(c.image_id, c.old_label, c.new_label) for c in confirmed.confirmed] == [
        (i, "square", "square") for i in squares
    ]
    assert store.queries.reviewed_ids() == set(squares)
    assert store.csv.text() == csv_before  # a confirmation changes no label, nor the data version
    [event] = store.queries.history(image_id=squares[0], limit=1)
    assert (event.kind, event.reason, event.actor) == ("confirm", "looked right", "reviewer")

    undone = store.events.undo(confirmed.event_id)
    assert store.queries.reviewed_ids() == set()  # taking the decision back puts them back in the queue
    assert [c.new_label for c in undone.changed] == ["square", "square"]
    with pytest.raises(UnknownImageError):
        store.events.confirm(["nope"])


def test_an_undone_relabel_is_no_longer_a_decision(store: LabelStore) -> None:
    ring = store.queries.images(split="train", label="ring")[0].image_id
    relabel = store.events.relabel([ring], "cross")
    assert store.queries.reviewed_ids() == {ring}
    store.events.undo(relabel.event_id)
    assert store.queries.reviewed_ids() == set()


def test_undo_refuses_to_take_back_a_label_a_later_confirm_vouched_for(store: LabelStore) -> None:
    cross = store.queries.images(split="train", label="cross")[0].image_id
    relabel = store.events.relabel([cross], "ring")
    confirm = store.events.confirm([cross])
    with pytest.raises(UndoConflictError, match=f"confirmed by the later event {confirm.event_id}"):
        store.events.undo(relabel.event_id)
    store.events.undo(confirm.event_id)  # take the confirmation back first: then the relabel can go
    store.events.undo(relabel.event_id)
    assert store.queries.get(cross).label == "cross"


def test_the_revision_moves_with_every_change_and_only_then(store: LabelStore, settings: Settings) -> None:
    start = store.queries.revision()
    version = store.csv.data_version()
    import_folder(settings, store)  # nothing changed on disk
    assert store.queries.revision() == start and store.csv.data_version() == version
    cross = store.queries.images(split="train", label="cross")[0].image_id
    relabel = store.events.relabel([cross], "ring")
    assert store.queries.revision() == start + 1 and store.csv.data_version() != version
    store.events.relabel([cross], "ring")  # no change, no event: same revision
    assert store.queries.revision() == start + 1
    store.events.confirm([cross])
    store.events.undo(relabel.event_id + 1)  # the confirm
    store.events.undo(relabel.event_id)
    assert store.queries.revision() == start + 4 and store.csv.data_version() == version
    new = settings.data_dir / "train" / "ring" / "extra.png"
    shutil.copy(next((settings.data_dir / "train" / "cross").glob("*.png")), new)
    import_folder(settings, store)
    assert store.queries.revision() == start + 5


def test_text_no_database_can_keep_is_refused_before_any_write(store: LabelStore) -> None:
    from training.labels.errors import InvalidTextError

    image_id = store.queries.images(split="train")[0].image_id
    revision = store.queries.revision()
    for reason, problem in [("x" * 2001, "reason is 2001 characters; at most 2000"), ("a\x00b", "NUL")]:
        with pytest.raises(InvalidTextError, match=problem):
            store.events.relabel([image_id], "ring", reason=reason, actor="t")
        with pytest.raises(InvalidTextError, match=problem):
            store.events.confirm([image_id], reason=reason, actor="t")
    with pytest.raises(InvalidTextError, match="actor"):
        promote(store.database, "bouncer", "bouncer:x", actor="\x00")
    assert store.queries.revision() == revision and store.queries.history() == []
    assert serving(store.database, "bouncer") is None


def test_a_stale_labels_csv_is_repaired_from_the_database(store: LabelStore, settings: Settings) -> None:
    """What a crash between a commit and the export leaves: the server's start makes them agree again."""
    assert store.csv.repair() is False  # already in step
    image_id = store.queries.images(split="train", label="square")[0].image_id
    store.csv.path = None  # the export that the crash skipped
    store.events.relabel([image_id], "ring", reason="before the crash", actor="t")
    store.csv.path = settings.labels_csv
    assert f"{image_id},train,square" in settings.labels_csv.read_text()
    assert store.csv.repair() is True
    assert settings.labels_csv.read_text() == store.csv.text()
    assert f"{image_id},train,ring" in settings.labels_csv.read_text()
    settings.labels_csv.unlink()
    assert store.csv.repair() is True and settings.labels_csv.read_text() == store.csv.text()


def test_a_server_rewrites_labels_csv_after_the_request_once_for_many_changes(
    settings: Settings, shapes_dataset: Path
) -> None:
    """With a delay, writes return before the rewrite; flush (or close) writes what is pending."""
    with open_store(settings) as plain:
        import_folder(settings, plain)
        ids = [r.image_id for r in plain.queries.images(split="train", label="square")[:3]]
    before = settings.labels_csv.read_text()
    store = open_store(settings, export_delay_s=60)
    for image_id in ids:
        store.events.relabel([image_id], "ring", reason="r", actor="t")
    assert settings.labels_csv.read_text() == before  # not on the request's time
    store.csv.flush()
    assert settings.labels_csv.read_text() == store.csv.text() != before
    store.events.undo(store.queries.history(limit=1)[0].event_id, actor="t")
    store.close()  # pending at shutdown: written
    assert settings.labels_csv.read_text() == LabelStore(settings.label_db_url).csv.text()


def test_labels_csv_kept_across_revisions_is_the_one_read_from_every_row(store: LabelStore, settings: Settings) -> None:
    """The text and data version a store keeps up to date equal a fresh read after every kind of change."""

    def fresh() -> tuple[str, str]:
        text = labels_csv_text(store.queries.images())
        return text, data_version_of(text)

    assert (store.csv.text(), store.csv.data_version()) == fresh()
    squares = [r.image_id for r in store.queries.images(split="train", label="square")[:2]]
    relabel = store.events.relabel(squares, "ring", reason="r", actor="t")
    assert (store.csv.text(), store.csv.data_version()) == fresh()
    confirm = store.events.confirm(squares[:1])
    assert (store.csv.text(), store.csv.data_version()) == fresh()
    with LabelStore(settings.label_db_url) as other:  # another worker's write: seen here by its revision
        other.events.relabel([squares[1]], "cross")
    assert (store.csv.text(), store.csv.data_version()) == fresh()
    store.events.undo(confirm.event_id)
    with pytest.raises(UndoConflictError):
        store.events.undo(relabel.event_id)
    assert (store.csv.text(), store.csv.data_version()) == fresh()
    data = settings.data_dir
    moved = store.queries.images(split="train", label="cross")[0]
    shutil.move(data / moved.path, data / "train" / "ring" / Path(moved.path).name)
    (data / store.queries.images(split="test")[0].path).unlink()
    write_mixed_formats(data / "train" / "square", "square", 1, start=700)
    import_folder(settings, store)  # a move, a removal and a new image: the order changes
    assert (store.csv.text(), store.csv.data_version()) == fresh()


def test_a_writer_killed_during_its_turn_does_not_block_the_next(store: LabelStore, settings: Settings) -> None:
    """SQLite writers take turns by an flock beside the database: the kernel drops a dead holder's."""
    if settings.database_url:
        pytest.skip("SQLite only: PostgreSQL orders writers by its row locks")
    script = textwrap.dedent(
        f"""
        import sys, time
        from training.labels.store import LabelStore
        store = LabelStore({settings.label_db_url!r})
        with store.database.writer_turn():
            print("holding", flush=True)
            time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert (settings.data_dir / "labels.db-writer").exists()
    finally:
        holder.kill()
        holder.wait(timeout=60)
    image_id = store.queries.images(split="train", label="square")[0].image_id
    assert store.events.relabel([image_id], "ring").changed[0].new_label == "ring"


def test_one_sync_that_adds_moves_restores_rewrites_touches_and_removes(store: LabelStore, settings: Settings) -> None:
    """Every kind of change in one import: ids kept, labels followed, exactly the changed rows stamped, one event."""
    data = settings.data_dir
    crosses = store.queries.images(split="train", label="cross")
    squares = store.queries.images(split="train", label="square")
    back = store.queries.images(split="test", label="ring")[0]
    relabelled, across, within = crosses[:3]
    gone, rewritten, touched = squares[:3]
    store.events.relabel([within.image_id], "ring", reason="r", actor="t")  # a curated label a move keeps
    (data / back.path).rename(data / "aside.bin")
    import_folder(settings, store)  # `back` is absent now
    assert back.path not in {r.path for r in store.queries.images()}
    start = store.queries.revision()

    (data / "aside.bin").rename(data / back.path)  # restored
    (data / across.path).rename(data / "train" / "square" / Path(across.path).name)  # moved to another class
    (data / "train" / "cross" / "deeper").mkdir()
    (data / within.path).rename(data / "train" / "cross" / "deeper" / Path(within.path).name)  # same class folder
    (data / gone.path).unlink()  # removed
    (data / rewritten.path).write_bytes((data / relabelled.path).read_bytes())  # new content, same path
    os.utime(data / touched.path, ns=(1_000_000_000, 1_000_000_000))  # same content, other mtime
    write_mixed_formats(data / "train" / "ring", "ring", 1, start=900)  # added
    report = import_folder(settings, store)

    assert (report.added, report.moved, report.restored, report.removed, report.rewritten) == (1, 2, 1, 1, 1)
    revision, changed = store.queries.changes_since(start)
    assert revision == start + 1
    by_id = {c.image_id: c for c in changed}
    added = [c for c in changed if c.path.startswith("train/ring/") and "900" in c.path]
    assert len(added) == 1 and added[0].label == "ring" and added[0].present
    expected = {back.image_id, across.image_id, within.image_id, gone.image_id, rewritten.image_id, added[0].image_id}
    assert set(by_id) == expected  # the touched file's new mtime is no change readers see
    assert by_id[back.image_id].present and by_id[back.image_id].path == back.path
    assert by_id[across.image_id].path == f"train/square/{Path(across.path).name}"
    assert (by_id[across.image_id].label, by_id[across.image_id].folder_label) == ("square", "square")
    assert by_id[within.image_id].path == f"train/cross/deeper/{Path(within.path).name}"
    assert (by_id[within.image_id].label, by_id[within.image_id].folder_label) == ("ring", "cross")
    assert not by_id[gone.image_id].present
    assert by_id[rewritten.image_id].sha256 == relabelled.sha256 and by_id[rewritten.image_id].present
    fingerprints = store.queries.fingerprints()
    assert fingerprints[touched.path].mtime_ns == 1_000_000_000  # recorded: the next scan does not decode it
    assert fingerprints[touched.path].sha256 == touched.sha256
    move = store.queries.history(limit=1)[0]
    assert move.kind == "move" and move.actor == "scan"
    assert [(c.image_id, c.old_label, c.new_label) for c in move.changes] == [(across.image_id, "cross", "square")]
    assert settings.labels_csv.read_text() == store.csv.text() == labels_csv_text(store.queries.images())
    again = import_folder(settings, store)  # nothing changed since: nothing written
    assert (again.added, again.moved, again.restored, again.removed) == (0, 0, 0, 0)
    assert store.queries.revision() == revision


def test_a_new_file_whose_id_is_taken_gets_the_next_salt(store: LabelStore, settings: Settings) -> None:
    """Ids come from the path; a path whose id a row already holds (a row moved away from it) gets another."""
    data = settings.data_dir
    first = store.queries.images(split="train", label="cross")[0]
    name = Path(first.path).name
    (data / first.path).rename(data / "train" / "cross" / f"moved-{name}")
    import_folder(settings, store)  # a move: the row keeps the id made from its first path
    (new,) = write_mixed_formats(data / "train" / "ring", "ring", 1, start=901)
    new.rename(data / first.path)  # a new file at the first path: its salt-0 id is the moved row's
    report = import_folder(settings, store)
    assert report.added == 1
    records = {r.path: r for r in store.queries.images()}
    assert records[f"train/cross/moved-{name}"].image_id == first.image_id
    assert first.image_id == hashlib.sha256(f"{first.path}\0{0}".encode()).hexdigest()[:16]
    assert records[first.path].image_id == hashlib.sha256(f"{first.path}\0{1}".encode()).hexdigest()[:16]
