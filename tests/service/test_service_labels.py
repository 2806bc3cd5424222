"""Label endpoints over HTTP: listing, image bytes, relabel, undo, history and their 4xx answers."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import TrainedDemo, eventually

pytestmark = pytest.mark.slow


def _post(server: str, endpoint: str, payload: dict) -> httpx.Response:
    return httpx.post(f"{server}/{endpoint}", json=payload, timeout=30)


def test_images_listing_and_bytes(server: str, trained_demo: TrainedDemo) -> None:
    listed = _post(server, "images", {"split": "test", "label": "dog", "limit": 3}).json()
    assert len(listed) == 3 and {i["label"] for i in listed} == {"dog"}
    assert set(listed[0]) >= {"image_id", "path", "split", "label"}
    response = _post(server, "image", {"image_id": listed[0]["image_id"]})
    assert response.status_code == 200
    assert response.content == (trained_demo.settings.data_dir / listed[0]["path"]).read_bytes()
    assert _post(server, "image", {"image_id": "../../etc/passwd"}).status_code == 404
    assert _post(server, "images", {"limit": 0}).status_code == 400


def test_relabel_history_undo_over_http(server: str, trained_demo: TrainedDemo) -> None:
    labels_csv = trained_demo.settings.data_dir / "labels.csv"
    before = labels_csv.read_text()
    ids = [i["image_id"] for i in _post(server, "images", {"split": "train", "label": "bear", "limit": 2}).json()]
    response = _post(server, "relabel", {"image_ids": ids, "label": "zebra", "reason": "stripes"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert [c["image_id"] for c in result["changed"]] == ids and result["unchanged"] == []
    assert eventually(lambda: labels_csv.read_text() != before)  # rewritten off the request
    events = _post(server, "history", {"image_id": ids[0]}).json()
    assert events[0]["event_id"] == result["event_id"] and events[0]["reason"] == "stripes"

    undone = _post(server, "undo", {"event_id": result["event_id"]})
    assert undone.status_code == 200
    assert eventually(lambda: labels_csv.read_text() == before)
    again = _post(server, "undo", {"event_id": result["event_id"]})
    assert again.status_code == 409 and "already undone" in again.text


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"image_ids": ["nope"], "label": "cat"}, 404, "nope"),
        ({"image_ids": [], "label": "cat"}, 400, "image_ids"),
        ({"image_ids": ["x"], "label": "bunny"}, 400, "bunny"),
        ({"images": ["x"], "label": "cat"}, 400, "image_ids"),
        ({"image_ids": ["x"], "label": "cat", "reasn": "typo"}, 400, "unknown field 'reasn'"),
    ],
)
def test_bad_relabels_are_4xx_and_change_nothing(
    server: str, trained_demo: TrainedDemo, payload: dict, status: int, message: str
) -> None:
    if payload.get("image_ids") == ["x"]:  # a real image, so only the named problem can refuse it
        payload["image_ids"] = [_post(server, "images", {"limit": 1}).json()[0]["image_id"]]
    labels_csv = trained_demo.settings.data_dir / "labels.csv"
    before = labels_csv.read_text()
    response = _post(server, "relabel", payload)
    assert response.status_code == status, response.text
    assert message in response.text
    assert labels_csv.read_text() == before


def test_a_relabel_is_seen_by_every_worker_at_once(trained_demo: TrainedDemo, tmp_path) -> None:
    from tests.service.conftest import running_server

    with running_server(trained_demo, tmp_path, BOUNCER_WORKERS="2") as url:
        image_id = _post(url, "images", {"split": "train", "label": "horse", "limit": 1}).json()[0]["image_id"]
        result = _post(url, "relabel", {"image_ids": [image_id], "label": "cow"}).json()
        try:
            # many reads, spread by the server over both worker processes: all must agree
            seen = [
                {
                    i["image_id"]
                    for i in _post(url, "images", {"split": "train", "label": "cow", "limit": 10_000}).json()
                }
                for _ in range(20)
            ]
            assert all(image_id in ids for ids in seen)
            query = _post(url, "images", {"split": "test", "label": "cow", "limit": 1}).json()[0]["image_id"]
            hits = _post(url, "similar", {"image_id": query, "k": 1000, "label": "horse"}).json()["results"]
            assert image_id not in {h["image_id"] for h in hits}
        finally:
            _post(url, "undo", {"event_id": result["event_id"]})


def test_evaluate_follows_a_relabel_of_a_test_image_and_its_undo(server: str) -> None:
    """Each worker keeps its evaluation across revisions: a relabel of the split must still show at once."""
    before = _post(server, "evaluate", {"split": "test"}).json()
    image_id = _post(server, "images", {"split": "test", "label": "dog", "limit": 1}).json()[0]["image_id"]
    relabel = _post(server, "relabel", {"image_ids": [image_id], "label": "cat"}).json()
    try:
        for _ in range(6):  # answered by either worker
            after = _post(server, "evaluate", {"split": "test"}).json()
            assert after["n"] == before["n"] and after["data_version"] != before["data_version"]
            assert after["per_class"]["dog"]["support"] == before["per_class"]["dog"]["support"] - 1
            assert after["per_class"]["cat"]["support"] == before["per_class"]["cat"]["support"] + 1
    finally:
        assert _post(server, "undo", {"event_id": relabel["event_id"]}).status_code == 200
    for _ in range(6):
        assert _post(server, "evaluate", {"split": "test"}).json() == before
