"""suspects, trace and expand over HTTP, on the tiny poisoned demo and its stored out-of-fold probabilities."""

from __future__ import annotations

import pytest

from tests.service.conftest import ok, post

pytestmark = pytest.mark.slow


def test_suspects_rank_current_train_labels_and_follow_a_relabel(server: str, undo_after: list[int]) -> None:
    suspects_all = ok(server, "suspects", {"k": 100_000})
    suspects = ok(server, "suspects", {"k": 20})
    assert suspects == suspects_all[:20]
    assert len(suspects) == 20
    assert [s["score"] for s in suspects] == sorted((s["score"] for s in suspects), reverse=True)
    assert {"image_id", "path", "label", "suggested_label", "score", "flagged", "label_quality"} <= set(suspects[0])
    # the score is the stronger witness: 1 - the out-of-fold probability, or 1 - the test neighbours' vote
    for s in suspects:
        assert s["score"] >= 1 - s["out_of_fold_probability"] - 1e-6
        assert 0.0 <= s["test_neighbour_agreement"] <= 1.0 and 0.0 <= s["neighbour_agreement"] <= 1.0
        assert any("nearest test images are labelled" in reason for reason in s["reasons"])
        assert (
            s["reasons"][0] in ("out_of_fold", "duplicate_conflict")
            if s["flagged"]
            else s["reasons"][0].startswith("out-of-fold")
        )
    assert all(s["path"].startswith("train/") and 0.0 <= s["score"] <= 1.0 for s in suspects)

    top = next(s for s in suspects if s["suggested_label"] != s["label"])
    relabel = ok(server, "relabel", {"image_ids": [top["image_id"]], "label": top["suggested_label"]})
    undo_after.append(relabel["event_id"])
    after = {s["image_id"] for s in ok(server, "suspects", {"k": 100_000})}
    assert top["image_id"] not in after  # reviewed: a person settled it, it drops out
    assert len(after) == len(suspects_all) - 1


def test_trace_from_one_error_is_similar_restricted_to_the_predicted_class(server: str) -> None:
    evaluation = ok(server, "evaluate", {"split": "test"})
    error = evaluation["misclassified"][0]
    traced = ok(server, "trace", {"image_ids": [error["image_id"]], "k": 4})
    similar = ok(
        server, "similar", {"image_id": error["image_id"], "k": 4, "split": "train", "label": error["predicted"]}
    )
    assert {t["image_id"] for t in traced} == {r["image_id"] for r in similar["results"]}
    assert all(t["label"] == error["predicted"] and t["suggested_label"] == error["label"] for t in traced)


def test_trace_from_every_test_error_votes(server: str) -> None:
    evaluation = ok(server, "evaluate", {"split": "test"})
    traced = ok(server, "trace", {"k": 3, "limit": 50})
    assert 0 < len(traced) <= 50
    assert [t["votes"] for t in traced] == sorted((t["votes"] for t in traced), reverse=True)
    assert sum(t["votes"] for t in ok(server, "trace", {"k": 3, "limit": 100_000})) == 3 * len(
        evaluation["misclassified"]
    )
    assert all(t["label"] != t["suggested_label"] and t["path"].startswith("train/") for t in traced)


def test_expand_returns_the_nearest_unreviewed_images(server: str, undo_after: list[int]) -> None:
    cats = ok(server, "images", {"split": "train", "label": "cat", "limit": 3})
    confirmed = [c["image_id"] for c in cats[:2]]
    first = ok(server, "expand", {"image_ids": confirmed, "k": 5, "label": "cat"})
    assert len(first) == 5 and not {c["image_id"] for c in first} & set(confirmed)
    assert all(c["label"] == "cat" and c["split"] == "train" for c in first)
    assert [c["distance"] for c in first] == sorted(c["distance"] for c in first)

    reviewed = first[0]["image_id"]
    relabel = ok(server, "relabel", {"image_ids": [reviewed], "label": "dog", "reason": "reviewed"})
    undo_after.append(relabel["event_id"])
    again = ok(server, "expand", {"image_ids": confirmed, "k": 5})
    assert reviewed not in {c["image_id"] for c in again}  # a reviewed image is not proposed again


def test_bad_requests_name_the_problem(server: str) -> None:
    unknown = post(server, "expand", {"image_ids": ["nope"], "k": 3})
    assert unknown.status_code == 404 and "nope" in unknown.text
    assert post(server, "expand", {"image_ids": [], "k": 3}).status_code == 400
    some = ok(server, "images", {"split": "train", "limit": 1})[0]["image_id"]
    bad_label = post(server, "expand", {"image_ids": [some], "label": "unicorn"})
    assert bad_label.status_code == 400 and "unicorn" in bad_label.text
    assert post(server, "suspects", {"k": 0}).status_code == 400
    assert post(server, "trace", {"image_ids": ["nope"]}).status_code == 404
