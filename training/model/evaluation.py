"""Score predicted probabilities against the curated labels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

PROBABILITY_FLOOR = 1e-7  # keeps log-loss finite when the model is certain and wrong


@dataclass(frozen=True)
class ClassScore:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Misclassified:
    image_id: str
    path: str
    label: str
    predicted: str
    confidence: float


@dataclass
class EvaluationReport:
    n: int
    accuracy: float
    loss: float
    per_class: dict[str, ClassScore]
    confusion_matrix: dict[str, Any]  # {"labels": [...], "matrix": [[...]]}, rows = true label
    misclassified: list[Misclassified] = field(default_factory=list)
    baseline_accuracy: float = 0.0  # always answering the most common label
    beats_baseline: bool = False
    warning: str | None = None  # set when the model is no better than that: its embedding is noise too

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_predictions(
    probabilities: np.ndarray,
    labels: Sequence[str],
    class_names: Sequence[str],
    *,
    image_ids: Sequence[str],
    paths: Sequence[str],
) -> EvaluationReport:
    """Accuracy, log-loss, per-class P/R/F1, confusion matrix and the misclassified images.

    A label the model does not know (a class added after training) counts as an
    error and gets probability 0 in the loss.
    """
    class_names = list(class_names)
    n = len(labels)
    if n == 0:
        empty = {"labels": class_names, "matrix": [[0] * len(class_names) for _ in class_names]}
        return EvaluationReport(0, 0.0, 0.0, {}, empty, [])
    index = {name: i for i, name in enumerate(class_names)}
    targets = np.array([index.get(label, -1) for label in labels])
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    p_true = np.where(targets >= 0, probabilities[np.arange(n), np.clip(targets, 0, None)], 0.0)
    loss = float(-np.mean(np.log(np.clip(p_true, PROBABILITY_FLOOR, 1.0))))

    all_labels = class_names + sorted(set(labels) - set(class_names))
    true_names = list(labels)
    predicted_names = [class_names[i] for i in predicted]
    precision, recall, f1, support = precision_recall_fscore_support(
        true_names, predicted_names, labels=all_labels, zero_division=0
    )
    matrix = confusion_matrix(true_names, predicted_names, labels=all_labels)
    wrong = np.flatnonzero(predicted != targets)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]  # most confident mistakes first
    accuracy = float(np.mean(predicted == targets))
    baseline = majority_baseline(labels)
    return EvaluationReport(
        n=n,
        accuracy=accuracy,
        loss=loss,
        per_class={
            name: ClassScore(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, name in enumerate(all_labels)
        },
        confusion_matrix={"labels": all_labels, "matrix": matrix.tolist()},
        misclassified=[
            Misclassified(image_ids[i], paths[i], labels[i], predicted_names[i], float(confidence[i])) for i in wrong
        ],
        baseline_accuracy=baseline,
        beats_baseline=accuracy > baseline,
        warning=weak_model_warning(accuracy, baseline),
    )


def majority_baseline(labels: Sequence[str]) -> float:
    """Accuracy of always answering the most common label: what a model must beat to have learnt anything."""
    if not labels:
        return 0.0
    return max(Counter(labels).values()) / len(labels)


def weak_model_warning(accuracy: float, baseline: float) -> str | None:
    """A sentence for people when the model is no better than the majority class, else None."""
    if accuracy > baseline:
        return None
    return (
        f"the model is no better than always answering the most common label (accuracy {accuracy:.3f} <= "
        f"{baseline:.3f}): it has not learnt these classes, and its embedding is noise, so similar/trace/suspects "
        "are not worth reviewing; check the data and the recipe (more epochs, BOUNCER_BACKBONE) and retrain"
    )
