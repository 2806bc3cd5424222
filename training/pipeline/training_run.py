"""One training run as named steps: import -> load -> fit -> export -> evaluate -> embed -> audit -> register.

Each step is a function of the previous steps' output; :func:`run_training` only
orders them, tracks the run in MLflow and reports progress.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.curation.audit import LabelAudit
from training.data.decoded import (
    DecodedFile,
    DecodedImages,
    InMemoryImages,
    chunk_rows,
    chunks,
    decode_records,
    streams,
)
from training.labels.records import ImageRecord
from training.labels.store import open_store
from training.labels.sync import import_folder
from training.model.evaluation import EvaluationReport, evaluate_predictions
from training.model.inference import OnnxClassifier, Predictions
from training.model.ood import Head, OodScorer, fit_ood
from training.model.reference import DriftReference, fit_reference
from training.pipeline.checkpoints import Checkpoints, run_key
from training.pipeline.engines import open_engine
from training.pipeline.readiness import NotEnoughImages, assess
from training.progress import ProgressSink, TrainingProgress, ignore_progress, report_phase
from training.registry.metadata import VersionMetadata
from training.registry.store import register_model
from training.settings import Settings
from training.vectors.faiss_index import FaissIndex
from training.vectors.open import build_index

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from training.model.fit import TrainConfig, TrainedClassifier
    from training.model.out_of_fold import FoldRunner
    from training.model.recipe import Recipe

log = logging.getLogger(__name__)

PARITY_SAMPLE = 256  # images compared between Keras and ONNX before registering
NO_TEST_WARNING = "no test split: the model was not evaluated"


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
    notes: list[str] = field(default_factory=list)  # steps skipped or figures to doubt (readiness)
    phase_seconds: dict[str, float] = field(default_factory=dict)  # out_of_fold, neighbours (within it)
    ood_calibrated: bool | None = None  # False: too few held-out images per class; predictions answer ood: null
    ood_warning: str | None = None

    @property
    def test_accuracy_interval(self) -> list[float] | None:
        """95% interval of the test accuracy; None without a test split."""
        return self.evaluation.accuracy_interval if self.evaluation.n else None

    @property
    def beats_baseline(self) -> bool | None:
        """Test accuracy above always answering the most common label; None without a test split."""
        return self.evaluation.beats_baseline if self.evaluation.n else None

    @property
    def warning(self) -> str | None:
        """For people: the model is no better than that baseline, or there was no test split to tell."""
        return self.evaluation.warning if self.evaluation.n else NO_TEST_WARNING

    def summary(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "data_version": self.data_version,
            "metrics": self.metrics,
            "test_accuracy_interval": self.test_accuracy_interval,
            "beats_baseline": self.beats_baseline,
            "warning": self.warning,
            "notes": self.notes,
            "parity": self.parity,
            "mlflow_run_id": self.mlflow_run_id,
            "epochs_run": self.epochs_run,
            "train_wall_time_s": round(self.train_wall_time_s, 1),
            "total_wall_time_s": round(self.total_wall_time_s, 1),
            "phase_seconds": {k: round(v, 1) for k, v in self.phase_seconds.items()},
            "ood_calibrated": self.ood_calibrated,
            "ood_warning": self.ood_warning,
        }


def run_training(
    settings: Settings,
    *,
    epochs: int | None = None,
    verbose: int = 0,
    sink: ProgressSink = ignore_progress,
    metrics_file: Path | None = None,
) -> TrainingResult:
    """Train on the current curated labels and register a new model version: the steps below, in order.

    Longer than most functions on purpose: it is the table of contents of a run (each
    step a call, each phase reported), and splitting it would hide the order.
    """
    import mlflow  # heavy imports here, so importing this module (e.g. from the service) stays cheap

    from training.model.out_of_fold import run_folds_here
    from training.model.recipe import resolve_recipe
    from training.pipeline.tracking import mlflow_run

    started = time.perf_counter()
    progress = TrainingProgress(
        phase="importing", epochs=epochs or settings.epochs, message=f"scanning {settings.data_dir}"
    )
    sink(progress)
    clock = PhaseClock(progress, sink, "importing")
    data = _import(settings)
    ready = assess(settings, Counter(r.label for r in data.train), len(data.test))  # stops a hopeless run here
    log.info("%s", ready.summary())
    for note in ready.notes:
        log.warning("%s", note)
    recipe = resolve_recipe(settings, [r.path for r in data.train], epochs=epochs, verbose=verbose)
    size = recipe.config.image_size
    with open_engine(settings) as engine:
        streamed = streams(settings, len(data.train) + len(data.test), size) or engine.needs_files
        how = "into a file read a batch at a time" if streamed else "into memory"
        clock.enter("loading", f"decoding {len(data.train) + len(data.test)} images at {size} px {how}")
        x_train = decode_records(settings, data.train, size, to_file=streamed)
        x_test = decode_records(settings, data.test, size, to_file=streamed)
        checkpoints = _checkpoints(settings, data, recipe, x_train, x_test, ready.out_of_fold)

        with mlflow_run(settings, run_name=f"train-{data.version}") as run:
            mlflow.set_tags({"data_version": data.version, "data_dir": str(settings.data_dir)})
            how_trained = {"train_input": "stream" if streamed else "memory", **engine.describe()}
            mlflow.log_params({**recipe.params(), **data.params(), "embedder": settings.embedder, **how_trained})
            clock.enter("training", f"training on {len(data.train)} images")
            trained = checkpoints.main_model() if checkpoints else None
            if trained is None:
                trained = _fit(data, x_train, recipe.config, progress, sink)
                if checkpoints:
                    checkpoints.save_main(trained)
            clock.enter("exporting", "converting to ONNX and checking parity")
            exported = _export(settings, trained.model, data.classes, size, x_train, x_test)
            clock.enter("evaluating", f"evaluating the ONNX model on {len(data.test)} test images")
            train_predictions = _predict(exported.classifier, x_train)
            test_predictions = _predict(exported.classifier, x_test)
            evaluation = _evaluate(data, test_predictions)
            clock.enter("embedding", f"fitting the {settings.embedder} embedder")
            embedder, index = _embed(settings, data, train_predictions, test_predictions)
            fitting = f"the {settings.ood_method} OOD score and " if ready.ood else "no OOD score (too few images), "
            clock.enter("ood", f"fitting {fitting}the drift reference")
            ood, reference = _baseline(
                settings, data, train_predictions, test_predictions, embedder, ready.ood, exported.head
            )
            # the embeddings and early features now live in the index and the OOD score: at 1M images
            # they are ~0.8 GB that the out-of-fold models (the longest phase) need not hold
            in_sample = train_predictions.probabilities
            del train_predictions, test_predictions
            audit, phase_seconds, fold_nodes = None, {}, ()
            if ready.out_of_fold:
                folds = settings.out_of_fold_folds
                on = "" if engine.name == "local" else f" on {engine.name}"
                clock.enter("out-of-fold", f"{folds} fold models for out-of-fold probabilities{on}")
                runner = engine.fold_runner()
                if checkpoints:
                    runner = checkpoints.resuming(runner or partial(run_folds_here, progress=progress, sink=sink))
                audit, phase_seconds, fold_nodes = _label_audit(
                    settings,
                    recipe.config,
                    x_train,
                    data.train,
                    data.classes,
                    in_sample,
                    progress,
                    sink,
                    x_test,
                    data.test,
                    runner,
                )
            clock.enter("registering", "saving to the BentoML model store and MLflow")
            metrics = training_metrics(
                evaluation, _accuracy(in_sample, data.train, data.classes), trained.validation_accuracy
            )
            how_trained |= {"fold_nodes": list(fold_nodes)}
            tag = _register(
                settings,
                data,
                recipe,
                trained.epochs_run,
                exported,
                embedder,
                index,
                audit,
                metrics,
                run,
                ood,
                reference,
                how_trained,
            )
            _track(settings, tag, metrics, exported, evaluation, ood, reference)
            if checkpoints:
                checkpoints.clear()
    clock.stop()
    phase_seconds = {**clock.seconds, **phase_seconds}

    result = TrainingResult(
        tag=tag,
        data_version=data.version,
        metrics=metrics,
        evaluation=evaluation,
        parity=exported.parity,
        mlflow_run_id=run.info.run_id,
        epochs_run=trained.epochs_run,
        train_wall_time_s=trained.wall_time_s,
        total_wall_time_s=time.perf_counter() - started,
        notes=ready.notes,
        phase_seconds=phase_seconds,
        ood_calibrated=None if ood is None else ood.calibrated,
        ood_warning=None if ood is None else ood.warning,
    )
    if metrics_file is not None:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text(json.dumps(result.summary(), indent=2, sort_keys=True) + "\n")
    report_phase(progress, sink, "registered", f"registered {tag}")
    return result


@dataclass(frozen=True)
class _Dataset:
    """What is trained on: the current labels, read once at the start of the run."""

    train: list[ImageRecord]
    test: list[ImageRecord]
    classes: list[str]
    version: str
    dataset_id: str

    def params(self) -> dict[str, Any]:
        return {
            "n_train": len(self.train),
            "n_test": len(self.test),
            "n_classes": len(self.classes),
            "data_version": self.version,
        }


@dataclass(frozen=True)
class _Exported:
    keras_inference: Any  # keras.Model with the named outputs the ONNX graph has
    keras_saved: Any  # the same without the early features: what model.keras holds
    onnx_model: Any  # onnx.ModelProto
    classifier: OnnxClassifier
    parity: dict[str, float]
    head: Head  # the last layer's weights, for OOD scores that read logits


def _import(settings: Settings) -> _Dataset:
    with open_store(settings) as store:
        import_folder(settings, store)
        data = _Dataset(
            train=store.queries.images(split=settings.train_split),
            test=store.queries.images(split=settings.test_split),
            classes=store.queries.classes(),
            version=store.csv.data_version(),
            dataset_id=store.dataset_id,
        )
    if not data.train:
        raise NotEnoughImages(f"no training images under {settings.data_dir / settings.train_split}")
    if len(data.classes) < 2:
        raise NotEnoughImages(f"need at least 2 classes, found {data.classes}")
    return data


class PhaseClock:
    """Reports each phase and keeps the seconds each took (``TrainingResult.phase_seconds``, benchmarks/scale.py)."""

    def __init__(self, progress: TrainingProgress, sink: ProgressSink, first: str) -> None:
        self.progress, self.sink = progress, sink
        self.phase, self.since = first, time.perf_counter()
        self.seconds: dict[str, float] = {}

    def enter(self, phase: str, message: str) -> None:
        self.stop()
        self.phase, self.since = phase, time.perf_counter()
        report_phase(self.progress, self.sink, phase, message)

    def stop(self) -> None:
        self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + time.perf_counter() - self.since
        self.since = time.perf_counter()


def _checkpoints(
    settings: Settings,
    data: _Dataset,
    recipe: Recipe,
    x_train: DecodedImages,
    x_test: DecodedImages,
    with_folds: bool,
) -> Checkpoints | None:
    """Where this run saves its main model and fold models as they finish, so a rerun after a crash resumes.

    Only for streamed (large) datasets: a small one trains again in less time than saving takes.
    """
    from training.model.recipe import fold_config

    if not isinstance(x_train, DecodedFile):
        return None
    configs = [recipe.config, *([fold_config(recipe.config, settings)] if with_folds else [])]
    image_keys = [x_train.path.stem, getattr(x_test, "path", Path("in-memory")).stem]
    key = run_key(
        image_keys,
        [r.label for r in data.train],
        data.classes,
        configs,
        folds=settings.out_of_fold_folds if with_folds else 0,
        test_labels=[r.label for r in data.test],
    )
    return Checkpoints.open(settings, key)


def _predict(classifier: OnnxClassifier, images: DecodedImages) -> Predictions:
    """The ONNX graph's outputs for every image: the array at once, or a decoded file a chunk at a time.

    Chunks are written into arrays sized once, not concatenated: a list of parts and their
    concatenation would hold every image's outputs twice (~1.5 GB at 1M images).
    """
    if isinstance(images, InMemoryImages) or len(images) == 0:
        return classifier.predict(images.array if isinstance(images, InMemoryImages) else _empty(images))
    rows = chunk_rows(images.image_size)
    out: Predictions | None = None
    for start, chunk in zip(range(0, len(images), rows), chunks(images, rows), strict=True):
        part = classifier.predict(chunk)
        if out is None:
            out = Predictions(*(_rows_like(a, len(images)) for a in _fields(part)))  # type: ignore[arg-type]
        for whole, piece in zip(_fields(out), _fields(part), strict=True):
            if whole is not None and piece is not None:
                whole[start : start + len(piece)] = piece
    assert out is not None
    return out


def _fields(predictions: Predictions) -> tuple[np.ndarray | None, ...]:
    return predictions.probabilities, predictions.embeddings, predictions.early, predictions.features


def _empty(images: DecodedImages) -> np.ndarray:
    return np.zeros((0, images.image_size, images.image_size, 3), np.uint8)


def _rows_like(part: np.ndarray | None, rows: int) -> np.ndarray | None:
    return None if part is None else np.empty((rows, *part.shape[1:]), part.dtype)


def _fit(
    data: _Dataset,
    x_train: DecodedImages,
    config: TrainConfig,
    progress: TrainingProgress,
    sink: ProgressSink,
) -> TrainedClassifier:
    from training.model.fit import train_classifier
    from training.pipeline.tracking import MlflowEpochMetrics

    return train_classifier(
        x_train,
        [r.label for r in data.train],
        data.classes,
        config,
        progress=progress,
        sink=sink,
        extra_callbacks=[MlflowEpochMetrics()],
    )


def _export(
    settings: Settings, model: Any, classes: list[str], size: int, x_train: DecodedImages, x_test: DecodedImages
) -> _Exported:
    """ONNX graph of the trained network, refused unless it computes what Keras computes on real images."""
    from training.model.network import inference_model
    from training.model.onnx_export import check_parity, export_onnx

    keras_inference = inference_model(model)
    onnx_model = export_onnx(keras_inference, size)
    classifier = OnnxClassifier(onnx_model.SerializeToString(), classes, size)
    rng = np.random.default_rng(settings.seed)
    n = len(x_train) + len(x_test)
    rows = rng.choice(n, size=min(PARITY_SAMPLE, n), replace=False)  # rows of train and test, one after the other
    from_train = rows < len(x_train)
    sample = np.empty((len(rows), size, size, 3), np.uint8)
    sample[from_train] = x_train.take(rows[from_train])
    sample[~from_train] = x_test.take(rows[~from_train] - len(x_train))
    parity = check_parity(keras_inference, classifier, sample, tolerance=settings.parity_tolerance)
    figures = {
        "max_abs_diff_probabilities": parity.max_abs_diff_probabilities,
        "max_abs_diff_embedding": parity.max_abs_diff_embedding,
    }
    if parity.max_abs_diff_early is not None:
        figures["max_rel_diff_early_features"] = parity.max_abs_diff_early
    if parity.max_abs_diff_features is not None:
        figures["max_abs_diff_features"] = parity.max_abs_diff_features
    kernel, bias = keras_inference.get_layer("logits").get_weights()
    head = Head(np.asarray(kernel), np.asarray(bias))
    return _Exported(keras_inference, inference_model(model, early=False), onnx_model, classifier, figures, head)


def _evaluate(data: _Dataset, predictions: Predictions) -> EvaluationReport:
    return evaluate_predictions(
        predictions.probabilities,
        [r.label for r in data.test],
        data.classes,
        image_ids=[r.image_id for r in data.test],
        paths=[r.path for r in data.test],
    )


def _accuracy(probabilities: np.ndarray, records: list[ImageRecord], classes: list[str]) -> float:
    targets = np.array([classes.index(r.label) for r in records])
    return float(np.mean(probabilities.argmax(axis=1) == targets))


def _embed(settings: Settings, data: _Dataset, train: Predictions, test: Predictions) -> tuple[Pipeline, FaissIndex]:
    """The embedder is fitted on the train split only; every image's reduced vector goes into the index."""
    from training.model.embedder import fit_embedder

    rows = fit_sample(len(train.embeddings), settings)
    embedder = fit_embedder(settings.embedder, train.similarity[rows], settings.embedding_dim, seed=settings.seed)
    records = data.train + data.test
    step = 65_536  # reduced a slice at a time: no second copy of every embedding (0.5 GB at 1M images)
    vectors = np.concatenate(
        [
            embedder.transform(part[start : start + step]).astype(np.float32)
            for part in (train.similarity, test.similarity)
            for start in range(0, len(part), step)
        ]
    )
    return embedder, build_index(settings, [r.image_id for r in records], vectors)


def fit_sample(n: int, settings: Settings) -> slice | np.ndarray:
    """The train rows a fit reads: all of them (a view, the same fit as ever) up to ``fit_sample_max``, else a
    seeded sample of that many, in row order."""
    if n <= settings.fit_sample_max:
        return slice(None)
    rng = np.random.default_rng(settings.seed)
    return np.sort(rng.choice(n, size=settings.fit_sample_max, replace=False))


def _baseline(
    settings: Settings,
    data: _Dataset,
    train: Predictions,
    test: Predictions,
    embedder: Pipeline,
    with_ood: bool,
    head: Head,
) -> tuple[OodScorer | None, DriftReference]:
    """The OOD score (fitted on the train split, calibrated on the held-out test split) and the drift baseline.

    No OOD score when the dataset is too small for one (``readiness``): its predictions carry none.
    """
    rows = fit_sample(len(data.train), settings)
    targets = np.array([data.classes.index(r.label) for r in data.train])
    ood = (
        fit_ood(
            settings.ood_method,
            train.embeddings[rows],
            targets[rows],
            test.embeddings,
            held_out_labels=np.array([data.classes.index(r.label) for r in data.test], dtype=np.int64),
            train_early=None if train.early is None else train.early[rows],
            held_out_early=test.early,
            head=head,
            k=settings.ood_k,
            reference_max=settings.ood_reference_max,
            quantile=settings.ood_quantile,
            seed=settings.seed,
            min_held_out_per_class=settings.ood_min_held_out_per_class,
            class_names=data.classes,
        )
        if with_ood
        else None
    )
    if ood is not None and not ood.calibrated:
        log.warning("OOD score uncalibrated: %s", ood.warning)
    held_out, source = (test, settings.test_split) if len(data.test) else (train, settings.train_split)
    vectors = embedder.transform(held_out.similarity).astype(np.float32)
    reference = fit_reference(
        data.classes,
        held_out.probabilities,
        vectors,
        ood_share=1.0 - settings.ood_quantile,
        source=f"{source} split",
        seed=settings.seed,
    )
    return ood, reference


def _register(
    settings: Settings,
    data: _Dataset,
    recipe: Recipe,
    epochs_run: int,
    exported: _Exported,
    embedder: Pipeline,
    index: FaissIndex,
    audit: LabelAudit | None,
    metrics: dict[str, float],
    run: Any,
    ood: OodScorer | None,
    reference: DriftReference,
    how_trained: dict[str, Any],
) -> str:
    """A new version in the BentoML store, with what serving needs and metadata that says how it was made.

    ``how_trained``: the input path and the engine (``train_input``, ``train_engine``, ``fold_nodes``...).
    """
    metadata = VersionMetadata(
        class_names=data.classes,
        image_size=recipe.config.image_size,
        recipe=recipe.params(),
        data_version=data.version,
        dataset_id=data.dataset_id,
        data_dir=str(settings.data_dir),
        metrics=metrics,
        parity=exported.parity,
        embedder=settings.embedder,
        embedding_dim=index.dim,
        epochs_run=epochs_run,
        mlflow_run_id=run.info.run_id,
        onnx_opset=exported.onnx_model.opset_import[0].version,
        out_of_fold_folds=0 if audit is None else audit.folds,
        ood=ood.describe() if ood is not None else {},
        **how_trained,
    )
    return register_model(
        settings.model_name,
        exported.onnx_model,
        embedder,
        index,
        metadata=metadata,
        labels={"data_version": data.version},
        keras_model=exported.keras_saved,
        audit=audit,
        ood=ood,
        reference=reference,
    )


def _track(
    settings: Settings,
    tag: str,
    metrics: dict[str, float],
    exported: _Exported,
    evaluation: EvaluationReport,
    ood: OodScorer | None,
    reference: DriftReference,
) -> None:
    import mlflow
    import onnx

    from training.pipeline.tracking import log_confusion_matrix, log_file

    mlflow.log_metrics({**metrics, **{f"parity_{k}": v for k, v in exported.parity.items()}})
    mlflow.set_tag("bentoml_tag", tag)
    log_confusion_matrix(evaluation, "confusion_matrix.png")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx.save(exported.onnx_model, onnx_path)
        log_file(onnx_path, "model")
    if settings.labels_csv.exists():
        log_file(settings.labels_csv, "data")
    mlflow.log_dict(evaluation.as_dict(), "evaluation.json")
    if ood is not None:
        mlflow.log_params({k: v for k, v in ood.describe().items() if k in ("ood_method", "ood_k", "ood_quantile")})
        mlflow.log_metrics(
            {
                "ood_threshold_raw": ood.threshold_raw,
                "ood_calibration_size": len(ood.calibration),
                "ood_calibrated": float(bool(ood.calibrated)),
            }
        )
    mlflow.log_dict(reference.statistics(), "drift_reference.json")  # what `bouncer drift` compares with


def training_metrics(
    evaluation: EvaluationReport, train_accuracy: float, validation_accuracy: float | None
) -> dict[str, float]:
    """What a version is judged by. Without a test split there are no test figures, not zeros."""
    metrics: dict[str, float] = {"train_accuracy": train_accuracy, "n_test": evaluation.n}
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
    x_train: DecodedImages,
    records: list[ImageRecord],
    classes: list[str],
    in_sample: np.ndarray,
    progress: TrainingProgress,
    sink: ProgressSink,
    x_test: DecodedImages,
    test: list[ImageRecord],
    runner: FoldRunner | None,
) -> tuple[LabelAudit, dict[str, float], tuple[str, ...]]:
    from training.curation.duplicates import near_duplicate_groups
    from training.model.out_of_fold import out_of_fold_probabilities
    from training.model.recipe import fold_config

    started = time.perf_counter()
    found = out_of_fold_probabilities(
        x_train,
        [r.label for r in records],
        classes,
        fold_config(config, settings),
        folds=settings.out_of_fold_folds,
        test_images=x_test,
        progress=progress,
        sink=sink,
        runner=runner,
        exact_search_max=settings.exact_search_max,
    )
    seconds = {"out_of_fold": time.perf_counter() - started, "neighbours": found.neighbour_seconds}
    log.info("out-of-fold probabilities in %.1fs, of which neighbours %.1fs", *seconds.values())
    started = time.perf_counter()
    duplicate_groups = near_duplicate_groups(
        x_train, tolerance=settings.near_duplicate_tolerance, exact_max=settings.exact_search_max
    )
    seconds["near_duplicates"] = time.perf_counter() - started
    audit = LabelAudit(
        image_ids=np.array([r.image_id for r in records]),
        out_of_fold=found.probabilities,
        in_sample=in_sample,
        duplicate_groups=duplicate_groups,
        sha256s=np.array([r.sha256 for r in records]),
        folds=settings.out_of_fold_folds,
        neighbours=found.neighbours,
        similarities=found.similarities,
        test_ids=np.array([r.image_id for r in test], dtype=str),
        test_neighbours=found.test_neighbours,
        test_similarities=found.test_similarities,
    )
    return audit, seconds, found.fold_nodes
