"""`bouncer trace/similar/expand/models/promote/train` run for real: the CLI mirrors the API.

Each answer is compared with what the endpoint of the same name returns for the same
version: the Curator's (or registry's) answer through the endpoint's response schema.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bento_service.schemas import ModelVersion, Neighbour, PromoteResult, SimilarResult, SuspectOut, TracedOut
from tests.conftest import TrainedDemo
from training.cli import app
from training.labels.store import open_store
from training.registry.promotions import serving
from training.registry.serving import describe_versions, open_curator, resolve_serving_tag
from training.settings import Settings

pytestmark = pytest.mark.slow

runner = CliRunner()


def bouncer(*args: str) -> Any:
    """``bouncer -q ARGS`` in this process; its JSON answer (stdout only: warnings go to stderr)."""
    result = runner.invoke(app, ["-q", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_similar_trace_expand_and_suspects_answer_as_the_endpoints(
    demo_copy: Settings, trained_demo: TrainedDemo
) -> None:
    tag = trained_demo.result.tag
    with open_curator(demo_copy, model_tag=tag) as curator:
        cats = curator.labels.images(split="train", label="cat", limit=3, offset=0)
        errors = curator.evaluate("test").misclassified[:3]
    assert len(cats) == 3 and errors, "the demo has cats and a 2-epoch model makes test errors"

    similar = bouncer("similar", cats[0].image_id, "--label", "dog", "--k", "7")
    traced = bouncer("trace", "--k", "3", "--limit", "5", "--offset", "1")
    traced_from = bouncer("trace", *[e.image_id for e in errors], "--k", "3")
    expanded = bouncer("expand", *[c.image_id for c in cats[:2]], "--label", "cat", "--k", "6")
    suspects = bouncer("suspects", "--k", "4", "--offset", "3")

    with open_curator(demo_copy, model_tag=tag) as curator:
        expected_similar = curator.similar(cats[0].image_id, k=7, split="train", label="dog")
        expected_traced = curator.trace(None, k=3, limit=5, offset=1)
        expected_traced_from = curator.trace([e.image_id for e in errors], k=3, limit=20)
        expected_expanded = curator.expand([c.image_id for c in cats[:2]], k=6, label="cat", split="train")
        expected_suspects = curator.suspects(4, offset=3)
    assert similar == SimilarResult.model_validate(expected_similar).model_dump(mode="json")
    assert len(similar["results"]) == 7 and {n["label"] for n in similar["results"]} == {"dog"}
    assert all(isinstance(n["distance"], float) for n in similar["results"])  # numbers, not strings
    assert traced and traced == [TracedOut.model_validate(t).model_dump(mode="json") for t in expected_traced]
    assert traced_from == [TracedOut.model_validate(t).model_dump(mode="json") for t in expected_traced_from]
    assert traced_from, "tracing test errors finds the training images that pull them"
    assert expanded == [Neighbour.model_validate(n).model_dump(mode="json") for n in expected_expanded]
    assert len(expanded) == 6 and not {n["image_id"] for n in expanded} & {c.image_id for c in cats[:2]}
    assert len(suspects) == 4
    assert suspects == [SuspectOut.model_validate(s).model_dump(mode="json") for s in expected_suspects]


def test_models_and_promote_answer_as_the_endpoints(demo_copy: Settings, trained_demo: TrainedDemo) -> None:
    result = trained_demo.result
    version = result.tag.split(":", 1)[1]
    listed = bouncer("models")
    with open_store(demo_copy) as store:
        endpoint = describe_versions(demo_copy, store, resolve_serving_tag(demo_copy, store))
    assert listed == [ModelVersion.model_validate(v).model_dump(mode="json") for v in endpoint]
    mine = next(v for v in listed if v["version"] == version)
    assert [v["version"] for v in listed if v["serving"]] == [version]  # pinned with BOUNCER_MODEL_TAG
    assert mine["metrics"] == pytest.approx(result.metrics)
    assert mine["beats_baseline"] is result.evaluation.beats_baseline is True
    assert mine["warning"] is None

    promoted = bouncer("promote", version, "--reason", "pin it for good")
    assert promoted == PromoteResult(version=version, tag=result.tag, previous_version=version).model_dump()
    with open_store(demo_copy) as store:
        record = serving(store.database, demo_copy.model_name)
    assert record is not None and (record.tag, record.reason) == (result.tag, "pin it for good")
    assert [v["version"] for v in bouncer("models") if v["serving"]] == [version]

    unknown = runner.invoke(app, ["-q", "promote", "no-such-version"])
    assert unknown.exit_code == 2, unknown.output
    assert "unknown model version 'no-such-version'; see `models`" in unknown.output
    assert "Traceback" not in unknown.output and isinstance(unknown.exception, SystemExit)  # no crash, an exit
    with open_store(demo_copy) as store:
        assert serving(store.database, demo_copy.model_name).tag == result.tag


# --- `bouncer train` says whether the model beat the majority label; promote rolls back -------------


def write_two_tone(data: Path) -> None:
    """Dark and light squares of noise: a class any network tells apart in a few steps.

    10 test images a class: the fewest that calibrate the OOD threshold (else a warning).
    """
    rng = np.random.default_rng(0)
    for split, count in (("train", 24), ("test", 10)):
        for name, level in (("dark", 40), ("light", 215)):
            folder = data / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(level + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i:02d}.png")


def test_train_says_whether_the_model_beats_the_baseline_and_promote_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOUNCER_OUT_OF_FOLD_FOLDS", "0")
    monkeypatch.delenv("BOUNCER_MODEL_TAG", raising=False)  # the newest of the dataset serves until a promotion
    data = tmp_path / "data"
    write_two_tone(data)

    good_run = runner.invoke(app, ["-q", "train", "--epochs", "4"])
    assert good_run.exit_code == 0, good_run.output
    good = json.loads(good_run.stdout)
    assert good["metrics"]["test_accuracy"] > good["metrics"]["baseline_accuracy"] == 0.5
    assert good["beats_baseline"] is True and good["warning"] is None
    assert "warning" not in good_run.stderr and " INFO " not in good_run.stderr  # -q: nor MLflow's INFO lines

    # A test split of one class: always answering it scores 1.0, which no model can beat.
    shutil.rmtree(data / "test" / "dark")
    weak_run = runner.invoke(app, ["-q", "train", "--epochs", "1"])
    assert weak_run.exit_code == 0, weak_run.output
    weak = json.loads(weak_run.stdout)
    assert weak["metrics"]["baseline_accuracy"] == 1.0
    assert weak["beats_baseline"] is False
    assert "no better than always answering the most common label" in weak["warning"]
    assert f"warning: {weak['warning']}" in " ".join(weak_run.stderr.split())

    good_version, weak_version = (r["tag"].split(":", 1)[1] for r in (good, weak))
    listed = {v["version"]: v for v in bouncer("models")}
    assert set(listed) == {good_version, weak_version}  # this dataset's, not the other tests' versions
    assert (listed[good_version]["beats_baseline"], listed[good_version]["warning"]) == (True, None)
    assert (listed[weak_version]["beats_baseline"], listed[weak_version]["warning"]) == (False, weak["warning"])
    assert [v for v, m in listed.items() if m["serving"]] == [weak_version]  # the newest

    rolled_back = bouncer("promote", good_version, "--reason", "the new one learnt nothing")
    assert rolled_back == {"version": good_version, "tag": good["tag"], "previous_version": weak_version}
    assert [v["version"] for v in bouncer("models") if v["serving"]] == [good_version]
