"""Which training labels are probably wrong, and what they should be: a ranking of suspects.

cleanlab's label quality on *out-of-fold* probabilities (confident learning),
combined with duplicates that disagree (see :mod:`training.curation.duplicates`).
Pure functions of arrays, like cleanlab's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from training.curation.audit import LabelAudit
from training.curation.duplicates import duplicate_conflicts
from training.labels.store import ImageRecord

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


@dataclass(frozen=True)
class Suspect:
    image_id: str
    path: str
    label: str  # the current (curated) label
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
            known[issue.index].image_id,
            known[issue.index].path,
            known[issue.index].label,
            class_names[issue.suggested],
            issue.score,
            issue.flagged,
            issue.quality,
            issue.reasons,
        )
        for issue in combine(ranking, conflicts, labels, pred_probs)
    ]
