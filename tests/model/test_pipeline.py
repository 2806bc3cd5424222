"""Train -> ONNX -> embed -> register -> track, on a tiny poisoned demo dataset (2 epochs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TrainedDemo
from training.data.folders import load_records
from training.labels.store import open_store
from training.pipeline.tracking import tracking_uri
from training.pipeline.training_run import run_training
from training.registry.serving import open_curator, versions_for_dataset
from training.registry.store import list_versions, load_registered
from training.settings import Settings

pytestmark = pytest.mark.slow


def test_onnx_matches_keras(trained_demo: TrainedDemo) -> None:
    parity = trained_demo.result.parity
    assert parity["max_abs_diff_probabilities"] < 1e-4
    assert parity["max_abs_diff_embedding"] < 1e-3


def test_model_store_round_trip(trained_demo: TrainedDemo) -> None:
    result = trained_demo.result
    model = load_registered(result.tag)
    assert model.tag == result.tag
    assert model.tag in {str(m.tag) for m in list_versions("bouncer")}
    assert model.metadata.data_version == result.data_version
    assert model.class_names == sorted(model.class_names) and "dog" in model.class_names

    store = open_store(trained_demo.settings)
    records = store.queries.images(split="test")[:16]
    store.close()
    predictions = model.classifier.predict(load_records(trained_demo.settings, records, model.image_size))
    assert predictions.probabilities.shape == (16, len(model.class_names))
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, atol=1e-5)

    # the stored vectors are the embedder applied to the ONNX embeddings of those images
    reduced = model.embedder.transform(predictions.embeddings)
    by_id = model.index.vectors_of([r.image_id for r in records])
    stored = np.stack([by_id[r.image_id] for r in records])
    np.testing.assert_allclose(reduced, stored, atol=1e-4)
    assert len(model.index) == trained_demo.settings.data_dir.joinpath("labels.csv").read_text().count("\n") - 1

    latest = load_registered("bouncer:latest")
    assert latest.version in {m.tag.version for m in list_versions("bouncer")}


def test_every_train_image_gets_out_of_fold_probabilities(trained_demo: TrainedDemo) -> None:
    model = load_registered(trained_demo.result.tag)
    assert model.audit is not None and model.audit.folds == trained_demo.settings.out_of_fold_folds >= 2
    with open_store(trained_demo.settings) as store:
        train = store.queries.images(split="train")
    assert sorted(model.audit.image_ids.tolist()) == sorted(r.image_id for r in train)
    np.testing.assert_allclose(model.audit.out_of_fold.sum(axis=1), 1.0, atol=1e-5)
    # held-out scores are not the final model's memory of its own training images
    assert not np.allclose(model.audit.out_of_fold, model.audit.in_sample, atol=1e-3)
    assert len(model.audit.duplicate_groups) == len(model.audit.sha256s) == len(train)
    # each image's neighbours: other train images and test images, nearest first, never itself
    audit, n = model.audit, len(train)
    with open_store(trained_demo.settings) as store:
        test = store.queries.images(split="test")
    assert audit.neighbours.shape == audit.test_neighbours.shape == (n, 10)
    assert sorted(audit.test_ids.tolist()) == sorted(r.image_id for r in test)
    assert ((audit.neighbours >= 0) & (audit.neighbours < n)).all() and (audit.test_neighbours >= 0).all()
    assert (audit.neighbours != np.arange(n)[:, None]).all()
    assert (np.diff(audit.similarities, axis=1) <= 1e-6).all() and (
        np.diff(audit.test_similarities, axis=1) <= 1e-6
    ).all()
    # and they look alike more often than chance: most share the label (5% of the demo's labels are wrong)
    labels = dict(zip([r.image_id for r in train], [r.label for r in train], strict=True))
    own = np.array([labels[i] for i in audit.image_ids.tolist()])
    assert (own[audit.neighbours] == own[:, None]).mean() > 1.5 / len(set(own))


def test_out_of_fold_can_be_switched_off(shapes_dataset, settings: Settings) -> None:
    result = run_training(settings.model_copy(update={"out_of_fold_folds": 0}), epochs=1)
    assert load_registered(result.tag).audit is None


def test_mlflow_run_has_params_metrics_artifacts_and_data_version(trained_demo: TrainedDemo) -> None:
    result = trained_demo.result
    client = MlflowClient(f"sqlite:///{trained_demo.settings.mlflow_dir / 'mlflow.db'}")
    run = client.get_run(result.mlflow_run_id)
    assert run.data.tags["data_version"] == result.data_version
    assert run.data.tags["bentoml_tag"] == result.tag
    assert run.data.params["epochs"] == "2"
    assert run.data.metrics["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == result.epochs_run
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"confusion_matrix.png", "model", "data", "evaluation.json", "drift_reference.json"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.onnx"]
    assert run.data.params["ood_method"] == "fused" and run.data.params["ood_quantile"] == "0.99"
    reference = json.loads(Path(client.download_artifacts(run.info.run_id, "drift_reference.json")).read_text())
    assert reference["source"] == "test split" and sum(reference["label_shares"].values()) == pytest.approx(1.0)
    stored = load_registered(result.tag).reference
    assert stored is not None and len(reference["vector_mean"]) == stored.vectors.shape[1]


def test_the_version_holds_an_ood_score_calibrated_on_the_test_split(trained_demo: TrainedDemo) -> None:
    model = load_registered(trained_demo.result.tag)
    assert model.ood is not None and model.reference is not None and model.classifier.has_early
    assert [c.kind for c in model.ood.components] == ["rmds", "early"] and model.ood.head is not None
    with open_store(trained_demo.settings) as store:
        test = store.queries.images(split="test")
    outputs = model.classifier.predict(load_records(trained_demo.settings, test, model.image_size))
    scores, flags = model.ood.score(outputs.embeddings, outputs.early)
    assert len(model.ood.calibration) == len(test)
    assert flags.mean() <= 0.02  # its own calibration set: 1% above the 99th percentile
    assert model.ood.calibrated is True and model.ood.held_out_min_per_class == 20  # the demo: 20 per class
    assert model.metadata.ood["ood_threshold"] == pytest.approx(model.ood.threshold)
    assert model.metadata.ood_calibrated is True and trained_demo.result.ood_calibrated is True
    # noise at the model's own input size, what the embedding alone called in distribution (issue 25): all flagged
    noise = np.random.default_rng(0).integers(0, 256, size=(20, model.image_size, model.image_size, 3))
    found = model.classifier.predict(noise.astype(np.uint8))
    noise_scores, noise_flags = model.ood.score(found.embeddings, found.early)
    assert noise_flags.all() and noise_scores.min() > np.max(scores)


def test_a_tiny_dataset_trains_an_uncalibrated_ood_score_and_says_so(shapes_dataset, settings: Settings) -> None:
    """4 test images per class (the setting asks 10): the training result and `models` say why `ood` is not answered."""
    from training.registry.serving import describe_versions

    result = run_training(settings.model_copy(update={"out_of_fold_folds": 0}), epochs=1)
    assert result.ood_calibrated is False and result.summary()["ood_calibrated"] is False
    assert result.ood_warning is not None and "4 of 'cross'" in result.ood_warning
    model = load_registered(result.tag)
    assert model.ood is not None and model.ood.calibrated is False
    assert model.metadata.ood_calibrated is False and model.metadata.ood["ood_held_out_min_per_class"] == 4
    with open_store(settings) as store:
        described = {v.tag: v for v in describe_versions(settings, store, result.tag)}
    assert described[result.tag].ood_calibrated is False and described[result.tag].ood_warning == result.ood_warning


def test_evaluating_the_registered_model_reproduces_the_training_report(trained_demo: TrainedDemo) -> None:
    with open_curator(trained_demo.settings, model_tag=trained_demo.result.tag) as curator:
        report = curator.evaluate("test")
        assert curator.model.tag == trained_demo.result.tag
    assert report.accuracy == pytest.approx(trained_demo.result.evaluation.accuracy)
    assert report.n == trained_demo.result.evaluation.n > 0
    assert len(report.misclassified) == round(report.n * (1 - report.accuracy))


def test_training_is_reproducible_with_a_seed(shapes_dataset, settings: Settings) -> None:
    tuned = settings.model_copy(update={"image_size": 16, "batch_size": 16})
    first = run_training(tuned, epochs=1)
    second = run_training(tuned, epochs=1)
    assert first.tag != second.tag
    a, b = load_registered(first.tag), load_registered(second.tag)
    with open_store(tuned) as store:
        ids = [r.image_id for r in store.queries.images()]
    va, vb = a.index.vectors_of(ids), b.index.vectors_of(ids)
    assert len(va) == len(ids)
    np.testing.assert_array_equal(np.stack([va[i] for i in ids]), np.stack([vb[i] for i in ids]))
    assert first.metrics == second.metrics
    assert first.data_version == second.data_version


def test_progress_file_tells_another_process_how_training_went(trained_demo: TrainedDemo) -> None:
    progress = json.loads((trained_demo.root / "progress.json").read_text())
    assert progress["phase"] == "registered"
    assert progress["message"] == f"registered {trained_demo.result.tag}"
    assert [h["epoch"] for h in progress["history"]] == list(range(1, trained_demo.result.epochs_run + 1))
    assert {"loss", "accuracy", "val_loss"} <= set(progress["history"][-1])


def test_mlflow_tracking_uri_from_the_environment_wins(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking_uri(settings) == f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert tracking_uri(settings) == "http://mlflow.example:5000"


def test_a_sqlite_tracking_uri_keeps_run_files_beside_its_database_not_in_the_cwd(
    shapes_dataset, settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow alone put a new experiment's files in ./mlruns of whatever directory training ran in."""
    store = tmp_path / "tracking" / "x.db"
    store.parent.mkdir()
    uri = f"sqlite:///{store}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    result = run_training(settings.model_copy(update={"out_of_fold_folds": 0}), epochs=1)

    assert list(cwd.iterdir()) == []  # no mlruns/, nothing at all
    assert not settings.mlflow_dir.exists()  # BOUNCER_MLFLOW_DIR is for the default store only
    run = MlflowClient(uri).get_run(result.mlflow_run_id)
    artifacts = store.parent / "artifacts"
    assert run.info.artifact_uri == (artifacts / run.info.run_id / "artifacts").as_uri()
    assert (artifacts / run.info.run_id / "artifacts" / "model" / "model.onnx").is_file()


def test_suspects_cli_ranks_train_images_of_the_stored_audit(
    trained_demo: TrainedDemo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    trained_demo.apply(monkeypatch)
    result = CliRunner().invoke(app, ["--quiet", "suspects", "--k", "7", "--model", trained_demo.result.tag])
    assert result.exit_code == 0, result.output
    suspects = json.loads(result.stdout)
    assert len(suspects) == 7
    assert [s["score"] for s in suspects] == sorted((s["score"] for s in suspects), reverse=True)
    assert all(s["path"].startswith("train/") and s["label"] != s["suggested_label"] for s in suspects[:1])

    flagged = CliRunner().invoke(app, ["--quiet", "suspects", "--k", "1000", "--flagged-only"])
    assert flagged.exit_code == 0, flagged.output
    assert all(s["flagged"] for s in json.loads(flagged.stdout))


def test_a_model_belongs_to_its_dataset(
    trained_demo: TrainedDemo, shapes_dataset, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A newer version trained on another dataset changes nothing for this one; its model is refused here."""
    from typer.testing import CliRunner

    from training.cli import app

    other = run_training(settings.model_copy(update={"out_of_fold_folds": 0, "image_size": 16}), epochs=1)
    with open_store(trained_demo.settings) as store:
        demo_dataset = store.dataset_id
    metadata = load_registered(trained_demo.result.tag).metadata
    assert metadata.dataset_id == demo_dataset
    assert metadata.data_dir == str(trained_demo.settings.data_dir)
    assert load_registered(other.tag).metadata.dataset_id != demo_dataset

    trained_demo.apply(monkeypatch)
    evaluated = CliRunner().invoke(app, ["-q", "evaluate", "--show", "0"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.stdout)
    with open_store(trained_demo.settings) as store:
        newest_of_this_dataset = str(versions_for_dataset("bouncer", store)[0].tag)
    assert report["model"] == newest_of_this_dataset != other.tag  # not bouncer:latest, the shapes model
    if report["model"] == trained_demo.result.tag:  # (other tests may train newer versions of the demo data)
        assert report["accuracy"] == pytest.approx(trained_demo.result.evaluation.accuracy)

    refused = CliRunner().invoke(app, ["-q", "evaluate", "--model", other.tag])
    assert refused.exit_code == 2
    assert "predicts the classes ['cross', 'ring', 'square'], but this dataset's classes are ['bear'," in refused.output
    assert "train a model on this dataset" in refused.output


def test_eighteen_training_photos_answer_an_unseen_picture_with_ood_null(tmp_path: Path, settings: Settings) -> None:
    """Issue 25's tiny folder: 18 training photos, 3 test photos. It used to answer a cat, a city and a cup with
    ~0.98 confidence and `ood: false`; with 3 held-out images the threshold means nothing, so `ood` is null."""
    from PIL import Image

    from bento_service.predictor import answer_rows, infer

    rng = np.random.default_rng(0)
    for split, colour, count in (("train", "red", 9), ("train", "blue", 9), ("test", "red", 2), ("test", "blue", 1)):
        folder = settings.data_dir / split / colour
        folder.mkdir(parents=True, exist_ok=True)
        tint = np.array([200, 40, 40] if colour == "red" else [40, 40, 200])
        for i in range(count):
            pixels = np.clip(tint + rng.normal(0, 25, (48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"IMG_{i:03d}.jpg", quality=90)
    result = run_training(settings.model_copy(update={"out_of_fold_folds": 0}), epochs=2)
    assert result.ood_calibrated is False and result.ood_warning is not None
    model = load_registered(result.tag)
    assert model.ood is not None  # fitted (a tenth of the train split ranks), but not calibrated
    size = model.image_size
    unseen = np.stack(
        [np.full((size, size, 3), (60, 170, 60), np.uint8), rng.integers(0, 256, (size, size, 3), dtype=np.uint8)]
    )
    found = infer(model, unseen, want_embeddings=False)
    for answer in answer_rows(found.probabilities, model.class_names, model.version, found.ood, found.ood_warning):
        assert answer["ood"] is None and answer["ood_warning"] == result.ood_warning
        assert 0.0 < answer["ood_score"] < 1.0
