"""What every endpoint answers, as pydantic models: the OpenAPI page documents them field by field.

Field names are the API contract (the README's table, the notebooks, the tests):
add fields freely, never rename or drop one. Most are filled straight from the
curation façade's dataclasses (``model_validate(obj, from_attributes=True)``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Largest integer SQLite and PostgreSQL (BIGINT) take: a larger id or offset overflowed in the driver (a 500).
DB_INT_MAX = 2**63 - 1


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Prediction(Out):
    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str
    ood_score: float | None = Field(
        None,
        description="0..1, higher = less like the training data: the share of held-out training-like images "
        "that look more usual (null for a version trained before OOD scores).",
    )
    ood: bool | None = Field(
        None,
        description="ood_score above the version's threshold (BOUNCER_OOD_QUANTILE); null when the version has no "
        "OOD score or its threshold is uncalibrated (see ood_warning): it cannot tell.",
    )
    ood_warning: str | None = Field(
        None, description="Why `ood` is null: too few held-out images per class to calibrate the threshold."
    )


class ImageInfo(Out):
    image_id: str
    path: str
    split: str
    label: str


class LabelChangeOut(Out):
    image_id: str
    old_label: str
    new_label: str


class RelabelResult(Out):
    event_id: int | None = Field(description="The recorded event (pass it to `undo`); null if nothing changed.")
    changed: list[LabelChangeOut]
    unchanged: list[str]


class ConfirmResult(Out):
    event_id: int = Field(description="The recorded event (pass it to `undo`).")
    confirmed: list[LabelChangeOut] = Field(description="Each image with the label confirmed (old = new).")


class HistoryEvent(Out):
    event_id: int
    kind: str = Field(
        description="relabel, confirm (a person checked the label), undo, or move (a file moved to another folder)."
    )
    created_at: str
    actor: str
    reason: str
    reverts_event_id: int | None = Field(description="For an undo: the event it reverted.")
    reverted_by_event_id: int | None = Field(description="The undo that reverted this event, if any.")
    changes: list[LabelChangeOut]


class Neighbour(Out):
    image_id: str
    path: str
    split: str
    label: str
    distance: float


class SimilarResult(Out):
    query: str | None = Field(description="The query image_id (null for an uploaded image).")
    results: list[Neighbour]


class ClassScore(Out):
    precision: float
    recall: float
    f1: float
    support: int


class MisclassifiedOut(Out):
    image_id: str
    path: str
    label: str = Field(description="The current (curated) label.")
    predicted: str
    confidence: float = Field(description="The model's probability of its prediction.")


class ConfusionMatrix(Out):
    labels: list[str]
    matrix: list[list[int]] = Field(description="Rows are the true labels, columns the predicted ones.")


class OodCalibration(Out):
    """Whether a version's OOD threshold can be trusted: in ``evaluate``, ``models`` and the train result alike."""

    ood_calibrated: bool | None = Field(
        None,
        description="The version's OOD threshold was calibrated on enough held-out images per class "
        "(BOUNCER_OOD_MIN_HELD_OUT_PER_CLASS); false: predictions answer `ood` null; null: not recorded "
        "(versions trained before this check, or without an OOD score).",
    )
    ood_warning: str | None = Field(None, description="Why the OOD threshold is uncalibrated, for people.")


class Evaluation(OodCalibration):
    n: int
    accuracy: float
    loss: float
    per_class: dict[str, ClassScore]
    confusion_matrix: ConfusionMatrix
    misclassified: list[MisclassifiedOut] = Field(description="Most confident mistakes first.")
    baseline_accuracy: float = Field(description="Accuracy of always answering the most common label.")
    beats_baseline: bool
    warning: str | None = Field(
        description="Set when the model is no better than that baseline, or the split too small to say."
    )
    model_version: str
    data_version: str
    accuracy_interval: list[float] | None = Field(
        None, description="[low, high]: where the accuracy lies, 95% (Wilson score interval); null without images."
    )


class ModelVersion(OodCalibration):
    version: str = Field(description="The version name in the BentoML store (what `promote` takes).")
    tag: str = Field(description="name:version")
    created_at: str = Field(description="When it was registered (ISO 8601).")
    metrics: dict[str, int | float] = Field(
        description="test_accuracy, test_loss, baseline_accuracy, train/val accuracy... (counts: n_test, integers)"
    )
    data_version: str | None = Field(description="Hash of the labels it was trained on (labels.csv).")
    serving: bool = Field(description="The version this server answers with now.")
    beats_baseline: bool | None = Field(
        description="Test accuracy above always answering the most common label (null: no test figures recorded)."
    )
    warning: str | None = Field(
        description="Set when the version is no better than that baseline, or its test split too small to say."
    )
    recipe: dict[str, Any] | None = Field(description="How it was trained: backbone, input size, batch, augmentation.")
    test_accuracy_interval: list[float] | None = Field(
        None, description="[low, high]: its test accuracy, 95% (Wilson); null without test figures."
    )


class SuspectOut(Out):
    image_id: str
    path: str
    label: str
    suggested_label: str = Field(
        description="Where the evidence points (both witnesses averaged): the likeliest other class when score >= "
        "0.5, else the likeliest class."
    )
    score: float = Field(
        description=(
            "0..1, higher = more likely mislabelled, the order of the list: the stronger of two witnesses, "
            "1 - the out-of-fold models' probability of its label and 1 - the k-NN probability of it among its "
            "nearest test images (trusted labels; its nearest train images when there are none); at least 0.9 "
            "for a duplicate whose label disagrees with its group. See docs/label-errors.md."
        )
    )
    flagged: bool = Field(
        description="cleanlab.find_label_issues counts it as a label issue, or it disagrees with its duplicates."
    )
    label_quality: float = Field(
        description="cleanlab self-confidence label quality on the out-of-fold probabilities (higher: likely right)."
    )
    reasons: list[str] = Field(
        description=(
            "out_of_fold (cleanlab flags it) and/or duplicate_conflict (an exact or near copy of it carries "
            "another label; the one agreeing with the group's consensus keeps its score), then the evidence in "
            "words: what the out-of-fold models give its label, and how many of its nearest neighbours and "
            "nearest test images carry its label (e.g. '3 of its 10 nearest neighbours are labelled cat, 7 dog')."
        )
    )
    out_of_fold_probability: float | None = Field(
        None, description="The probability the fold models that never saw it give its label."
    )
    neighbour_agreement: float | None = Field(
        None,
        description=(
            "Share of its nearest train images (in the embedding of a fold model that never saw it), weighted by "
            "similarity, labelled as it is now; null when none were searched (images imported after training)."
        ),
    )
    test_neighbour_agreement: float | None = Field(
        None, description="Likewise among its nearest test images, whose labels are trusted; null without them."
    )


class TracedOut(Out):
    image_id: str
    path: str
    label: str
    votes: int = Field(description="How many misclassified images it pulls to its (wrong) class.")
    suggested_label: str = Field(description="The most common true class of those images.")


class PromoteResult(Out):
    version: str
    tag: str
    previous_version: str


class TrainResult(OodCalibration):
    model_version: str
    metrics: dict[str, int | float]
    previous_metrics: dict[str, int | float] | None = Field(
        description="The serving model's scores on the same, current test labels (null if none served)."
    )
    promoted: bool
    bento_tag: str | None = Field(description="The rebuilt bento (null if not promoted or no build context).")
    tag: str
    previous_version: str | None
    promotion_message: str
    bento_message: str
    data_version: str
    mlflow_run_id: str
    epochs_run: int
    beats_baseline: bool | None = Field(
        description="Test accuracy above always answering the most common label (null without a test split)."
    )
    warning: str | None = Field(
        description="For people: the new model is no better than that, was not tested, or too few test images."
    )
    test_accuracy_interval: list[float] | None = Field(
        None, description="[low, high]: the new model's test accuracy, 95% (Wilson); null without a test split."
    )
    promotion_warning: str | None = Field(
        None, description="Set when the test split is too small to tell the new and the serving model apart."
    )


class TrainProgress(Out):
    state: str = Field(description="idle, running, succeeded, failed or canceled.")
    phase: str | None = Field(None, description="starting, importing, loading, training, ..., done (see README).")
    epoch: int | None = None
    epochs: int | None = None
    metrics: dict[str, float] | None = Field(None, description="The last epoch's loss/accuracy/val_*.")
    # Never null: BentoML's own client (SyncHTTPClient) iterates an array field without a null check.
    history: list[dict[str, float]] = Field(default_factory=list, description="Every epoch of the model so far.")
    message: str | None = None
    run_id: str | None = None
    task_id: str | None = Field(None, description="The train task of this run (what PUT /train/cancel takes).")
    started_at: float | None = None
    updated_at: float | None = None
    elapsed_s: float | None = None
    result: dict[str, Any] | None = Field(None, description="The train task's result once succeeded.")
    error: str | None = None


class DriftWindow(Out):
    start: str
    end: str
    n: int = Field(description="Predictions logged in the window.")
    verdict: str = Field(description="drift, no drift, or too few predictions.")
    reasons: list[str] = Field(default_factory=list)
    ood: dict[str, Any] = Field(
        description="share, expected, count, p_value, drift; note: why share is null (no prediction had a flag)."
    )
    labels: dict[str, Any] = Field(description="shares, reference_shares, js_distance, p_value, drift.")
    embedding: dict[str, Any] = Field(description="n_compared, ks_max, dimension, p_value, dimensions_shifted, drift.")


class DriftReport(Out):
    model_version: str
    reference: dict[str, Any] = Field(description="The baseline: source split, n, expected OOD share.")
    window: str
    alpha: float
    methods: dict[str, str] = Field(description="The test behind each question, by name.")
    verdict: str = Field(description="The newest window's verdict.")
    reasons: list[str] = Field(default_factory=list)
    windows: list[DriftWindow] = Field(default_factory=list, description="Newest first.")
    log: dict[str, int] = Field(default_factory=dict, description="This worker's log: written, queued, dropped.")


class ImportedPrediction(Out):
    image_id: str
    path: str
    label: str
    ood_score: float | None = None
    logged_at: float
