"""Batch scoring of a whole folder: the local engine against the Ray engine, same folder and model, one run.

Runs ``bouncer score``'s two engines one after the other in this process and prints, for
each, images, seconds and images/s, and the ratio Ray / local; Ray's start-up is timed
apart (a long job pays it once). Then checks that both wrote the same scores (same paths
and digests, probabilities within 1e-5, vectors within 1e-4 + 1e-5 x |value|) and exits 1 if not.

Without ``--data-dir`` it builds a throw-away workspace (the 10,000-image silhouette demo
and a one-epoch model, no out-of-fold models) in a temp dir, never touching your stores.
With ``--data-dir``, point BENTOML_HOME (and BOUNCER_* as usual) at the model store:

    .venv/bin/python benchmarks/score.py                      # ~2 min on 2 cores
    BENTOML_HOME=/tmp/ws/bentoml .venv/bin/python benchmarks/score.py --data-dir /tmp/ws/data --model bouncer:abc

Needs the ``ray`` extra: ``.venv/bin/pip install -e ".[ray]"``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.workspace import isolated_env, train_throwaway, workspace  # noqa: E402

# The full demo and one quick training: scoring needs neither the step floor nor out-of-fold models.
QUICK_TRAINING = {"BOUNCER_MIN_TRAIN_STEPS": "0", "BOUNCER_OUT_OF_FOLD_FOLDS": "0"}
# The engines may differ only by float32 rounding (other batch sizes, thread counts): (absolute, relative).
# Vectors reach ~1800 on the demo, where one float32 step is 1e-4: they need a relative part too.
TOLERANCES = {"probabilities": (1e-5, 0.0), "embeddings": (1e-4, 1e-5), "vectors": (1e-4, 1e-5)}


def serving_tag() -> str:
    from training.curation.labels import Labels
    from training.registry.serving import Registry
    from training.settings import get_settings

    with Labels.open(get_settings()) as labels:
        return Registry(labels).serving_tag()


def compare(local_dir: Path, ray_dir: Path, tag: str) -> list[str]:
    """What differs between the two engines' scores (nothing, if all is well)."""
    import numpy as np

    from training.model.scores import read_scores

    local, ray = read_scores(local_dir, model_tag=tag), read_scores(ray_dir, model_tag=tag)
    if local.paths.tolist() != ray.paths.tolist():
        return [f"paths differ: {len(local)} local rows, {len(ray)} Ray rows"]
    problems = []
    for name, (absolute, relative) in TOLERANCES.items():
        a, b = getattr(local, name), getattr(ray, name)
        worst = float(np.max(np.abs(a - b), initial=0.0))
        print(f"  max |local - ray| {name}: {worst:.2e} (tolerance {absolute:g} + {relative:g} x |value|)")
        if not np.allclose(a, b, atol=absolute, rtol=relative):
            problems.append(f"{name} differ by up to {worst:.2e}")
    if local.sha256.tolist() != ray.sha256.tolist():
        problems.append("sha256 differ")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="Dataset to score; default a throw-away demo workspace.")
    parser.add_argument("--model", help="Model tag; default the version serving --data-dir's dataset.")
    parser.add_argument("--chunk-size", type=int, default=1024, help="Images per ONNX run and per shard.")
    parser.add_argument("--epochs", type=int, default=1, help="Training epochs for the demo workspace.")
    parser.add_argument("--keep", type=Path, help="Build the demo workspace here and keep it.")
    args = parser.parse_args()

    with workspace(args.keep, prefix="bouncer-score-bench-") as root:
        if args.data_dir is None:
            env = isolated_env(root)
            print(f"workspace {root}: writing the demo data and training a {args.epochs}-epoch model ...")
            tag = train_throwaway(  # the full demo; scoring needs no out-of-fold models
                env,
                args.epochs,
                demo="DemoSpec()",
                extra_env={"BOUNCER_MIN_TRAIN_STEPS": "0", "BOUNCER_OUT_OF_FOLD_FOLDS": "0"},
            )
            os.environ.update(env)  # before bentoml is imported: it reads BENTOML_HOME once
        else:
            os.environ["BOUNCER_DATA_DIR"] = str(args.data_dir.resolve())
            tag = args.model or serving_tag()

        from training.scoring.local import score_local
        from training.scoring.ray_engine import ray_session, score_with_ray
        from training.settings import get_settings

        settings = get_settings()
        out = root / "scores"
        print(f"scoring {settings.data_dir} with {tag} on {os.cpu_count()} cores, chunks of {args.chunk_size}")
        local = score_local(settings, tag, out / "local", chunk_size=args.chunk_size)
        started = time.perf_counter()
        with ray_session():
            ray_start = time.perf_counter() - started
            ray = score_with_ray(settings, tag, out / "ray", chunk_size=args.chunk_size)
        ray_total = time.perf_counter() - started  # start-up, scoring and shut-down

        print(f"\n{'engine':<22}{'images':>8}{'seconds':>10}{'images/s':>10}")
        print(f"{'local':<22}{local.images:>8}{local.seconds:>10.2f}{local.images_per_second:>10.0f}")
        print(f"{'ray (started)':<22}{ray.images:>8}{ray.seconds:>10.2f}{ray.images_per_second:>10.0f}")
        print(f"{'ray (with start-up)':<22}{ray.images:>8}{ray_total:>10.2f}{ray.images / ray_total:>10.0f}")
        ratio = ray.images_per_second / local.images_per_second
        print(f"\nRay start-up {ray_start:.1f} s; ray / local images/s: {ratio:.2f}")
        print(
            f"ray with start-up / local: {ray.images / ray_total / local.images_per_second:.2f}"
            f" (load average {os.getloadavg()[0]:.1f}: other work on the machine skews both)"
        )
        problems = compare(out / "local", out / "ray", tag)
        for problem in problems:
            print(f"MISMATCH: {problem}")
        print("same scores from both engines" if not problems else "the engines disagree")
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
