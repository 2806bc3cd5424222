"""How well ``suspects`` finds wrong labels, on several datasets whose wrong labels are known: one table.

Each dataset is written into a throw-away workspace, trained once with the defaults
(out-of-fold models and their neighbours included), ranked, scored against its
ground_truth.csv, then the errors the first k suspects hold are fixed and the model
retrained. Datasets:

- ``silhouettes``: the demo (a 250-image impostor group, dogs labelled cat, + 5% random noise);
- ``photos``: the photos demo (40 copies of one photo labelled as another class: a group);
- ``digits-random``: scikit-learn's handwritten digits, 10% of train labels flipped at random;
- ``digits-confusable``: the same, flipped to the digit people misread it as (3<->8, 1<->7, 4<->9...).

For each: precision = recall at k = the number of wrong labels, AUROC and AUPRC of the score,
for Bouncer's suspects (the combination) and what it is made of or replaces, all on the same
training: the previous suspects (cleanlab flags first, on out-of-fold probabilities), plain
cleanlab (its self-confidence label quality on the same out-of-fold probabilities), the in-sample
baseline (1 - the final model's own probability of the label), and the neighbours alone (k-NN
label agreement, train neighbours and nearest test images); images a reviewer must look at, in
each order, to fix 90% of the errors; group members in the first 500 of the queue; test accuracy
before and after fixing what the first k suspects held and retraining; the time of each part.

    .venv/bin/python benchmarks/label_issues.py                 # all four, ~40 min on 2 cores
    .venv/bin/python benchmarks/label_issues.py --quick digits-random photos   # smaller, rougher
    .venv/bin/python benchmarks/label_issues.py --backbones cnn,auto photos   # old default against new, one run

With ``--backbones`` each dataset is trained once per backbone setting in the same session, and
the last table gives each setting against the first: P = R at k and accuracy as differences,
the run's time as a ratio (the worst case over the datasets first).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workspace import isolated_env, workspace  # noqa: E402

DATASETS = ("silhouettes", "photos", "digits-random", "digits-confusable")
GROUP_WINDOW = 500  # a group's members among the first this many of the queue (issue 24's goal: 200 of 250)


def write_dataset(name: str, data_dir: Path, *, quick: bool) -> None:
    from benchmarks.noisy_digits import DigitsSpec, write_noisy_digits
    from training.data.demo_photos import PhotoDemoSpec, write_photo_dataset
    from training.data.demo_silhouettes import DemoSpec, write_demo_dataset

    writers: dict[str, Callable[[], object]] = {
        "silhouettes": lambda: write_demo_dataset(
            data_dir, DemoSpec(per_class_limit=400, impostor_count=80) if quick else DemoSpec(), force=True
        ),
        "photos": lambda: write_photo_dataset(data_dir, PhotoDemoSpec(), force=True),
        "digits-random": lambda: write_noisy_digits(data_dir, DigitsSpec(noise="random")),
        "digits-confusable": lambda: write_noisy_digits(data_dir, DigitsSpec(noise="confusable")),
    }
    writers[name]()


@dataclass
class Measured:
    precision_at_k: float  # = recall at k, k = the number of wrong labels
    auroc: float
    auprc: float
    to_fix_90: int  # images looked at, in this order, until 90% of the wrong labels were seen
    group_found: int  # group members (impostors) among the first GROUP_WINDOW


def measure(score: np.ndarray, wrong: np.ndarray, group: np.ndarray) -> Measured:
    from sklearn.metrics import average_precision_score, roc_auc_score

    order = np.argsort(-score, kind="stable")
    k = int(wrong.sum())
    seen = np.cumsum(wrong[order])
    return Measured(
        float(wrong[order[:k]].mean()),
        float(roc_auc_score(wrong, score)),
        float(average_precision_score(wrong, score)),
        int(np.searchsorted(seen, np.ceil(0.9 * k)) + 1),
        int(group[order[:GROUP_WINDOW]].sum()),
    )


@dataclass
class Row:
    dataset: str
    n_train: int
    n_wrong: int
    n_group: int
    methods: dict[str, Measured]
    accuracy_before: float
    accuracy_after: float
    seconds: dict[str, float]


def run_dataset(name: str, root: Path, *, quick: bool, epochs: int | None, backbone: str | None = None) -> Row:
    from cleanlab.rank import get_label_quality_scores

    from training.curation.ranking import Neighbourhood, label_quality_ranking, vote_probabilities
    from training.data.ground_truth import read_ground_truth
    from training.pipeline.training_run import run_training
    from training.registry.serving import open_curator
    from training.registry.store import load_registered
    from training.settings import get_settings

    overrides: dict[str, object] = {"data_dir": root / (backbone or "") / name / "data"}
    if backbone is not None:
        overrides["backbone"] = backbone
    settings = get_settings(**overrides)
    write_dataset(name, settings.data_dir, quick=quick)
    started = time.perf_counter()
    before = run_training(settings, epochs=epochs)
    total = time.perf_counter() - started
    print(f"{name}: trained {before.tag} in {total:.0f} s, {before.phase_seconds}", flush=True)
    with open_curator(settings) as curator:
        curated, model = curator.labels, curator.model
        assert model.tag == before.tag and model.audit is not None
        audit, classes = model.audit, model.class_names
        started = time.perf_counter()
        suspects = curator.suspect_ranking()
        ranking_seconds = time.perf_counter() - started
        train = {r.image_id: r for r in curated.images(split=settings.train_split)}
        test = curated.images(split=settings.test_split)
        truth = {p.path: p for p in read_ground_truth(settings.data_dir)}
        ids = audit.image_ids.tolist()  # every array below is in the audit's order
        labels = np.array([classes.index(train[i].label) for i in ids])
        wrong = np.array([train[i].path in truth for i in ids])
        group = np.array([train[i].path in truth and truth[train[i].path].kind == "impostor" for i in ids])
        rows = np.arange(len(ids))

        position = {s.image_id: rank for rank, s in enumerate(suspects)}
        suspects_score = np.array([-float(position[i]) for i in ids])
        previous = np.zeros(len(ids))
        for rank, issue in enumerate(label_quality_ranking(labels, audit.out_of_fold)):
            previous[issue.index] = -rank
        plain = 1 - get_label_quality_scores(labels, audit.out_of_fold, method="self_confidence")
        in_sample = 1 - audit.in_sample[rows, labels]
        test_label = {r.image_id: classes.index(r.label) for r in test}
        test_labels = np.array([test_label.get(i, -1) for i in audit.test_ids.tolist()])
        votes = [
            Neighbourhood(audit.neighbours, audit.similarities, labels).votes(len(classes)),
            Neighbourhood(audit.test_neighbours, audit.test_similarities, test_labels).votes(len(classes)),
        ]
        logs = [np.log(vote_probabilities(v)[rows, labels]) for v in votes if v.sum() > 0]
        neighbours_alone = 1 - np.exp(np.mean(logs, axis=0))
        train_votes_only = 1 - vote_probabilities(votes[0])[rows, labels]
        methods = {
            "suspects (combination)": measure(suspects_score, wrong, group),
            "previous suspects (cleanlab flags first)": measure(previous, wrong, group),
            "plain cleanlab (OOF self-confidence)": measure(plain, wrong, group),
            "in-sample baseline": measure(in_sample, wrong, group),
            "neighbours alone (train + test k-NN)": measure(neighbours_alone, wrong, group),
            "train neighbours alone (k-NN)": measure(train_votes_only, wrong, group),
        }
        k = int(wrong.sum())
        fix = [s.image_id for s in suspects[:k] if train[s.image_id].path in truth]
        by_label: dict[str, list[str]] = {}
        for image_id in fix:
            by_label.setdefault(truth[train[image_id].path].true_label, []).append(image_id)
        for label, image_ids in by_label.items():
            curated.relabel(image_ids, label, reason="benchmark: fixed from the first k suspects", actor="benchmark")
    after = run_training(settings.model_copy(update={"out_of_fold_folds": 0}), epochs=epochs)
    seconds = {
        "training (fit)": before.train_wall_time_s,
        "run, total": total,
        "out-of-fold models": before.phase_seconds.get("out_of_fold", 0.0) - before.phase_seconds.get("neighbours", 0),
        "neighbours": before.phase_seconds.get("neighbours", 0.0),
        "ranking": ranking_seconds,
    }
    return Row(
        name if backbone is None else f"{name} [{backbone}: {load_registered(before.tag).metadata.recipe['backbone']}]",
        len(ids),
        k,
        int(group.sum()),
        methods,
        before.metrics.get("test_accuracy", float("nan")),
        after.metrics.get("test_accuracy", float("nan")),
        seconds,
    )


def print_tables(rows: list[Row]) -> None:
    print(
        "\n| dataset | train images | wrong labels | method | P = R at k | AUROC | AUPRC | looked at to fix 90% |"
        f" group in first {GROUP_WINDOW} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for method, m in row.methods.items():
            group = f"{m.group_found}/{row.n_group}" if row.n_group else "-"
            print(
                f"| {row.dataset} | {row.n_train} | {row.n_wrong} | {method} | {m.precision_at_k:.3f} | {m.auroc:.3f} "
                f"| {m.auprc:.3f} | {m.to_fix_90} | {group} |"
            )
    print(
        "\n| dataset | test accuracy before | after fixing the first k suspects | fit s | out-of-fold models s "
        "| neighbours s (share of the fit) | ranking s |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        s = row.seconds
        print(
            f"| {row.dataset} | {row.accuracy_before:.3f} | {row.accuracy_after:.3f} | {s['training (fit)']:.0f} "
            f"| {s['out-of-fold models']:.0f} | {s['neighbours']:.1f} ({s['neighbours'] / s['training (fit)']:.0%}) "
            f"| {s['ranking']:.2f} |"
        )
    worst = {
        method: min(
            row.methods[method].precision_at_k
            - max(
                row.methods["plain cleanlab (OOF self-confidence)"].precision_at_k,
                row.methods["in-sample baseline"].precision_at_k,
            )
            for row in rows
        )
        for method in ("suspects (combination)", "previous suspects (cleanlab flags first)")
    }
    print(
        "\nworst case over the datasets, P = R at k minus the better of plain cleanlab and the in-sample baseline: "
        + ", ".join(f"{method} {value:+.3f}" for method, value in worst.items())
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", help=f"some of {', '.join(DATASETS)} (default: all four)")
    parser.add_argument("--quick", action="store_true", help="a smaller silhouette demo (400 per class, 80 impostors)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the settings' recipe")
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: a temp dir)")
    parser.add_argument("--backbones", help="BOUNCER_BACKBONE settings to compare, the baseline first: cnn,auto")
    args = parser.parse_args()
    if unknown := sorted(set(args.datasets) - set(DATASETS)):
        parser.error(f"unknown datasets {unknown}; choose from {', '.join(DATASETS)}")
    with workspace(args.workdir, prefix="bouncer-issues-") as root:
        os.environ.update(isolated_env(root), BOUNCER_BUILD_BENTO="false")
        backbones = args.backbones.split(",") if args.backbones else [None]
        rows = [
            run_dataset(name, root, quick=args.quick, epochs=args.epochs, backbone=backbone)
            for name in args.datasets or DATASETS
            for backbone in backbones
        ]
    print_tables(rows)
    if len(backbones) > 1:
        print_comparison(rows, len(backbones))


def print_comparison(rows: list[Row], per_dataset: int) -> None:
    """Each backbone setting against the first (the baseline) on the same dataset, worst case first."""
    print("\n| dataset | against | P = R at k | test accuracy | run time |")
    print("|---|---|---|---|---|")
    lines = []
    for start in range(0, len(rows), per_dataset):
        baseline, *others = rows[start : start + per_dataset]
        base_p = baseline.methods["suspects (combination)"].precision_at_k
        for row in others:
            delta = row.methods["suspects (combination)"].precision_at_k - base_p
            ratio = row.seconds["run, total"] / baseline.seconds["run, total"]
            lines.append((delta, row, baseline, ratio))
    for delta, row, baseline, ratio in sorted(lines, key=lambda line: line[0]):
        accuracy = row.accuracy_before - baseline.accuracy_before
        print(f"| {row.dataset} | {baseline.dataset} | {delta:+.3f} | {accuracy:+.3f} | x{ratio:.2f} |")


if __name__ == "__main__":
    main()
