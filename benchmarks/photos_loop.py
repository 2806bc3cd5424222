"""The whole loop on the photos demo, per backbone: does Bouncer learn real photos and find the poison?

For each backbone, in a throw-away workspace and with every other setting at its
default: write the photos demo, train (timed with and without the out-of-fold
models behind ``suspects``), evaluate, run ``similar`` from up to 3 misclassified
test images (split train, label = the wrong prediction), let the ground truth play
the reviewer who relabels what it sees is wrong, retrain, evaluate again. Prints:

- test accuracy before and after, and whether the model beat the majority label;
- poisoned photos found by the similar calls / planted, calls made, images viewed;
- training wall time with and without out-of-fold models, and their ratio.

    .venv/bin/python benchmarks/photos_loop.py                                   # cnn and mobilenet_v3_small (none)
    .venv/bin/python benchmarks/photos_loop.py --backbone mobilenet_v3_small \\
        --weights ~/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5      # with ImageNet weights from a file

The curation façade the endpoints call (training.curation.curator), without HTTP.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workspace import isolated_env, workspace  # noqa: E402

SIMILAR_K = 50  # results per similar call: more than the 40 poisoned copies of the default demo
QUERIES = 3  # misclassified test images a reviewer starts from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", action="append", help="default: cnn and mobilenet_v3_small")
    parser.add_argument("--weights", default="none", help="backbone weights: none, imagenet or a file")
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: a temp dir)")
    args = parser.parse_args()
    from training.tf_logs import import_tensorflow_quietly

    import_tensorflow_quietly()
    rows = []
    for backbone in args.backbone or ["cnn", "mobilenet_v3_small"]:
        with workspace(args.workdir / backbone if args.workdir else None, prefix=f"bouncer-photos-{backbone}-") as root:
            rows.append(run(root, backbone, "none" if backbone == "cnn" else args.weights))
    print(
        "\n| backbone | weights | accuracy before -> after | beats baseline | poisoned found | calls | viewed "
        "| train s without OOF | with OOF | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['backbone']} | {r['weights']} | {r['before']:.3f} -> {r['after']:.3f} | {r['beats_baseline']} "
            f"| {r['found']}/{r['planted']} | {r['calls']} | {r['viewed']} | {r['without_oof']:.0f} "
            f"| {r['with_oof']:.0f} | x{r['with_oof'] / r['without_oof']:.2f} |"
        )


def run(root: Path, backbone: str, weights: str) -> dict[str, object]:
    os.environ.update(
        isolated_env(root),
        BOUNCER_BUILD_BENTO="false",
        BOUNCER_BACKBONE=backbone,
        BOUNCER_BACKBONE_WEIGHTS=weights,
    )
    from training.data.demo_photos import PhotoDemoSpec, write_photo_dataset
    from training.data.ground_truth import read_ground_truth
    from training.pipeline.training_run import run_training
    from training.registry.serving import open_curator
    from training.settings import get_settings

    settings = get_settings()
    write_photo_dataset(settings.data_dir, PhotoDemoSpec())
    without_oof = run_training(settings.model_copy(update={"out_of_fold_folds": 0})).total_wall_time_s
    trained = run_training(settings)
    with_oof = trained.total_wall_time_s
    print(f"{backbone}: trained in {without_oof:.0f} s without out-of-fold models, {with_oof:.0f} s with", flush=True)

    with open_curator(settings) as curator:  # the version the service would serve: the one just trained
        before = curator.evaluate(settings.test_split)
        by_path = {r.path: r for r in curator.labels.images(split=settings.train_split)}
        truth = {by_path[p.path].image_id: p.true_label for p in read_ground_truth(settings.data_dir)}
        found: set[str] = set()
        calls = viewed = 0
        for error in before.misclassified[:QUERIES]:
            results = curator.similar(error.image_id, k=SIMILAR_K, split="train", label=error.predicted).results
            calls += 1
            viewed += len(results)
            found |= {n.image_id for n in results if n.image_id in truth}
        by_label: dict[str, list[str]] = {}
        for image_id in found:
            by_label.setdefault(truth[image_id], []).append(image_id)
        for label, ids in by_label.items():
            curator.labels.relabel(ids, label, reason="benchmark review", actor="benchmark")
            calls += 1
    started = time.perf_counter()
    retrained = run_training(settings)
    print(f"{backbone}: retrained in {time.perf_counter() - started:.0f} s", flush=True)
    after = retrained.evaluation
    return {
        "backbone": backbone,
        "weights": weights if backbone != "cnn" else "-",
        "before": before.accuracy,
        "after": after.accuracy,
        "beats_baseline": before.beats_baseline,
        "found": len(found),
        "planted": len(truth),
        "calls": calls,
        "viewed": viewed,
        "without_oof": without_oof,
        "with_oof": with_oof,
    }


if __name__ == "__main__":
    main()
