"""Which training labels are probably wrong, and what they should be: a ranking of suspects.

Two independent kinds of evidence, each from something the image's own label did not shape:

- the *out-of-fold* probabilities (models that never saw the image; confident learning);
- the labels of its *neighbours* in feature space (the embedding of the fold model that held
  it out, or a frozen pretrained backbone): the other train images most like it (SimiFeat's
  k-NN label clusterability, Zhu, Dong and Liu, ICML 2022; cleanlab's Datalab makes the
  same k-NN probabilities from features), and the most like it in the trusted test split,
  whose labels a poisoned group cannot outvote.

The score is the stronger of the two witnesses (see :func:`evidence_ranking`); duplicates
that disagree are raised (see :mod:`training.curation.duplicates`). Pure functions of
arrays, like cleanlab's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from training.curation.audit import LabelAudit
from training.curation.duplicates import duplicate_conflicts
from training.labels.records import ImageRecord

DUPLICATE_FLOOR = 0.9  # an image that disagrees with its own duplicate ranks at least this high
# Neighbour votes are smoothed by this much prior mass, spread evenly over the classes: 10 neighbours
# (similarity ~0.9) all against a label give it 0.02, not 0; 5 of 10 give it ~0.4. With 0.5 instead,
# single doubtful neighbours weighed more and the worst case over the benchmark's datasets fell by
# one image in 144 (digits, confusable flips): docs/label-errors.md.
VOTE_PRIOR = 2.0


def neighbour_votes(
    neighbours: np.ndarray, similarities: np.ndarray, neighbour_labels: np.ndarray, n_classes: int
) -> np.ndarray:
    """(n, K) each image's neighbours' labels, weighted by their cosine similarity (SimiFeat's vote).

    ``neighbours`` are rows of ``neighbour_labels`` (the labels now, -1 for an image that no
    longer has one of the classes); -1 rows, and neighbours without a label, do not vote.
    """
    votes = np.zeros((len(neighbours), n_classes))
    if neighbours.size == 0:
        return votes
    known = neighbours >= 0
    labels = np.where(known, neighbour_labels[np.maximum(neighbours, 0)], -1)
    voting = labels >= 0
    rows = np.broadcast_to(np.arange(len(neighbours))[:, None], neighbours.shape)
    np.add.at(votes, (rows[voting], labels[voting]), np.maximum(similarities[voting], 0.0))
    return votes


def vote_probabilities(votes: np.ndarray) -> np.ndarray:
    """Votes as class probabilities (k-NN ``pred_probs``), smoothed by VOTE_PRIOR."""
    n_classes = votes.shape[1]
    return (votes + VOTE_PRIOR / n_classes) / (votes.sum(axis=1, keepdims=True) + VOTE_PRIOR)


@dataclass(frozen=True)
class LabelIssue:
    index: int  # position in the arrays given
    score: float  # 0..1, higher = more likely mislabelled; above 0.5 exactly when flagged
    suggested: int  # class index
    flagged: bool  # cleanlab.find_label_issues (or a duplicate conflict) says it is an issue
    quality: float  # cleanlab's self-confidence label quality, 0..1 (higher = label more likely right)
    reasons: list[str] = field(default_factory=list)
    evidence: Evidence | None = None  # what the score is made of (None: the probabilities alone)


@dataclass(frozen=True)
class Evidence:
    """One image's evidence, for people: what the fold models and its neighbours say of its label."""

    out_of_fold: float  # the fold models' probability of its label
    out_of_fold_best: int  # their most likely class
    neighbour_counts: np.ndarray  # (K,) how many of its train neighbours carry each label now
    test_counts: np.ndarray  # (K,) likewise its nearest test images (trusted labels)
    neighbour_agreement: float | None  # similarity-weighted share of its neighbours' votes for its label
    test_agreement: float | None


@dataclass(frozen=True)
class Neighbourhood:
    """Feature-space neighbours of the images being ranked, with the labels they carry now."""

    neighbours: np.ndarray  # (n, k) rows of ``labels`` (-1: none)
    similarities: np.ndarray  # (n, k)
    labels: np.ndarray  # class index of each row now (-1: none of the classes)

    def votes(self, n_classes: int) -> np.ndarray:
        return neighbour_votes(self.neighbours, self.similarities, self.labels, n_classes)

    def counts(self, n_classes: int) -> np.ndarray:
        return neighbour_votes(self.neighbours, np.ones_like(self.similarities), self.labels, n_classes)


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


def evidence_ranking(
    labels: np.ndarray, pred_probs: np.ndarray, train: Neighbourhood, test: Neighbourhood
) -> list[LabelIssue]:
    """Every image, most suspicious first, by two independent witnesses against its label.

    score = max(1 - the out-of-fold models' probability of the label, 1 - its neighbours'
    k-NN probability of it), the neighbours being its nearest test images (trusted labels)
    when it has some, else its nearest train images. One confident witness is enough: the
    fold models catch single errors; the test images catch a poisoned group that the fold
    models learnt from its other members. Measured on four datasets (benchmarks/label_issues.py,
    docs/label-errors.md), the maximum had the best worst case of the combinations tried
    (mean, geometric mean, noisy-or, rank average, cleanlab on pooled probabilities, with and
    without the train neighbours). ``flagged`` and ``quality`` stay cleanlab's (confident
    learning on the out-of-fold probabilities), shown beside the score.
    """
    n, n_classes = pred_probs.shape
    rows = np.arange(n)
    train_votes, test_votes = train.votes(n_classes), test.votes(n_classes)
    witness = np.where(test_votes.sum(axis=1, keepdims=True) > 0, test_votes, train_votes)
    heard = witness.sum(axis=1) > 0
    neighbours = np.where(heard[:, None], vote_probabilities(witness), pred_probs)  # none: the models alone
    score = np.maximum(1.0 - pred_probs[rows, labels], 1.0 - neighbours[rows, labels])
    both = (pred_probs + neighbours) / 2
    other = both.copy()
    other[rows, labels] = -1.0
    suggested = np.where(score >= 0.5, other.argmax(axis=1), both.argmax(axis=1))
    cleanlab = {issue.index: issue for issue in label_quality_ranking(labels, pred_probs)}
    agreement = [_agreement(votes, labels) for votes in (train_votes, test_votes)]
    train_counts, test_counts = train.counts(n_classes), test.counts(n_classes)
    issues = [
        LabelIssue(
            i,
            float(score[i]),
            int(suggested[i]),
            cleanlab[i].flagged,
            cleanlab[i].quality,
            list(cleanlab[i].reasons),
            Evidence(
                float(pred_probs[i, labels[i]]),
                int(pred_probs[i].argmax()),
                train_counts[i],
                test_counts[i],
                agreement[0][i],
                agreement[1][i],
            ),
        )
        for i in range(n)
    ]
    return sorted(issues, key=lambda issue: (-issue.score, issue.index))


def _agreement(votes: np.ndarray, labels: np.ndarray) -> list[float | None]:
    total = votes.sum(axis=1)
    given = votes[np.arange(len(labels)), labels]
    return [float(g / t) if t > 0 else None for g, t in zip(given, total, strict=True)]


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
                issue.evidence,
            )
        )
    return sorted(combined, key=lambda issue: (-issue.score, issue.index))


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
    out_of_fold_probability: float  # the fold models' probability of its label
    neighbour_agreement: float | None  # share of its train neighbours' (similarity-weighted) votes for its label
    test_neighbour_agreement: float | None  # likewise among its nearest test images (trusted labels)


def find_suspects(
    audit: LabelAudit,
    records: Sequence[ImageRecord],
    class_names: Sequence[str],
    test_records: Sequence[ImageRecord] = (),
) -> list[Suspect]:
    """Rank ``records`` (the train split's *current* labels) by how likely their label is wrong.

    Current labels, the neighbours' (train and ``test_records``) too, so a relabel changes
    the ranking at once. Images the audit does not cover (added after training) are left out.
    """
    row_of = {image_id: i for i, image_id in enumerate(audit.image_ids.tolist())}
    known = [r for r in records if r.image_id in row_of and r.label in class_names]
    if not known:
        return []
    rows = np.array([row_of[r.image_id] for r in known])
    class_index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([class_index[r.label] for r in known])
    pred_probs = audit.out_of_fold[rows]
    audit_labels = np.full(len(row_of), -1)  # every audited image's label now, by audit row
    audit_labels[rows] = labels
    test_label = {r.image_id: class_index.get(r.label, -1) for r in test_records}
    test_labels = np.array([test_label.get(image_id, -1) for image_id in audit.test_ids.tolist()], dtype=np.int64)
    ranking = evidence_ranking(
        labels,
        pred_probs,
        Neighbourhood(audit.neighbours[rows], audit.similarities[rows], audit_labels),
        Neighbourhood(audit.test_neighbours[rows], audit.test_similarities[rows], test_labels),
    )
    groups = [str(g) if g >= 0 else "" for g in audit.duplicate_groups[rows].tolist()]
    conflicts = duplicate_conflicts([[r.sha256 for r in known], groups], labels.tolist())
    suspects = []
    for issue in combine(ranking, conflicts, labels, pred_probs):
        record, evidence = known[issue.index], issue.evidence
        assert evidence is not None  # evidence_ranking gives every issue its evidence
        suspects.append(
            Suspect(
                record.image_id,
                record.path,
                record.label,
                class_names[issue.suggested],
                issue.score,
                issue.flagged,
                issue.quality,
                [*issue.reasons, *describe(evidence, int(labels[issue.index]), class_names)],
                evidence.out_of_fold,
                evidence.neighbour_agreement,
                evidence.test_agreement,
            )
        )
    return suspects


def describe(evidence: Evidence, label: int, class_names: Sequence[str]) -> list[str]:
    """The evidence in sentences, for the review page: "7 of its 10 nearest neighbours are labelled cat"."""
    said = [f"out-of-fold models: {evidence.out_of_fold:.2f} for {class_names[label]}"]
    if evidence.out_of_fold_best != label:
        said[0] += f", most likely {class_names[evidence.out_of_fold_best]}"
    for counts, what in (
        (evidence.neighbour_counts, "nearest neighbours"),
        (evidence.test_counts, "nearest test images"),
    ):
        total = int(counts.sum())
        if total == 0:
            continue
        sentence = f"{int(counts[label])} of its {total} {what} are labelled {class_names[label]}"
        others = counts.copy()
        others[label] = 0
        if others.max() > 0:
            sentence += f", {int(others.max())} {class_names[int(others.argmax())]}"
        said.append(sentence)
    return said
