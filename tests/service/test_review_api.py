"""What the review page relies on, over HTTP: confirm, paging, confusion cells, thumbnails with ETags."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.conftest import TrainedDemo
from tests.service.conftest import ok, post

pytestmark = pytest.mark.slow


def test_confirmed_images_are_reviewed_until_the_confirmation_is_undone(server: str) -> None:
    suspects = ok(server, "suspects", {"k": 4})
    ids = [s["image_id"] for s in suspects[:2]]
    confirmed = ok(server, "confirm", {"image_ids": ids, "reason": "looked right"})
    assert [c["image_id"] for c in confirmed["confirmed"]] == ids
    assert all(c["old_label"] == c["new_label"] for c in confirmed["confirmed"])
    assert not set(ids) & {s["image_id"] for s in ok(server, "suspects", {"k": 100_000})}
    assert not set(ids) & {
        n["image_id"] for n in ok(server, "expand", {"image_ids": [suspects[3]["image_id"]], "k": 200})
    }
    [event] = ok(server, "history", {"image_id": ids[0], "limit": 1})
    assert event["kind"] == "confirm" and event["event_id"] == confirmed["event_id"]

    ok(server, "undo", {"event_id": confirmed["event_id"]})
    assert set(ids) <= {s["image_id"] for s in ok(server, "suspects", {"k": 100_000})}
    assert post(server, "confirm", {"image_ids": ["nope"]}).status_code == 404
    assert post(server, "confirm", {"image_ids": []}).status_code == 400


def test_suspects_and_trace_page_with_offset(server: str) -> None:
    everything = ok(server, "suspects", {"k": 40})
    assert ok(server, "suspects", {"k": 10, "offset": 10}) == everything[10:20]
    traced = ok(server, "trace", {"k": 3, "limit": 30})
    assert ok(server, "trace", {"k": 3, "limit": 5, "offset": 5}) == traced[5:10]


def test_paged_lists_say_their_whole_length_in_a_header(server: str) -> None:
    suspects = post(server, "suspects", {"k": 5, "offset": 3})
    assert int(suspects.headers["x-total-count"]) == len(ok(server, "suspects", {"k": 100_000})) > 5
    assert len(suspects.json()) == 5  # the answer is still the list
    everything = ok(server, "images", {"split": "train", "limit": 10_000})
    dogs = [r for r in everything if r["label"] == "dog"]
    assert int(post(server, "images", {"split": "train", "limit": 1}).headers["x-total-count"]) == len(everything)
    one_class = post(server, "images", {"split": "train", "label": "dog", "limit": 2, "offset": 1})
    assert int(one_class.headers["x-total-count"]) == len(dogs) and one_class.json() == dogs[1:3]


def test_a_confusion_cell_lists_its_test_images(server: str) -> None:
    evaluation = ok(server, "evaluate", {"split": "test"})
    labels, matrix = evaluation["confusion_matrix"]["labels"], evaluation["confusion_matrix"]["matrix"]
    for i, j in [(0, 0), next((i, j) for i, row in enumerate(matrix) for j, n in enumerate(row) if i != j and n)]:
        cell = ok(server, "confusion", {"label": labels[i], "predicted": labels[j], "limit": 10_000})
        assert len(cell) == matrix[i][j]
        assert all(m["label"] == labels[i] and m["predicted"] == labels[j] for m in cell)
        assert [m["confidence"] for m in cell] == sorted((m["confidence"] for m in cell), reverse=True)
    unknown = post(server, "confusion", {"label": "unicorn", "predicted": labels[0], "split": "holdout"})
    assert unknown.status_code == 400 and "holdout" in unknown.json()["error"]


def test_the_page_and_its_reads(server: str, trained_demo: TrainedDemo) -> None:
    page = httpx.get(f"{server}/ui", follow_redirects=True, timeout=30)
    assert page.status_code == 200 and "<title>Bouncer" in page.text
    assert httpx.get(f"{server}/ui/static/app.js", timeout=30).status_code == 200
    info = httpx.get(f"{server}/ui/info", timeout=30).json()
    assert info["classes"] == sorted(info["classes"]) and "dog" in info["classes"] and info["token_required"] is False

    record = ok(server, "images", {"split": "train", "limit": 1})[0]
    assert httpx.get(f"{server}/ui/record/{record['image_id']}", timeout=30).json()["path"] == record["path"]
    original = httpx.get(f"{server}/ui/image/{record['image_id']}", timeout=30)
    assert original.content == (trained_demo.settings.data_dir / record["path"]).read_bytes()

    thumbnail = httpx.get(f"{server}/ui/thumbnail/{record['image_id']}", params={"size": 64}, timeout=30)
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 64
    etag = thumbnail.headers["etag"]
    again = httpx.get(
        f"{server}/ui/thumbnail/{record['image_id']}", params={"size": 64}, headers={"If-None-Match": etag}, timeout=30
    )
    assert again.status_code == 304 and not again.content
    other_size = httpx.get(f"{server}/ui/thumbnail/{record['image_id']}", params={"size": 96}, timeout=30)
    assert other_size.headers["etag"] != etag

    # a screenful in one request: the same pictures, as data: URLs in the order asked, the unknown named
    ids = [r["image_id"] for r in ok(server, "images", {"split": "train", "limit": 3, "offset": 5})]
    batch = httpx.get(f"{server}/ui/thumbnails", params={"size": 64, "ids": ",".join([*ids, "nope"])}, timeout=30)
    assert batch.status_code == 200, batch.text
    assert list(batch.json()["thumbnails"]) == ids and batch.json()["missing"] == {"nope": "unknown image_id"}
    for image_id, url in batch.json()["thumbnails"].items():
        single = httpx.get(f"{server}/ui/thumbnail/{image_id}", params={"size": 64}, timeout=30).content
        assert url == "data:image/jpeg;base64," + base64.b64encode(single).decode()
    again = httpx.get(
        f"{server}/ui/thumbnails",
        params={"size": 64, "ids": ",".join([*ids, "nope"])},
        headers={"If-None-Match": batch.headers["etag"]},
        timeout=30,
    )
    assert again.status_code == 304 and not again.content

    for url, status in [
        ("/ui/thumbnails?size=64", 400),
        ("/ui/thumbnails?size=64&ids=" + ",".join(f"id{i}" for i in range(61)), 400),
        (f"/ui/thumbnails?size=5&ids={record['image_id']}", 400),
        (f"/ui/thumbnail/{record['image_id']}?size=5", 400),
        (f"/ui/thumbnail/{record['image_id']}?size=big", 400),
        ("/ui/thumbnail/nope", 404),
        ("/ui/image/nope", 404),
        ("/ui/record/nope", 404),
    ]:
        response = httpx.get(f"{server}{url}", timeout=30)
        assert response.status_code == status and response.json()["error"], url
