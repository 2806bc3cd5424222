"""Does the streamed input keep up with training? Images/s of the input pipeline against the training step's.

Issue 26: a training whose images do not fit BOUNCER_INPUT_MEMORY_MB decodes them once
into a file (``training.data.decoded``) and reads each epoch from it, a batch at a time
in a new seeded order. Goal: the input pipeline at least 3x the training step's own
images/s, so input never starves the model. In one run, per dataset kind (the
silhouette demo at 32 px; the photos demo, JPEGs of 72-144 px, at 160 px as in the
issue's measurement):

1. decode: the images decoded in parallel into the file (paid once per dataset and size);
2. read: one epoch of the training dataset (``make_dataset``) without augmentation, read and
   thrown away: what streaming itself costs (file rows, float cast);
3. input: the same with the augmentation the recipe picks at that size (``auto``), as
   ``model.fit`` consumes it; augmentation is CPU work an in-memory dataset pays as well;
   Before (``--keras-layers``, the baseline in the same run): the Keras 3 preprocessing layers the
   recipe used until the fused augmentation (``training.model.augment``), in the same map;
4. step: training steps alone, on one batch already in memory (the model's own speed);
5. fit: one real epoch of ``model.fit`` on the streamed dataset, which should match the step.

Prints images/s of each and the ratio input/step (worst case over the kinds). Timings
on a shared 2-core machine are noisy: the ratios come from one run, interleaved.

    .venv/bin/python benchmarks/input_pipeline.py                 # 2,000 images of each kind
    .venv/bin/python benchmarks/input_pipeline.py --images 8000
    .venv/bin/python benchmarks/input_pipeline.py --images 1000 --keras-layers   # and the old layers' input/s
    .venv/bin/python benchmarks/input_pipeline.py --stages    # images/s of each augmentation stage on one batch

``--stages``: each Keras layer of the old ``photo`` augmentation alone, and the fused one's warp
and colour jitter, on one batch of 64 demo photos at 160 px already in memory (rounds interleaved,
median of 5): what each stage costs, without the pipeline around it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# kind -> (input size, the augmentation BOUNCER_AUGMENT=auto picks at that size: photo from 64 px)
KINDS = {"silhouettes 32 px": (32, "light"), "photos 160 px": (160, "photo")}


def write_kind(kind: str, root: Path, images: int) -> tuple[Path, list[str]]:
    """A demo dataset of ``kind`` with at least ``images`` train images; its folder and their paths."""
    if kind.startswith("silhouettes"):
        from training.data.demo_silhouettes import DemoSpec, write_demo_dataset

        write_demo_dataset(root, DemoSpec(), force=True)  # 10,000 images: the first ``images`` are read
    else:
        from training.data.demo_photos import PHOTO_CLASSES, PhotoDemoSpec, write_photo_dataset

        pictures = sum(len(photos) for photos in PHOTO_CLASSES.values())
        write_photo_dataset(root, PhotoDemoSpec(train_copies=images // pictures + 1, test_copies=1), force=True)
    paths = sorted(str(p.relative_to(root)) for p in root.glob("train/*/*") if p.is_file())
    return root, paths[:images]


def keras_layers(kind: str, seed: int) -> object:
    """The augmentation before issue 26's fused one: Keras 3 preprocessing layers, three warps in ``photo``."""
    import keras

    steps: list[keras.layers.Layer] = [keras.layers.RandomFlip("horizontal", seed=seed)]
    if kind == "light":
        steps += [
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
        ]
    else:
        steps += [
            keras.layers.RandomRotation(0.07, fill_mode="reflect", seed=seed + 1),
            keras.layers.RandomZoom((-0.3, 0.1), fill_mode="reflect", seed=seed + 2),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 3),
            keras.layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=0.2,
                contrast_factor=0.2,
                saturation_factor=(0.3, 0.7),
                seed=seed + 4,
            ),
        ]
    return keras.Sequential(steps)


def keras_layers_input(decoded: object, targets: np.ndarray, augment: str, batch: int) -> tuple[int, float]:
    """Images and seconds of one epoch through the old layers, mapped over batches as ``make_dataset`` did."""
    import tensorflow as tf

    from training.model.fit import streamed_batches

    layers = keras_layers(augment, 0)
    dataset = streamed_batches(decoded, targets, batch_size=batch, seed=0, shuffle=True)  # type: ignore[arg-type]
    dataset = dataset.map(
        lambda x, y, _: (tf.clip_by_value(layers(tf.cast(x, tf.float32), training=True), 0.0, 255.0), y),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(4)
    started = time.perf_counter()
    count = sum(int(x.shape[0]) for x, _ in dataset)
    return count, time.perf_counter() - started


def stage_rates(root: Path, size: int = 160, batch: int = 64, rounds: int = 5) -> dict[str, float]:
    """Median images/s of each augmentation stage on one batch of photos in memory (see ``--stages``)."""
    import tensorflow as tf

    from training.data.decoded import decode_to_file
    from training.model.augment import PIXEL_MAX, augment_batch, draw_parameters, jitter_colour, warp

    data_dir, paths = write_kind("photos", root / "photos", batch)
    decoded = decode_to_file(root / "decoded", data_dir, paths, ["x"] * len(paths), size, max_pixels=10**8)
    images = tf.constant(decoded.take(np.arange(len(decoded))).astype(np.float32))
    layers = keras_layers("photo", 0).layers
    stages = {f"Keras {type(layer).__name__}": layer for layer in layers}
    stages["Keras, all five (before)"] = keras_layers("photo", 0)
    key = tf.constant([0, 1], tf.int64)
    parameters = draw_parameters(len(decoded), key, "photo")
    functions = {name: tf.function(lambda x, layer=layer: layer(x, training=True)) for name, layer in stages.items()}
    functions["fused: the warp (flip, rotation, zoom, shift; reflect)"] = tf.function(
        lambda x: warp(x, parameters, "REFLECT")
    )
    functions["fused: the colour jitter"] = tf.function(
        lambda x: jitter_colour(
            x, parameters["brightness"] * PIXEL_MAX, parameters["contrast"], parameters["saturation"]
        )
    )
    functions["fused: photo, all (after)"] = tf.function(lambda x: augment_batch(x, key, "photo"))
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function(images)  # traced once, not timed
    for _ in range(rounds):
        for name, function in functions.items():
            started = time.perf_counter()
            function(images)
            times[name].append(time.perf_counter() - started)
    return {name: rate(len(decoded), float(np.median(seconds))) for name, seconds in times.items()}


def rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def measure(kind: str, size: int, augment: str, images: int, batch: int, root: Path, *, old: bool) -> dict[str, float]:
    import keras

    from training.data.decoded import decode_to_file
    from training.model.fit import make_dataset, seed_everything
    from training.model.network import build_classifier

    data_dir, paths = write_kind(kind, root / kind.split()[0], images)
    started = time.perf_counter()
    decoded = decode_to_file(
        root / "decoded", data_dir, paths, [str(i) for i in range(len(paths))], size, max_pixels=10**8
    )
    decode_s = time.perf_counter() - started
    targets = np.arange(len(decoded)) % 3
    seed_everything(0)
    plain = make_dataset(decoded, targets, batch_size=batch, seed=0, augment="none")
    started = time.perf_counter()
    read = sum(int(x.shape[0]) for x, _ in plain)
    read_s = time.perf_counter() - started
    dataset = make_dataset(decoded, targets, batch_size=batch, seed=0, augment=augment)  # type: ignore[arg-type]
    started = time.perf_counter()
    read = sum(int(x.shape[0]) for x, _ in dataset)
    input_s = time.perf_counter() - started
    before = rate(*keras_layers_input(decoded, targets, augment, batch)) if old else float("nan")
    model = build_classifier(3, size)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = next(iter(dataset))
    model.train_on_batch(x, y)  # traced once, not timed
    steps = max(3, min(40, len(decoded) // batch))
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    step_s = time.perf_counter() - started
    started = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    fit_s = time.perf_counter() - started
    return {
        "images": len(decoded),
        "decode": rate(len(decoded), decode_s),
        "read": rate(read, read_s),
        "input": rate(read, input_s),
        "before": before,
        "step": rate(steps * batch, step_s),
        "fit": rate(len(decoded), fit_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--keras-layers", action="store_true", help="also time the old Keras layers' input")
    parser.add_argument("--stages", action="store_true", help="only time each augmentation stage on one batch")
    args = parser.parse_args()
    from training.tf_logs import import_tensorflow_quietly

    import_tensorflow_quietly()
    if args.stages:
        with tempfile.TemporaryDirectory(prefix="input-pipeline-") as tmp:
            rates = stage_rates(Path(tmp), batch=args.batch)
        print("\n| stage (photos 160 px, one batch in memory) | images/s |\n|---|---:|")
        for name, value in rates.items():
            print(f"| {name} | {value:,.0f} |")
        return
    rows = {}
    with tempfile.TemporaryDirectory(prefix="input-pipeline-") as tmp:
        for kind, (size, augment) in KINDS.items():
            rows[kind] = measure(kind, size, augment, args.images, args.batch, Path(tmp), old=args.keras_layers)
            print(kind, {k: round(v, 1) for k, v in rows[kind].items()}, flush=True)
    print(
        "\n| kind | images | decode/s (once) | read/s | input/s (augmented) | step/s | fit/s | read/step | input/step "
        "| Keras layers' input/s | their input/step |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for kind, r in rows.items():
        print(
            f"| {kind} | {r['images']:,.0f} | {r['decode']:,.0f} | {r['read']:,.0f} | {r['input']:,.0f} | "
            f"{r['step']:,.0f} | {r['fit']:,.0f} | {r['read'] / r['step']:.1f}x | {r['input'] / r['step']:.1f}x "
            f"| {r['before']:,.0f} | {r['before'] / r['step']:.1f}x |"
        )
    for what in ("read", "input"):
        worst = min(r[what] / r["step"] for r in rows.values())
        print(f"worst {what}/step ratio: {worst:.1f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
