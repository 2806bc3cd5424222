"""The steps wired together: import -> train -> export -> evaluate -> embed -> register.

Each step is a function of the previous step's output; this module only orders
them, tracks the run in MLflow and reports progress.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.dataset import load_images, scan_folder
from training.evaluate import EvaluationReport, evaluate_predictions
from training.label_store import ImageRecord, LabelStore, SyncReport
from training.progress import PHASES, ProgressSink, TrainingProgress, ignore_progress
from training.registry import RegisteredModel, load_registered
from training.settings import Settings

if TYPE_CHECKING:
    from training.train import TrainConfig

log = logging.getLogger(__name__)

PARITY_SAMPLE = 256  # images compared between Keras and ONNX before registering


@dataclass
class TrainingResult:
    tag: str
    data_version: str
    metrics: dict[str, float]
    evaluation: EvaluationReport
    parity: dict[str, float]
    mlflow_run_id: str
    epochs_run: int
    train_wall_time_s: float
    total_wall_time_s: float

    def summary(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "data_version": self.data_version,
            "metrics": self.metrics,
            "parity": self.parity,
            "mlflow_run_id": self.mlflow_run_id,
            "epochs_run": self.epochs_run,
            "train_wall_time_s": round(self.train_wall_time_s, 1),
            "total_wall_time_s": round(self.total_wall_time_s, 1),
        }


def open_store(settings: Settings) -> LabelStore:
    if settings.database_url is None and not settings.data_dir.is_dir():
        raise FileNotFoundError(f"data directory {settings.data_dir} does not exist (set BOUNCER_DATA_DIR)")
    return LabelStore(
        settings.label_db_url, labels_csv=settings.labels_csv if settings.export_labels_on_change else None
    )


def import_dataset(settings: Settings, store: LabelStore) -> SyncReport:
    """Scan DATA_DIR and merge it into the label store (which rewrites labels.csv)."""
    scan = scan_folder(
        settings.data_dir, settings.splits, max_pixels=settings.max_image_pixels, known=store.fingerprints()
    )
    report = store.sync(scan)
    log.info(
        "import: %d added, %d removed, %d moved, %d restored, %d unchanged, %d skipped",
        report.added,
        report.removed,
        report.moved,
        report.restored,
        report.unchanged,
        len(report.skipped),
    )
    return report


def load_split(settings: Settings, records: list[ImageRecord], image_size: int) -> np.ndarray:
    return load_images(settings.data_dir, [r.path for r in records], image_size, max_pixels=settings.max_image_pixels)


def run_training(
    settings: Settings,
    *,
    epochs: int | None = None,
    verbose: int = 0,
    sink: ProgressSink = ignore_progress,
    metrics_file: Path | None = None,
) -> TrainingResult:
    """Train on the current curated labels and register a new model version."""
    # Heavy imports here, so importing this module (e.g. from the service) stays cheap.
    import mlflow
    import onnx

    from training.embedder import EmbeddingIndex, fit_embedder
    from training.export import check_parity, export_onnx
    from training.inference import OnnxClassifier
    from training.model import inference_model
    from training.recipe import resolve_recipe
    from training.registry import register_model
    from training.tracking import MlflowEpochMetrics, log_confusion_matrix, log_file, mlflow_run
    from training.train import train_classifier

    started = time.perf_counter()
    progress = TrainingProgress(phase="importing", epochs=epochs or settings.epochs)
    sink(progress)
    with open_store(settings) as store:
        import_dataset(settings, store)
        classes = store.classes()
        train_records = store.images(split=settings.train_split)
        test_records = store.images(split=settings.test_split)
        data_version = store.data_version()
        dataset_id = store.dataset_id
    if not train_records:
        raise ValueError(f"no training images under {settings.data_dir / settings.train_split}")
    if len(classes) < 2:
        raise ValueError(f"need at least 2 classes, found {classes}")

    recipe = resolve_recipe(settings, [r.path for r in train_records], epochs=epochs, verbose=verbose)
    config = recipe.config
    size = config.image_size
    report_phase(progress, sink, "loading", f"decoding {len(train_records) + len(test_records)} images at {size} px")
    x_train = load_split(settings, train_records, size)
    x_test = load_split(settings, test_records, size)

    with mlflow_run(settings, run_name=f"train-{data_version}") as run:
        mlflow.set_tags({"data_version": data_version, "data_dir": str(settings.data_dir)})
        mlflow.log_params(
            {
                **recipe.params(),
                "embedder": settings.embedder,
                "embedding_dim": settings.embedding_dim,
                "n_train": len(train_records),
                "n_test": len(test_records),
                "n_classes": len(classes),
                "data_version": data_version,
            }
        )
        report_phase(progress, sink, "training", f"training on {len(train_records)} images")
        trained = train_classifier(
            x_train,
            [r.label for r in train_records],
            classes,
            config,
            progress=progress,
            sink=sink,
            extra_callbacks=[MlflowEpochMetrics()],
        )

        report_phase(progress, sink, "exporting", "converting to ONNX and checking parity")
        keras_inference = inference_model(trained.model)
        onnx_model = export_onnx(keras_inference, size)
        classifier = OnnxClassifier(onnx_model.SerializeToString(), classes, size)
        rng = np.random.default_rng(settings.seed)
        pool = np.concatenate([x_train, x_test]) if len(x_test) else x_train
        sample = pool[rng.choice(len(pool), size=min(PARITY_SAMPLE, len(pool)), replace=False)]
        parity = check_parity(keras_inference, classifier, sample, tolerance=settings.parity_tolerance)

        report_phase(progress, sink, "evaluating", f"evaluating the ONNX model on {len(test_records)} test images")
        train_predictions = classifier.predict(x_train)
        test_predictions = classifier.predict(x_test)
        evaluation = evaluate_predictions(
            test_predictions.probabilities,
            [r.label for r in test_records],
            classes,
            image_ids=[r.image_id for r in test_records],
            paths=[r.path for r in test_records],
        )
        train_accuracy = float(
            np.mean(
                train_predictions.probabilities.argmax(axis=1)
                == np.array([classes.index(r.label) for r in train_records])
            )
        )

        report_phase(progress, sink, "embedding", f"fitting the {settings.embedder} embedder")
        embedder = fit_embedder(
            settings.embedder, train_predictions.embeddings, settings.embedding_dim, seed=settings.seed
        )
        records = train_records + test_records
        index = EmbeddingIndex.build(
            embedder,
            [r.image_id for r in records],
            [r.split for r in records],
            np.concatenate([train_predictions.embeddings, test_predictions.embeddings]),
        )

        audit = None
        if settings.out_of_fold_folds >= 2:
            report_phase(
                progress, sink, "out-of-fold", f"{settings.out_of_fold_folds} fold models for out-of-fold probabilities"
            )
            audit = _label_audit(settings, config, x_train, train_records, classes, train_predictions, progress, sink)

        report_phase(progress, sink, "registering", "saving to the BentoML model store and MLflow")
        metrics = training_metrics(evaluation, train_accuracy, trained.validation_accuracy)
        parity_figures = {
            "max_abs_diff_probabilities": parity.max_abs_diff_probabilities,
            "max_abs_diff_embedding": parity.max_abs_diff_embedding,
        }
        tag = register_model(
            settings.model_name,
            onnx_model,
            embedder,
            index,
            metadata={
                "class_names": classes,
                "image_size": size,
                "recipe": recipe.params(),
                "data_version": data_version,
                "dataset_id": dataset_id,  # whose model this is: see registry.resolve_serving_tag
                "data_dir": str(settings.data_dir),  # for humans reading `bentoml models get`
                "metrics": metrics,
                "parity": parity_figures,
                "embedder": settings.embedder,
                "embedding_dim": int(index.vectors.shape[1]),
                "epochs_run": trained.epochs_run,
                "mlflow_run_id": run.info.run_id,
                "onnx_opset": onnx_model.opset_import[0].version,
                "out_of_fold_folds": 0 if audit is None else audit.folds,
            },
            labels={"data_version": data_version},
            keras_model=keras_inference,
            audit=audit,
        )
        mlflow.log_metrics({**metrics, **{f"parity_{k}": v for k, v in parity_figures.items()}})
        mlflow.set_tag("bentoml_tag", tag)
        log_confusion_matrix(evaluation, "confusion_matrix.png")
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "model.onnx"
            onnx.save(onnx_model, onnx_path)
            log_file(onnx_path, "model")
        if settings.labels_csv.exists():
            log_file(settings.labels_csv, "data")
        mlflow.log_dict(evaluation.as_dict(), "evaluation.json")

    result = TrainingResult(
        tag=tag,
        data_version=data_version,
        metrics=metrics,
        evaluation=evaluation,
        parity=parity_figures,
        mlflow_run_id=run.info.run_id,
        epochs_run=trained.epochs_run,
        train_wall_time_s=trained.wall_time_s,
        total_wall_time_s=time.perf_counter() - started,
    )
    if metrics_file is not None:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text(json.dumps(result.summary(), indent=2, sort_keys=True) + "\n")
    report_phase(progress, sink, "registered", f"registered {tag}")
    return result


def training_metrics(
    evaluation: EvaluationReport, train_accuracy: float, validation_accuracy: float | None
) -> dict[str, float]:
    """What a version is judged by. Without a test split there are no test figures, not zeros."""
    metrics = {"train_accuracy": train_accuracy, "n_test": float(evaluation.n)}
    if validation_accuracy is not None:
        metrics["val_accuracy"] = validation_accuracy
    if evaluation.n:
        metrics |= {
            "test_accuracy": evaluation.accuracy,
            "test_loss": evaluation.loss,
            "baseline_accuracy": evaluation.baseline_accuracy,
        }
    else:
        log.warning("no test split: the version has no test accuracy (the train task promotes it only when forced)")
    return metrics


def _label_audit(
    settings: Settings,
    config: TrainConfig,
    x_train: np.ndarray,
    records: list[ImageRecord],
    classes: list[str],
    in_sample: Any,
    progress: TrainingProgress,
    sink: ProgressSink,
) -> Any:
    from training.label_issues import LabelAudit, near_duplicate_groups
    from training.out_of_fold import out_of_fold_probabilities
    from training.recipe import fold_config

    started = time.perf_counter()
    probabilities = out_of_fold_probabilities(
        x_train,
        [r.label for r in records],
        classes,
        fold_config(config, settings),
        folds=settings.out_of_fold_folds,
        progress=progress,
        sink=sink,
    )
    log.info("out-of-fold probabilities in %.1fs", time.perf_counter() - started)
    return LabelAudit(
        image_ids=np.array([r.image_id for r in records]),
        out_of_fold=probabilities,
        in_sample=in_sample.probabilities,
        duplicate_groups=near_duplicate_groups(x_train, tolerance=settings.near_duplicate_tolerance),
        sha256s=np.array([r.sha256 for r in records]),
        folds=settings.out_of_fold_folds,
    )


def evaluate_split(settings: Settings, store: LabelStore, model: RegisteredModel, split: str) -> EvaluationReport:
    """Evaluate a loaded model version (its ONNX graph) on the current labels of ``split``."""
    records = store.images(split=split)
    predictions = model.classifier.predict(load_split(settings, records, model.image_size))
    return evaluate_predictions(
        predictions.probabilities,
        [r.label for r in records],
        model.class_names,
        image_ids=[r.image_id for r in records],
        paths=[r.path for r in records],
    )


def evaluate_registered(settings: Settings, tag: str, split: str) -> tuple[str, EvaluationReport]:
    """Evaluate a stored model version on the current labels of ``split``."""
    model = load_registered(tag)
    with open_store(settings) as store:
        return model.tag, evaluate_split(settings, store, model, split)


def report_phase(progress: TrainingProgress, sink: ProgressSink, phase: str, message: str) -> None:
    # clients switch on the phase names; a new phase must be added to the published list first
    if phase not in PHASES:
        raise ValueError(f"unknown training phase {phase!r}; add it to training.progress.PHASES")
    progress.phase, progress.message = phase, message
    sink(progress)
