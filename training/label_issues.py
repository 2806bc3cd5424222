"""Which training labels are probably wrong, and what they should be.

Three sources of evidence, each a pure function of arrays:

- cleanlab's label quality on *out-of-fold* probabilities (confident learning);
- duplicates that disagree: the same picture (exact bytes, or thumbnails of the
  model input within a small distance) carrying different labels;
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
    score: float  # 0..1, higher = more likely mislabelled; above 0.5 exactly when flagged
    suggested: int  # class index
    flagged: bool  # cleanlab.find_label_issues (or a duplicate conflict) says it is an issue
    quality: float  # cleanlab's self-confidence label quality, 0..1 (higher = label more likely right)
    reasons: list[str] = field(default_factory=list)


def label_quality_ranking(labels: np.ndarray, pred_probs: np.ndarray) -> list[LabelIssue]:
    """Every image, most suspicious first: cleanlab's flagged issues, then the rest, each by label quality.

    cleanlab's verdict (confident learning: per-class thresholds and the estimated
    noise rates) separates errors better than one global confidence cut, so it
    decides the first part of the list; label quality orders within each part. The
    score keeps that order readable: (flagged + 1 - quality) / 2.
    """
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
            i,
            float((flagged[i] + 1.0 - quality[i]) / 2),
            int(suggested[i]),
            bool(flagged[i]),
            float(quality[i]),
            ["out_of_fold"] if flagged[i] else [],
        )
        for i in range(len(labels))
    ]
    return sorted(issues, key=lambda issue: -issue.score)


def in_sample_ranking(labels: np.ndarray, pred_probs: np.ndarray) -> list[LabelIssue]:
    """The naive baseline: 1 - the final model's own probability of the given label."""
    quality = pred_probs[np.arange(len(labels)), labels]
    suggested = pred_probs.argmax(axis=1)
    issues = [LabelIssue(i, float(1 - q), int(suggested[i]), False, float(q)) for i, q in enumerate(quality)]
    return sorted(issues, key=lambda issue: -issue.score)


def thumbnails(images: np.ndarray, size: int = 16) -> np.ndarray:
    """(n, size*size) grey thumbnails of (n, s, s, 3) images, mean-centred.

    Block means make them blind to re-encoding and resizing noise, centring to a
    uniform brightness shift, so copies of one picture land within a small distance.
    """
    grey = images.astype(np.float32).mean(axis=3) / 255.0
    n, s, _ = grey.shape
    size = min(size, s)
    step = s // size
    small = grey[:, : step * size, : step * size].reshape(n, size, step, size, step).mean(axis=(2, 4)).reshape(n, -1)
    return small - small.mean(axis=1, keepdims=True)


def near_duplicate_groups(images: np.ndarray, *, tolerance: float) -> np.ndarray:
    """Group id per image (-1: no near duplicate): connected components of thumbnails closer than ``tolerance``.

    ``tolerance`` is an RMS difference in 0..1 grey levels (BOUNCER_NEAR_DUPLICATE_TOLERANCE).
    """
    from scipy.sparse.csgraph import connected_components
    from sklearn.neighbors import NearestNeighbors

    if len(images) == 0:
        return np.zeros(0, dtype=np.int64)
    thumbs = thumbnails(images)
    radius = tolerance * np.sqrt(thumbs.shape[1])
    graph = NearestNeighbors(radius=radius).fit(thumbs).radius_neighbors_graph(thumbs, mode="connectivity")
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    return np.where(sizes[component] > 1, component, -1).astype(np.int64)


def duplicate_conflicts(keys: Sequence[Sequence[str]], labels: Sequence[int]) -> list[list[int]]:
    """Groups of indices that share any key (e.g. sha256 or near-duplicate group) but not one label."""
    parent = list(range(len(labels)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for key_column in keys:
        first_seen: dict[str, int] = {}
        for i, key in enumerate(key_column):
            if not key:  # no key: in no group
                continue
            if key in first_seen:
                parent[find(i)] = find(first_seen[key])
            else:
                first_seen[key] = i
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(labels)):
        groups[find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1 and len({labels[i] for i in g}) > 1]


def combine(
    ranking: list[LabelIssue], conflicts: list[list[int]], labels: np.ndarray, pred_probs: np.ndarray
) -> list[LabelIssue]:
    """The cleanlab ranking, with the duplicates that disagree with their group's consensus raised.

    The consensus of a group is the class its members' out-of-fold probabilities add
    up to, not the majority label: a poisoned label copied onto many duplicates must
    not outvote the pictures themselves. Members that agree with it keep their
    score and only gain the reason, so a user sees the whole group.
    """
    consensus: dict[int, int] = {}
    for group in conflicts:
        agreed = int(pred_probs[group].sum(axis=0).argmax())
        consensus.update(dict.fromkeys(group, agreed))
    combined = []
    for issue in ranking:
        if issue.index not in consensus:
            combined.append(issue)
            continue
        agreed = consensus[issue.index]
        wrong = int(labels[issue.index]) != agreed
        combined.append(
            LabelIssue(
                issue.index,
                max(issue.score, DUPLICATE_FLOOR) if wrong else issue.score,
                agreed if wrong else issue.suggested,
                issue.flagged or wrong,
                issue.quality,
                [*issue.reasons, "duplicate_conflict"],
            )
        )
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
    duplicate_groups: np.ndarray  # (n,) near-duplicate group id, -1 for none (see near_duplicate_groups)
    sha256s: np.ndarray  # (n,) hex
    folds: int

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            image_ids=self.image_ids,
            out_of_fold=self.out_of_fold,
            in_sample=self.in_sample,
            duplicate_groups=self.duplicate_groups,
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
                # audits from before near-duplicate groups: exact (sha256) duplicates only
                data["duplicate_groups"] if "duplicate_groups" in data.files else np.full(len(data["image_ids"]), -1),
                data["sha256s"],
                int(data["folds"]),
            )


@dataclass(frozen=True)
class Suspect:
    record: ImageRecord
    suggested_label: str
    score: float
    flagged: bool
    label_quality: float
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
    pred_probs = audit.out_of_fold[rows]
    ranking = label_quality_ranking(labels, pred_probs)
    groups = [str(g) if g >= 0 else "" for g in audit.duplicate_groups[rows].tolist()]
    conflicts = duplicate_conflicts([[r.sha256 for r in known], groups], labels.tolist())
    return [
        Suspect(
            known[issue.index], class_names[issue.suggested], issue.score, issue.flagged, issue.quality, issue.reasons
        )
        for issue in combine(ranking, conflicts, labels, pred_probs)
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
