"""Which training labels are probably wrong, and what they should be.

Three sources of evidence, each a pure function of arrays:

- cleanlab's label quality on *out-of-fold* probabilities (confident learning);
- duplicates that disagree: the same picture (exact bytes, or the same 8x8
  average hash of the model input) carrying different labels;
- error tracing: the training neighbours, in the embedding space, of test images
  the model gets wrong, that carry the wrong class the model predicted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.label_store import ImageRecord

DUPLICATE_FLOOR = 0.9  # an image that disagrees with its own duplicate ranks at least this high


@dataclass(frozen=True)
class LabelIssue:
    index: int  # position in the arrays given
    score: float  # 0..1, higher = more likely mislabelled
    suggested: int  # class index
    flagged: bool  # cleanlab.find_label_issues says it is an issue
    reasons: list[str] = field(default_factory=list)


def label_quality_ranking(labels: np.ndarray, pred_probs: np.ndarray) -> list[LabelIssue]:
    """Every image, most suspicious first: score = 1 - cleanlab self-confidence label quality."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    try:
        # n_jobs=1: cleanlab otherwise forks a multiprocessing pool, which can deadlock inside a
        # threaded server worker (seen: /suspects hung in a BentoML worker)
        flagged = find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate", n_jobs=1)
    except ValueError:  # too few examples per class for confident learning's estimates
        flagged = np.zeros(len(labels), dtype=bool)
    suggested = pred_probs.argmax(axis=1)
    issues = [
        LabelIssue(
            i, float(1.0 - quality[i]), int(suggested[i]), bool(flagged[i]), ["out_of_fold"] if flagged[i] else []
        )
        for i in range(len(labels))
    ]
    return sorted(issues, key=lambda issue: -issue.score)


def in_sample_ranking(labels: np.ndarray, pred_probs: np.ndarray) -> list[LabelIssue]:
    """The naive baseline: 1 - the final model's own probability of the given label."""
    scores = 1.0 - pred_probs[np.arange(len(labels)), labels]
    suggested = pred_probs.argmax(axis=1)
    return sorted(
        (LabelIssue(i, float(scores[i]), int(suggested[i]), False) for i in range(len(labels))),
        key=lambda issue: -issue.score,
    )


def average_hash(images: np.ndarray, size: int = 8) -> list[str]:
    """64-bit average hash per image (n, s, s, 3): equal for the same picture re-encoded or resized."""
    gray = images.astype(np.float32).mean(axis=3)
    n, s, _ = gray.shape
    step = s // size
    small = gray[:, : step * size, : step * size].reshape(n, size, step, size, step).mean(axis=(2, 4))
    bits = small > small.mean(axis=(1, 2), keepdims=True)
    return [np.packbits(b.ravel()).tobytes().hex() for b in bits]


def duplicate_conflicts(keys: Sequence[Sequence[str]], labels: Sequence[int]) -> list[list[int]]:
    """Groups of indices that share any key (e.g. sha256 or average hash) but not one label."""
    parent = list(range(len(labels)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key_column in keys:
        first_seen: dict[str, int] = {}
        for i, key in enumerate(key_column):
            if key in first_seen:
                parent[find(i)] = find(first_seen[key])
            else:
                first_seen[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(labels)):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1 and len({labels[i] for i in g}) > 1]


def combine(ranking: list[LabelIssue], conflicts: list[list[int]]) -> list[LabelIssue]:
    """The cleanlab ranking, with every member of a disagreeing duplicate group raised to DUPLICATE_FLOOR."""
    in_conflict = {i for group in conflicts for i in group}
    combined = [
        LabelIssue(
            issue.index,
            max(issue.score, DUPLICATE_FLOOR) if issue.index in in_conflict else issue.score,
            issue.suggested,
            issue.flagged,
            [*issue.reasons, "duplicate_conflict"] if issue.index in in_conflict else issue.reasons,
        )
        for issue in ranking
    ]
    return sorted(combined, key=lambda issue: -issue.score)


def trace_errors(
    error_vectors: np.ndarray,
    predicted: Sequence[int],
    true_labels: Sequence[int],
    train_vectors: np.ndarray,
    train_labels: np.ndarray,
    *,
    k: int,
) -> dict[int, Counter[int]]:
    """For each misclassified image, its k nearest training images labelled with the class it was mistaken for.

    Returns train index -> Counter of the true classes of the errors it pulled. A
    poisoned cluster collects many votes, and the true classes say what it should be.
    """
    pulled: dict[int, Counter[int]] = defaultdict(Counter)
    for vector, wrong_class, true_class in zip(error_vectors, predicted, true_labels, strict=True):
        candidates = np.flatnonzero(train_labels == wrong_class)
        if len(candidates) == 0:
            continue
        distances = np.linalg.norm(train_vectors[candidates] - vector, axis=1)
        for i in candidates[np.argsort(distances, kind="stable")[:k]]:
            pulled[int(i)][int(true_class)] += 1
    return dict(pulled)


@dataclass(frozen=True)
class LabelAudit:
    """What a training run leaves for finding label errors later, stored with the model version."""

    image_ids: np.ndarray  # (n,) train images, in training order
    out_of_fold: np.ndarray  # (n, K) probabilities from models that did not see the image
    in_sample: np.ndarray  # (n, K) probabilities from the final model (the naive baseline)
    average_hashes: np.ndarray  # (n,) hex
    sha256s: np.ndarray  # (n,) hex
    folds: int

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            image_ids=self.image_ids,
            out_of_fold=self.out_of_fold,
            in_sample=self.in_sample,
            average_hashes=self.average_hashes,
            sha256s=self.sha256s,
            folds=np.int64(self.folds),
        )

    @classmethod
    def load(cls, path: Path) -> LabelAudit:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                data["image_ids"],
                data["out_of_fold"],
                data["in_sample"],
                data["average_hashes"],
                data["sha256s"],
                int(data["folds"]),
            )


@dataclass(frozen=True)
class Suspect:
    record: ImageRecord
    suggested_label: str
    score: float
    flagged: bool
    reasons: list[str]


def find_suspects(audit: LabelAudit, records: Sequence[ImageRecord], class_names: Sequence[str]) -> list[Suspect]:
    """Rank ``records`` (the train split's *current* labels) by how likely their label is wrong.

    Current labels, so a relabel takes an image off the list at once. Images the
    audit does not cover (added after training) are left out.
    """
    row_of = {image_id: i for i, image_id in enumerate(audit.image_ids.tolist())}
    known = [r for r in records if r.image_id in row_of and r.label in class_names]
    if not known:
        return []
    rows = np.array([row_of[r.image_id] for r in known])
    class_index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([class_index[r.label] for r in known])
    ranking = label_quality_ranking(labels, audit.out_of_fold[rows])
    conflicts = duplicate_conflicts([[r.sha256 for r in known], audit.average_hashes[rows].tolist()], labels.tolist())
    return [
        Suspect(known[issue.index], class_names[issue.suggested], issue.score, issue.flagged, issue.reasons)
        for issue in combine(ranking, conflicts)
    ]


@dataclass(frozen=True)
class TracedImage:
    record: ImageRecord
    votes: int  # how many misclassified images it pulled
    suggested_label: str  # the most common true class among them


def trace_to_training(
    error_vectors: np.ndarray,
    predicted: Sequence[str],
    true_labels: Sequence[str],
    train_vectors: np.ndarray,
    train_records: Sequence[ImageRecord],
    class_names: Sequence[str],
    *,
    k: int,
) -> list[TracedImage]:
    """Training images that pull misclassified images to the wrong class, most votes first."""
    index = {name: i for i, name in enumerate(class_names)}
    train_labels = np.array([index.get(r.label, -1) for r in train_records])
    pulled = trace_errors(
        error_vectors,
        [index[p] for p in predicted],
        [index[t] for t in true_labels],
        train_vectors,
        train_labels,
        k=k,
    )
    traced = [
        TracedImage(train_records[i], sum(votes.values()), class_names[votes.most_common(1)[0][0]])
        for i, votes in pulled.items()
    ]
    return sorted(traced, key=lambda t: (-t.votes, t.record.path))
