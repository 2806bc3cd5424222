"""How well Bouncer finds the planted label errors of the demo data, scored against ground_truth.csv.

One run, in a throw-away workspace (demo data, a full training with out-of-fold
probabilities, a simulated review, a retraining). Prints:

- precision/recall at k = number of planted errors for: Bouncer's suspects (cleanlab
  on out-of-fold probabilities + disagreeing duplicates), plain cleanlab
  (find_label_issues on the same out-of-fold probabilities) and the in-sample
  baseline (1 - the final model's own probability of the given label);
- recall of the planted impostor group found by error tracing from misclassified test images;
- a simulated user who fixes labels with the API's calls (trace, expand, suspects, relabel),
  confirming each proposed image against the ground truth (one human decision each):
  calls and decisions needed, errors fixed; then what it takes to fix every last one
  by paging on through the suspect ranking;
- test accuracy before and after retraining on the fixed labels.

The simulation calls the same functions the endpoints call (training.curation.ranking,
training.curation.index, LabelStore.relabel), without HTTP.

    .venv/bin/python benchmarks/label_issues.py            # ~15 min on 2 cores
    .venv/bin/python benchmarks/label_issues.py --epochs 5 --per-class-limit 300   # quicker, rougher
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workspace import isolated_env, workspace  # noqa: E402


@dataclass
class Review:
    """A simulated user: every image shown to them is one decision; relabels are grouped per class."""

    truth: dict[str, str]  # image_id -> true label, for the planted errors only
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    decisions: int = 0
    seen: set[str] = field(default_factory=set)
    fixed: set[str] = field(default_factory=set)

    def confirm(self, image_ids: list[str]) -> list[str]:
        """Look at each new image; return those whose label is wrong."""
        fresh = [i for i in image_ids if i not in self.seen]
        self.seen.update(fresh)
        self.decisions += len(fresh)
        return [i for i in fresh if i in self.truth and i not in self.fixed]

    def relabel(self, store: object, image_ids: list[str]) -> None:
        by_label: dict[str, list[str]] = defaultdict(list)
        for image_id in image_ids:
            by_label[self.truth[image_id]].append(image_id)
        for label, ids in by_label.items():
            if store is not None:  # None: only count (a what-if that must not change the retraining's labels)
                store.relabel(ids, label, reason="benchmark review", actor="benchmark")  # type: ignore[attr-defined]
            self.calls["relabel"] += 1
            self.fixed.update(ids)


def precision_recall(found: list[str], planted: set[str]) -> tuple[float, float]:
    hits = len(set(found) & planted)
    return hits / max(len(found), 1), hits / max(len(planted), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default: BOUNCER_EPOCHS (15)")
    parser.add_argument("--per-class-limit", type=int, default=None, help="fewer images per class (quicker)")
    parser.add_argument("--batch", type=int, default=50, help="images the user reviews per expand call")
    parser.add_argument("--workdir", type=Path, help="keep the workspace here (default: a temp dir)")
    args = parser.parse_args()

    with workspace(args.workdir, prefix="bouncer-issues-") as root:
        os.environ.update(isolated_env(root), BOUNCER_BUILD_BENTO="false")
        run(args)


def run(args: argparse.Namespace) -> None:
    from cleanlab.filter import find_label_issues

    from training.curation.ranking import in_sample_ranking
    from training.data.demo_silhouettes import DemoSpec, write_demo_dataset
    from training.data.ground_truth import read_ground_truth
    from training.pipeline.training_run import run_training
    from training.registry.serving import open_curator
    from training.settings import get_settings

    settings = get_settings()
    spec = DemoSpec(per_class_limit=args.per_class_limit)
    write_demo_dataset(settings.data_dir, spec)
    started = time.perf_counter()
    before = run_training(settings, epochs=args.epochs)
    print(f"trained {before.tag} in {time.perf_counter() - started:.0f} s (with out-of-fold models)", flush=True)
    with open_curator(settings) as curator:  # what the service would serve: the version just trained
        store, model = curator.store, curator.model
        assert model.tag == before.tag and model.audit is not None
        train = store.images(split=settings.train_split)
        by_path = {r.path: r for r in train}
        poisoned = read_ground_truth(settings.data_dir)
        truth = {by_path[p.path].image_id: p.true_label for p in poisoned if p.path in by_path}
        impostors = {by_path[p.path].image_id for p in poisoned if p.kind == "impostor" and p.path in by_path}
        planted, n = set(truth), len(truth)
        classes = model.class_names
        labels = np.array([classes.index(r.label) for r in train])
        rows = model.audit.image_ids.tolist()
        order = np.array([rows.index(r.image_id) for r in train])
        oof, in_sample = model.audit.out_of_fold[order], model.audit.in_sample[order]

        print(
            f"\nplanted errors: {n} ({len(impostors)} impostors, {n - len(impostors)} random noise) "
            f"in {len(train)} train images"
        )
        ours = [s.image_id for s in curator.suspects(len(train))]
        cleanlab_ranked = find_label_issues(labels, oof, return_indices_ranked_by="self_confidence", n_jobs=1)
        cleanlab_all = [train[i].image_id for i in cleanlab_ranked]
        naive = [train[i.index].image_id for i in in_sample_ranking(labels, in_sample)]
        m = len(cleanlab_all)  # plain cleanlab's list is only as long as what it flags: compare there too
        header = "method (first k of its ranking)"
        print(f"\n{header:<52} precision  recall  impostors found  noise found")
        for name, found in [
            (f"Bouncer suspects (cleanlab on OOF + duplicates), k={n}", ours[:n]),
            (f"plain cleanlab find_label_issues, all {m} it flags", cleanlab_all),
            (f"in-sample confidence (final model), k={n}", naive[:n]),
            (f"Bouncer suspects, k={m}", ours[:m]),
            (f"in-sample confidence, k={m}", naive[:m]),
        ]:
            p, r = precision_recall(found, planted)
            imp = len(set(found) & impostors)
            noise = len(set(found) & (planted - impostors))
            print(f"{name:<52} {p:9.3f} {r:7.3f} {imp:8d}/{len(impostors):<6d} {noise:6d}/{n - len(impostors)}")

        errors = curator.evaluate(settings.test_split).misclassified
        traced = curator.trace(None, k=5, limit=len(train))
        traced_ids = {t.image_id for t in traced}
        strong = {t.image_id for t in traced if t.votes >= 2}
        print(
            f"\nerror tracing from {len(errors)} misclassified test images (k=5): {len(traced_ids)} training images, "
            f"impostor recall {len(traced_ids & impostors) / len(impostors):.3f}, precision "
            f"{len(traced_ids & planted) / max(len(traced_ids), 1):.3f}; with >= 2 votes: {len(strong)} images, "
            f"impostor recall {len(strong & impostors) / len(impostors):.3f}, "
            f"precision {len(strong & planted) / max(len(strong), 1):.3f}"
        )

        # --- a simulated user: trace -> confirm -> relabel -> expand until dry -> suspects ------------
        review = Review(truth)
        review.calls["trace"] += 1
        confirmed = review.confirm([t.image_id for t in traced if t.votes >= 2])
        review.relabel(store, confirmed)
        original = {r.image_id: r.label for r in train}  # the (wrong) label a confirmed image carried
        frontier = confirmed
        while frontier:
            grown: list[str] = []
            for label in sorted({original[i] for i in frontier}):
                seeds = sorted(i for i in review.fixed if original[i] == label)  # everything confirmed so far
                # the images the user looked at and found right are not proposed again
                proposed = [
                    nb.image_id
                    for nb in curator.expand(seeds, k=args.batch, label=label, split="train", exclude=review.seen)
                ]
                review.calls["expand"] += 1
                new = review.confirm(proposed)
                review.relabel(store, new)
                if len(new) >= args.batch // 2:  # keep going while a batch is mostly mislabelled
                    grown += new
            frontier = grown
        after_cluster = len(review.fixed)
        review.calls["suspects"] += 1
        flagged = [s.image_id for s in curator.suspects(len(train)) if s.flagged]
        review.relabel(store, review.confirm(flagged))
        print(
            f"\nsimulated review: {dict(review.calls)} = {sum(review.calls.values())} calls, "
            f"{review.decisions} human decisions; fixed {len(review.fixed)}/{n} planted errors "
            f"({after_cluster} by trace+expand, {len(review.fixed) - after_cluster} by suspects; "
            f"impostors fixed {len(review.fixed & impostors)}/{len(impostors)})"
        )
        # --- what-if: to fix *every* planted error, page on through the rest of the ranking --------
        # (counted only: the retraining below uses the labels of the review above)
        exhaustive = copy.deepcopy(review)
        ranking = [s.image_id for s in curator.suspects(len(train))]
        page, pages = 100, 0
        while exhaustive.fixed != planted and pages * page < len(ranking):
            exhaustive.calls["suspects"] += 1
            exhaustive.relabel(None, exhaustive.confirm(ranking[pages * page : (pages + 1) * page]))
            pages += 1
        print(
            f"to fix all {n}: {pages} more suspects pages of {page} -> {dict(exhaustive.calls)} = "
            f"{sum(exhaustive.calls.values())} calls, {exhaustive.decisions} human decisions "
            f"({exhaustive.decisions / len(train):.0%} of the training images looked at); "
            f"fixed {len(exhaustive.fixed)}/{n}"
        )

    started = time.perf_counter()
    # the retrained model is only scored, so it skips the out-of-fold models
    after = run_training(settings.model_copy(update={"out_of_fold_folds": 0}), epochs=args.epochs)
    print(f"retrained {after.tag} in {time.perf_counter() - started:.0f} s")
    print(
        f"\ntest accuracy: before {before.metrics['test_accuracy']:.4f} -> after {after.metrics['test_accuracy']:.4f} "
        f"(clean test split, {int(before.metrics['n_test'])} images)"
    )


if __name__ == "__main__":
    main()
