"""The review page's server side (bento_service.ui.app) with a real label store, in process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from bento_service import ui
from training.curation.curator import Curator
from training.curation.labels import Labels
from training.labels.store import LabelStore, open_store
from training.labels.sync import import_folder
from training.settings import Settings

SLOW_READ_S = 1.0


class SlowStore:
    """The real label store, every read a second late: what a loaded PostgreSQL looks like from here."""

    def __init__(self, store: LabelStore) -> None:
        self.store = store
        self.queries = self  # the façade reads through ``store.queries``

    def get(self, image_id: str) -> Any:
        time.sleep(SLOW_READ_S)
        return self.store.queries.get(image_id)

    def records(self, image_ids: list[str]) -> Any:
        time.sleep(SLOW_READ_S)
        return self.store.queries.records(image_ids)


@pytest.fixture
def store(settings: Settings, shapes_dataset: Path) -> Iterator[LabelStore]:
    with open_store(settings) as store:
        import_folder(settings, store)
        yield store


def _site(settings: Settings, store: Any) -> Starlette:
    """The page mounted beside a 'predict' that answers at once, on one event loop, as in a worker."""
    page = ui.create_app()
    ui.attach(page, ui.PageData(curator=lambda: Curator(Labels(settings, store), model=None), settings=settings))  # type: ignore[arg-type]

    async def predict(_: object) -> JSONResponse:
        return JSONResponse({"label": "ring"})

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Mount(ui.PATH, page)])


def test_a_slow_database_read_does_not_delay_a_concurrent_predict(settings: Settings, store: LabelStore) -> None:
    image_id = store.queries.images(split="train", limit=1)[0].image_id
    site = _site(settings, SlowStore(store))

    async def run() -> tuple[float, float, int]:
        transport = httpx.ASGITransport(app=site)
        async with httpx.AsyncClient(transport=transport, base_url="http://page") as client:
            started = time.perf_counter()
            slow = asyncio.create_task(client.get(f"/ui/record/{image_id}"))  # starts first, as it arrived first
            fast = asyncio.create_task(client.post("/predict"))
            assert (await fast).status_code == 200
            predicted = time.perf_counter() - started
            answer = await slow
            return predicted, time.perf_counter() - started, answer.status_code

    fast, slow, status = asyncio.run(run())
    assert status == 200 and slow >= SLOW_READ_S
    assert fast < SLOW_READ_S / 4, f"predict waited {fast:.2f} s behind a database read"


def test_the_page_reads_through_the_curation_facade(settings: Settings, store: LabelStore) -> None:
    records = store.queries.images(split="train", limit=2)
    site = _site(settings, store)

    async def get(path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=site), base_url="http://page") as client:
            return await client.get(path)

    record = asyncio.run(get(f"/ui/record/{records[0].image_id}")).json()
    assert record["path"] == records[0].path and record["label"] == records[0].label
    batch = asyncio.run(get(f"/ui/thumbnails?size=64&ids={records[0].image_id},{records[1].image_id},nope")).json()
    assert set(batch["thumbnails"]) == {records[0].image_id, records[1].image_id}
    assert batch["missing"] == {"nope": "unknown image_id"}
    assert asyncio.run(get("/ui/record/nope")).status_code == 404
