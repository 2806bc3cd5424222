"""The service's endpoints on a PostgreSQL label store: the documented scale-out, answering as SQLite does.

One `bentoml serve` (2 workers) over a copy of the demo whose labels live in a fresh
PostgreSQL database; the prediction log then lives there too. Every read and write
endpoint the other service tests exercise on SQLite is called here once, with the same
expectations, plus the inputs PostgreSQL is stricter about than SQLite (NUL characters,
integers past 2^63, long text).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, text

from tests.conftest import TrainedDemo, eventually
from tests.postgres import fresh_database
from tests.service.conftest import copy_demo_data, running_server
from training.labels.store import open_store
from training.labels.sync import import_folder

pytestmark = pytest.mark.slow

TOKEN = "pg-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Served:
    url: str
    data_dir: Path
    database: str
    version: str


@pytest.fixture(scope="module")
def served(
    trained_demo: TrainedDemo, postgres_server: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    if not postgres_server:
        pytest.skip("no PostgreSQL installed (see tests/postgres.py)")
    root = tmp_path_factory.mktemp("pg-served")
    data = copy_demo_data(trained_demo, root / "data")
    with fresh_database(postgres_server) as database:
        settings = trained_demo.settings.model_copy(update={"data_dir": data, "database_url": database})
        with open_store(settings) as store:
            import_folder(settings, store)
        env = {
            "BOUNCER_DATA_DIR": str(data),
            "BOUNCER_DATABASE_URL": database,
            "BOUNCER_MLFLOW_DIR": str(root / "mlruns"),
            "BOUNCER_API_TOKEN": TOKEN,
            "BOUNCER_WORKERS": "2",
            "BOUNCER_LOG_IMAGES": "ood",
        }
        with running_server(trained_demo, root, **env) as url:
            yield Served(url, data, database, trained_demo.result.tag.split(":", 1)[1])


def call(served: Served, endpoint: str, payload: dict, *, status: int = 200, write: bool = False) -> object:
    response = httpx.post(f"{served.url}/{endpoint}", json=payload, headers=AUTH if write else {}, timeout=60)
    assert response.status_code == status, response.text
    return response.json() if response.headers.get("content-type", "").startswith("application/json") else response


def test_reads_and_search_answer_from_postgresql(served: Served) -> None:
    train = call(served, "images", {"split": "train", "limit": 10_000})
    assert len(train) == len(list((served.data_dir / "train").glob("*/*.png")))  # type: ignore[arg-type]
    first = train[0]  # type: ignore[index]
    image = httpx.post(f"{served.url}/image", json={"image_id": first["image_id"]}, timeout=30)
    assert image.content == (served.data_dir / first["path"]).read_bytes()
    similar = call(served, "similar", {"image_id": first["image_id"], "k": 5, "split": "train", "label": "cat"})
    assert len(similar["results"]) == 5 and {r["label"] for r in similar["results"]} == {"cat"}  # type: ignore[index]
    evaluation = call(served, "evaluate", {"split": "test"})
    assert evaluation["n"] == len(list((served.data_dir / "test").glob("*/*.png")))  # type: ignore[index]
    # Imported into a new database, the images have new ids: the version's index knows none of
    # them, so a background job embeds them (training.vectors.updates); trace waits for vectors.
    assert eventually(lambda: bool(call(served, "trace", {"k": 3, "limit": 20})), timeout=60)
    traced = call(served, "trace", {"k": 3, "limit": 20})
    assert all(t["path"].startswith("train/") for t in traced)  # type: ignore[union-attr]
    suspects = call(served, "suspects", {"k": 10})
    assert len(suspects) == 10  # type: ignore[arg-type]
    expanded = call(served, "expand", {"image_ids": [suspects[0]["image_id"]], "k": 5})  # type: ignore[index]
    assert len(expanded) == 5  # type: ignore[arg-type]
    # a new database is a new dataset: the pinned version serving it is listed all the same
    assert [v["version"] for v in call(served, "models", {}) if v["serving"]] == [served.version]  # type: ignore[union-attr]


def test_relabel_confirm_history_undo_on_postgresql(served: Served) -> None:
    ids = [i["image_id"] for i in call(served, "images", {"split": "train", "label": "bear", "limit": 2})]  # type: ignore[union-attr]
    call(served, "relabel", {"image_ids": ids, "label": "zebra"}, status=401)
    done = call(served, "relabel", {"image_ids": ids, "label": "zebra", "reason": "stripes"}, write=True)
    assert [c["image_id"] for c in done["changed"]] == ids  # type: ignore[index]
    labels = {i["image_id"]: i["label"] for i in call(served, "images", {"split": "train", "limit": 10_000})}  # type: ignore[union-attr]
    assert {labels[i] for i in ids} == {"zebra"}  # seen by whichever worker answers
    csv = served.data_dir / "labels.csv"
    assert eventually(lambda: all(f"{i}," in csv.read_text() and "zebra" in csv.read_text() for i in ids))
    events = call(served, "history", {"image_id": ids[0]})
    assert events[0]["event_id"] == done["event_id"] and events[0]["reason"] == "stripes"  # type: ignore[index]
    call(served, "undo", {"event_id": done["event_id"]}, write=True)  # type: ignore[index]
    call(served, "undo", {"event_id": done["event_id"]}, status=409, write=True)  # type: ignore[index]
    confirmed = call(served, "confirm", {"image_ids": ids[:1], "reason": "checked"}, write=True)
    assert confirmed["confirmed"][0]["image_id"] == ids[0]  # type: ignore[index]
    assert ids[0] not in {s["image_id"] for s in call(served, "suspects", {"k": 100_000})}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("endpoint", "payload", "status", "named"),
    [
        ("relabel", {"image_ids": ["a\u0000b"], "label": "cat"}, 400, "NUL"),
        ("relabel", {"image_ids": ["x"], "label": "cat", "reason": "r" * 5000}, 400, "reason"),
        ("undo", {"event_id": 9223372036854775808}, 400, "event_id"),
        ("images", {"offset": 9223372036854775808}, 400, "offset"),
        ("similar", {"image_id": "nope"}, 404, "nope"),
        ("relabel", {"image_ids": ["nope"], "label": "cat"}, 404, "nope"),
    ],
)
def test_what_postgresql_is_stricter_about_is_a_4xx_before_any_write(
    served: Served, endpoint: str, payload: dict, status: int, named: str
) -> None:
    before = call(served, "history", {"limit": 1})
    response = httpx.post(f"{served.url}/{endpoint}", json=payload, headers=AUTH, timeout=30)
    assert response.status_code == status, response.text
    assert named.lower() in response.text.lower()
    assert call(served, "history", {"limit": 1}) == before


def test_the_prediction_log_lives_in_the_postgresql_database(served: Served) -> None:
    pictures = sorted((served.data_dir / "test").glob("*/*.png"))[:10]
    for picture in pictures:
        httpx.post(f"{served.url}/predict", files={"image": (picture.name, picture.read_bytes())}, timeout=30)
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    httpx.post(f"{served.url}/predict", files={"image": ("noise.png", buffer.getvalue())}, timeout=30)
    engine = create_engine(served.database)
    try:

        def logged() -> int:
            with engine.connect() as connection:
                return int(connection.execute(text("SELECT count(*) FROM predictions")).scalar_one())

        assert eventually(lambda: logged() >= len(pictures) + 1, timeout=10)
    finally:
        engine.dispose()
    report = call(served, "drift", {"window": "1h", "windows": 2})
    assert report["windows"][0]["n"] >= len(pictures) + 1  # type: ignore[index]
    assert not (served.data_dir / ".bouncer" / "predictions.db").exists()  # not a SQLite file beside the data
