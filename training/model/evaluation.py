"""Score predicted probabilities against the curated labels."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

PROBABILITY_FLOOR = 1e-7  # keeps log-loss finite when the model is certain and wrong
CONFIDENCE = 0.95  # of every accuracy interval (Wilson's score interval for a binomial proportion)
# An accuracy known only within a wider interval says little and cannot tell two models apart:
# 9 test images all right give [0.70, 1.00]; 2,000 at 0.95 give [0.94, 0.96].
WIDE_INTERVAL = 0.2


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
    warning: str | None = None  # no better than that baseline (its embedding is noise too), or too few images to say
    accuracy_interval: list[float] | None = None  # [low, high], 95% (CONFIDENCE); None without images

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
    correct = int(np.sum(predicted == targets))
    accuracy = correct / n
    baseline = majority_baseline(labels)
    interval = accuracy_interval(correct, n)
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
        warning=join_warnings(weak_model_warning(accuracy, baseline), small_test_warning(accuracy, n)),
        accuracy_interval=list(interval),
    )


def accuracy_interval(correct: int, n: int) -> tuple[float, float]:
    """Wilson's 95% interval for an accuracy of ``correct`` out of ``n`` (sound at 0, 1 and small n)."""
    from scipy.stats import binomtest

    if n <= 0:
        return 0.0, 1.0
    interval = binomtest(int(correct), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return round(float(interval.low), 4), round(float(interval.high), 4)


def small_test_warning(accuracy: float, n: int) -> str | None:
    """A sentence when ``n`` test images leave the accuracy too uncertain to read or to compare models by."""
    if n <= 0:
        return None
    low, high = accuracy_interval(round(accuracy * n), n)
    if high - low <= WIDE_INTERVAL:
        return None
    return (
        f"only {n} test images: the accuracy {accuracy:.3f} could be anywhere in [{low:.2f}, {high:.2f}] "
        f"({CONFIDENCE:.0%}), too wide to trust or to tell two models apart; add test images"
    )


def join_warnings(*warnings: str | None) -> str | None:
    """Every warning that applies, in one sentence list; None when none does."""
    present = [w for w in warnings if w]
    return "; ".join(present) if present else None


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


def indistinguishable_warning(new_wrong: set[str], old_wrong: set[str], n: int) -> str | None:
    """A sentence when the test split cannot tell two models apart (McNemar's exact test, p >= 1 - CONFIDENCE).

    Paired on the same images: only those exactly one of them gets wrong say anything.
    """
    from scipy.stats import binomtest

    fixed, broken = len(old_wrong - new_wrong), len(new_wrong - old_wrong)
    if n <= 0 or fixed + broken == 0:  # the same answer on every image: nothing to tell apart
        return None
    p_value = float(binomtest(min(fixed, broken), fixed + broken).pvalue)
    if p_value < 1 - CONFIDENCE:
        return None
    return (
        f"the {n} test images cannot tell the two models apart: the new one is right on {fixed} images the serving "
        f"one gets wrong and wrong on {broken} it gets right (McNemar p = {p_value:.2f}); the gate's decision is "
        "noise here, add test images to make it mean something"
    )
