"""scikit-learn's handwritten digits as an image folder, with a share of the train labels made wrong.

Two kinds of wrong labels, as a label-error benchmark needs (Chong et al. 2022 and
UQ-LED 2024 show random flips are the easy kind): ``random`` (any other digit,
uniformly) and ``confusable`` (the digit a person misreads it as: 3<->8, 1<->7,
4<->9, ...). The test split stays clean; what was flipped goes to ground_truth.csv.
Real pictures shipped with scikit-learn: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from training.data.ground_truth import PoisonedImage, clear_splits, write_ground_truth

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# What each digit is misread as by people: the usual confusions of handwritten digits.
CONFUSABLE = {
    0: (6, 8), 1: (7, 4), 2: (7, 3), 3: (8, 5), 4: (9, 1), 5: (6, 3), 6: (0, 5), 7: (1, 2), 8: (3, 9), 9: (4, 8)
}  # fmt: skip


@dataclass(frozen=True)
class DigitsSpec:
    noise: Literal["random", "confusable"] = "random"
    noise_fraction: float = 0.10
    test_fraction: float = 0.2
    seed: int = 0


def write_noisy_digits(data_dir: Path, spec: DigitsSpec) -> list[PoisonedImage]:
    """``data_dir/{train,test}/<digit name>/*.png`` (8x8 grey) and ground_truth.csv; deterministic in ``spec``."""
    from sklearn.datasets import load_digits

    clear_splits(data_dir, force=True)
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    targets = digits.target.astype(int)
    rng = np.random.default_rng(spec.seed)
    test = np.zeros(len(targets), dtype=bool)
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(targets == digit))
        test[members[: int(round(spec.test_fraction * len(members)))]] = True
    train = np.flatnonzero(~test)
    flipped = rng.choice(train, size=int(round(spec.noise_fraction * len(train))), replace=False)
    given = targets.copy()
    for i in flipped:
        if spec.noise == "random":
            given[i] = (targets[i] + int(rng.integers(1, 10))) % 10
        else:
            given[i] = CONFUSABLE[int(targets[i])][int(rng.integers(2))]
    poisoned = []
    for i in range(len(targets)):
        split = "test" if test[i] else "train"
        relative = f"{split}/{NAMES[given[i]]}/{i:04d}.png"
        (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[i]).save(data_dir / relative)
        if given[i] != targets[i]:
            poisoned.append(PoisonedImage(relative, NAMES[targets[i]], NAMES[given[i]], spec.noise))
    write_ground_truth(data_dir, poisoned)
    return poisoned
