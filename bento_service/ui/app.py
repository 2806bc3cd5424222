"""The review page's server side: a Starlette app the service mounts at ``/ui`` (no second server).

The page and its static files, plus the few GET routes a page needs that BentoML's POST
endpoints cannot give an ``<img>``: thumbnails (resized here, cached by the browser with an
ETag; one at a time, or a screenful in one request), the original image bytes, one image's
record, and what the page shows in its header. Reads only: every write goes through the
service's own endpoints, with the same token gate.

Its one dependency, :class:`PageData` (the curation façade of the version serving now, and the
settings), is given by the service when its worker starts (:func:`attach`); every read of the
label store runs in a worker thread, so a slow database never holds up the event loop that
``predict`` shares.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from training.curation.curator import Curator
from training.data.folders import resolve_inside
from training.data.images import ImageError, open_image, to_rgb
from training.errors import BouncerError
from training.labels.errors import NotFoundError
from training.labels.records import ImageRecord
from training.settings import Settings


@dataclass(frozen=True)
class PageData:
    """What the page reads: a curator over the version serving at that moment, and the settings."""

    curator: Callable[[], Curator]
    settings: Settings


def attach(app: Starlette, data: PageData) -> None:
    """Give the mounted page its data (the service does, in each worker, once it has a label store)."""
    app.state.data = data


def _data(request: Request) -> PageData:
    return request.app.state.data  # type: ignore[no-any-return]


STATIC = Path(__file__).parent / "static"
PATH = "/ui"
THUMBNAIL_SIZES = (32, 640)  # smallest and largest thumbnail edge the page may ask for
THUMBNAIL_QUALITY = 85
THUMBNAIL_BATCH = 60  # thumbnails one /ui/thumbnails request may ask for (its URL stays under ~1.2 KB of ids)
# Thumbnails kept in memory per worker: ~10 KB each, so ~40 MB at most.
THUMBNAIL_CACHE = 4096
# Thumbnails and originals are named by content (the sha256 in the ETag): a day in the browser's cache,
# revalidated after that with If-None-Match (a 304 costs no decode).
CACHE_CONTROL = "private, max-age=86400"


async def index(request: Request) -> Response:
    if not request.url.path.endswith("/"):
        return RedirectResponse(request.url.path + "/", status_code=308)
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def info(request: Request) -> JSONResponse:
    """What the page needs to draw its controls: classes, splits, whether writes need a token, the serving version."""
    data = _data(request)

    def read() -> dict[str, Any]:
        curator = data.curator()
        return {
            "classes": curator.labels.classes(),
            "splits": list(data.settings.splits),
            "token_required": bool(data.settings.api_token),
            "serving": curator.model.version,
        }

    return JSONResponse(await run_in_threadpool(read))


async def record(request: Request) -> JSONResponse:
    data = _data(request)
    try:
        found = await run_in_threadpool(lambda: data.curator().labels.image(request.path_params["image_id"]))
    except BouncerError as exc:  # the one table: an unknown id is a 404
        return _refused(exc)
    return JSONResponse(
        {
            "image_id": found.image_id,
            "path": found.path,
            "split": found.split,
            "label": found.label,
            "folder_label": found.folder_label,
            "sha256": found.sha256,
        }
    )


async def original(request: Request) -> Response:
    """The stored file as it is (the page shows it large and posts it to ``predict``)."""
    located = await run_in_threadpool(_locate, request)
    if isinstance(located, Response):
        return located
    path, found = located
    etag = _content_etag(found.sha256)
    if _fresh(request, etag):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})
    return FileResponse(path, headers={"ETag": etag, "Cache-Control": CACHE_CONTROL})


def _size(request: Request) -> int | Response:
    """The ``size`` asked for, or the 400 naming what is wrong with it."""
    try:
        size = int(request.query_params.get("size", "160"))
    except ValueError:
        return JSONResponse({"error": "size must be an integer number of pixels"}, status_code=400)
    if not THUMBNAIL_SIZES[0] <= size <= THUMBNAIL_SIZES[1]:
        return JSONResponse(
            {"error": f"size must be within {THUMBNAIL_SIZES[0]}..{THUMBNAIL_SIZES[1]}"}, status_code=400
        )
    return size


async def thumbnail(request: Request) -> Response:
    """A JPEG no larger than ``size`` px on its longer side, aspect kept."""
    size = _size(request)
    if isinstance(size, Response):
        return size
    located = await run_in_threadpool(_locate, request)
    if isinstance(located, Response):
        return located
    path, found = located
    etag = _content_etag(found.sha256, size)
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _fresh(request, etag):
        return Response(status_code=304, headers=headers)
    max_pixels = _data(request).settings.max_image_pixels
    try:
        body = await run_in_threadpool(_thumbnail, str(path), etag, size, max_pixels)
    except ImageError as exc:  # the one table: 400, as an upload that is no image
        return _refused(exc, f"{path.name}: {exc}")
    return Response(body, media_type="image/jpeg", headers=headers)


async def thumbnails(request: Request) -> Response:
    """Many thumbnails in one answer, as ``data:`` URLs by image id (``ids``: comma-separated, at most
    THUMBNAIL_BATCH).

    A screen of the review grid is ~130 thumbnails, and every request through the bento
    costs milliseconds of its middleware however small the answer: one request per
    THUMBNAIL_BATCH images made the first paint several times faster. Images that cannot
    be shown (gone from the store or the disk, undecodable) are in ``missing`` with the reason.
    """
    size = _size(request)
    if isinstance(size, Response):
        return size
    ids = list(dict.fromkeys(i for i in request.query_params.get("ids", "").split(",") if i))
    if not ids:
        return JSONResponse({"error": "ids: give one or more image ids, comma-separated"}, status_code=400)
    if len(ids) > THUMBNAIL_BATCH:
        return JSONResponse({"error": f"ids: at most {THUMBNAIL_BATCH} a request, got {len(ids)}"}, status_code=400)
    data = _data(request)
    records = await run_in_threadpool(lambda: data.curator().labels.image_records(ids))
    # named by content: the same ids with the same pictures are the same answer
    contents = ",".join(records[i].sha256 if i in records else "-" for i in ids)
    etag = f'"{hashlib.sha256(f"{size}:{contents}".encode()).hexdigest()[:32]}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _fresh(request, etag):
        return Response(status_code=304, headers=headers)
    settings = data.settings
    found: dict[str, str] = {}
    missing: dict[str, str] = {i: "unknown image_id" for i in ids if i not in records}

    def make() -> None:
        for image_id in [i for i in ids if i in records]:  # in the order asked
            record = records[image_id]
            try:
                path = _file_of(record, settings.data_dir)
                jpeg = _thumbnail(str(path), _content_etag(record.sha256, size), size, settings.max_image_pixels)
            except (PermissionError, FileNotFoundError) as exc:
                missing[image_id] = str(exc)
            except ImageError as exc:
                missing[image_id] = f"{record.path}: {exc}"
            else:
                found[image_id] = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")

    await run_in_threadpool(make)
    return JSONResponse({"size": size, "thumbnails": found, "missing": missing}, headers=headers)


@lru_cache(maxsize=THUMBNAIL_CACHE)
def _thumbnail(path: str, etag: str, size: int, max_pixels: int) -> bytes:
    """``etag`` names the content (sha256): a file changed on disk is a new cache entry."""
    image = to_rgb(open_image(Path(path), max_pixels=max_pixels, shrink_to=size))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


def _locate(request: Request) -> tuple[Path, ImageRecord] | Response:
    """The file of ``image_id`` (only under DATA_DIR) and its record, or the 404 to answer (blocking: a thread's)."""
    data = _data(request)
    try:
        found = data.curator().labels.image(request.path_params["image_id"])
        path = _file_of(found, data.settings.data_dir)
    except NotFoundError as exc:
        return _refused(exc)
    except (PermissionError, FileNotFoundError) as exc:  # a stored path out of DATA_DIR, or a file gone
        return JSONResponse({"error": str(exc)}, status_code=HTTPStatus.NOT_FOUND)
    return path, found


def _refused(exc: BouncerError, message: str | None = None) -> JSONResponse:
    """A user's mistake answered with its status from the one table (training.errors)."""
    return JSONResponse({"error": message or str(exc)}, status_code=exc.error_code)


def _file_of(record: ImageRecord, data_dir: Path) -> Path:
    """The image's file: PermissionError when its path leads out of DATA_DIR, FileNotFoundError when it is gone."""
    path = resolve_inside(data_dir, record.path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {record.path} is missing from the data directory")
    return path


def _content_etag(sha256: str, size: int | None = None) -> str:
    """Thumbnails and originals are named by their picture's content (and a thumbnail by its size)."""
    return f'"{sha256[:32]}-{size}"' if size is not None else f'"{sha256[:32]}"'


def _fresh(request: Request, etag: str) -> bool:
    return etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}


def create_app() -> Starlette:
    """The page's routes; :func:`attach` gives them their data once the service's worker has it."""
    return Starlette(
        routes=[
            Route("/", index),
            Route("/info", info),
            Route("/record/{image_id}", record),
            Route("/image/{image_id}", original),
            Route("/thumbnail/{image_id}", thumbnail),
            Route("/thumbnails", thumbnails),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
