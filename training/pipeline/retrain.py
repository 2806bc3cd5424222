"""The train task's work: train on the current labels, promote if not worse, rebuild the bento.

The gate compares both models on the *current* test labels, so a relabelled test
split does not make the serving model look better or worse than it is.
"""

from __future__ import annotations

import logging

from training.curation.labels import Labels
from training.model.evaluation import indistinguishable_warning
from training.pipeline.results import RetrainResult
from training.pipeline.training_run import run_training
from training.progress import ProgressSink, TrainingProgress, ignore_progress, report_phase
from training.registry.serving import Registry, version_of
from training.settings import Settings

log = logging.getLogger(__name__)

GATE_METRIC = "test_accuracy"


def should_promote(new: float | None, serving: float | None, *, force: bool) -> tuple[bool, str]:
    """Promote when forced, when nothing serves yet, or when the new score is not worse."""
    if force:
        return True, "promoted (forced)"
    if new is None:
        return False, f"not promoted: no test split to measure {GATE_METRIC} on (use force to promote anyway)"
    if serving is None:
        return True, "promoted (no model was serving)"
    if new >= serving:
        return True, f"promoted: {GATE_METRIC} {new:.4f} >= {serving:.4f} of the serving model"
    return False, f"not promoted: {GATE_METRIC} {new:.4f} < {serving:.4f} of the serving model (use force to override)"


def retrain(
    settings: Settings,
    *,
    serving_tag: str | None,
    epochs: int | None = None,
    force: bool = False,
    actor: str = "train-task",
    sink: ProgressSink = ignore_progress,
) -> RetrainResult:
    """Train, compare with ``serving_tag`` on today's test labels, promote, rebuild the bento.

    Long on purpose: the train task's whole protocol in order (train, compare, promote, build, report).
    """
    seen: list[TrainingProgress] = []

    def remember(progress: TrainingProgress) -> None:
        seen[:] = [progress]
        sink(progress)

    trained = run_training(settings, epochs=epochs, sink=remember)
    progress = seen[0]

    previous_metrics: dict[str, float] | None = None
    promotion_warning: str | None = None
    with Labels.open(settings) as labels:
        registry = Registry(labels)
        if serving_tag is not None and GATE_METRIC in trained.metrics:  # without a test split: nothing to compare
            report_phase(progress, sink, "comparing", f"evaluating the serving model {serving_tag} on the test split")
            report = registry.curator(serving_tag).evaluate(settings.test_split)
            previous_metrics = {"test_accuracy": report.accuracy, "test_loss": report.loss, "n_test": report.n}
            promotion_warning = indistinguishable_warning(
                {m.image_id for m in trained.evaluation.misclassified},
                {m.image_id for m in report.misclassified},
                report.n,
            )
        promoted, message = should_promote(
            trained.metrics.get(GATE_METRIC),
            None if previous_metrics is None else previous_metrics[GATE_METRIC],
            force=force,
        )
        if promoted:
            report_phase(progress, sink, "promoting", message)
            registry.promote(version_of(trained.tag), actor=actor, reason=message)
        elif serving_tag is not None and registry.promoted_tag() is None:
            # Nothing was promoted yet, so "the newest of this dataset" chose what serves: that
            # would now be the rejected version, for the CLI and for any server started later.
            # Put the kept choice on record instead.
            registry.keep_serving(serving_tag, actor=actor, reason=f"kept: {message}")
    _tag_mlflow_run(settings, trained.mlflow_run_id, promoted)

    if not promoted:
        bento_tag, bento_message = None, "bento not rebuilt: the new version was not promoted"
    elif not settings.build_bento:
        bento_tag, bento_message = None, "bento not rebuilt: BOUNCER_BUILD_BENTO is off"
    else:
        report_phase(progress, sink, "building", "bentoml build")
        outcome = registry.build_bento(trained.tag)
        bento_tag, bento_message = outcome.tag, outcome.message
    report_phase(progress, sink, "done", f"{message}; {bento_message}")
    return RetrainResult(
        model_version=version_of(trained.tag),
        tag=trained.tag,
        metrics=trained.metrics,
        previous_version=None if serving_tag is None else version_of(serving_tag),
        previous_metrics=previous_metrics,
        promoted=promoted,
        promotion_message=message,
        bento_tag=bento_tag,
        bento_message=bento_message,
        data_version=trained.data_version,
        mlflow_run_id=trained.mlflow_run_id,
        epochs_run=trained.epochs_run,
        beats_baseline=trained.beats_baseline,
        warning=trained.warning,
        test_accuracy_interval=trained.test_accuracy_interval,
        promotion_warning=promotion_warning,
        ood_calibrated=trained.ood_calibrated,
        ood_warning=trained.ood_warning,
    )


def _tag_mlflow_run(settings: Settings, run_id: str, promoted: bool) -> None:
    import mlflow

    from training.pipeline.tracking import tracking_uri

    mlflow.MlflowClient(tracking_uri(settings)).set_tag(run_id, "promoted", str(promoted).lower())
