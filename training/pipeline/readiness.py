"""What a dataset can support, said before any training starts.

A run on a tiny folder used to train for minutes and then stop on the OOD score's
minimum (issue 22). :func:`assess` reads only the counts: too few images for a model at
all stops at once (:class:`NotEnoughImages`, naming the minimum); too few for the
out-of-fold models, the OOD score or a test accuracy worth reading skips that step or
warns, and says so at import and at the start of every training. The README's "Your own
folder" lists these minimums.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from training.errors import Invalid
from training.model.evaluation import WIDE_INTERVAL, accuracy_interval
from training.model.ood import MIN_CALIBRATION
from training.settings import Settings

MIN_CLASSES = 2  # a classifier needs two classes with a training image each
# Each out-of-fold model trains on (folds - 1) / folds of the train split and scores the rest:
# below this many images a fold, it learns nothing and the suspects it gives are noise.
MIN_IMAGES_PER_FOLD = 10
# The OOD score's reference needs a few train images beyond those it calibrates on.
MIN_OOD_REFERENCE = 2
# A test split is "worth reading" when an accuracy of 0.9 on it is known within WIDE_INTERVAL.
TYPICAL_ACCURACY = 0.9


class NotEnoughImages(Invalid):
    """The dataset cannot train a model at all (a user error: one line, exit 2, nothing written)."""


@dataclass(frozen=True)
class Readiness:
    """Which optional steps a training of this dataset will run, and why the others will not."""

    per_class: dict[str, int]  # train images per class
    n_test: int
    out_of_fold: bool
    ood: bool
    notes: list[str] = field(default_factory=list)  # one sentence per step skipped or figure to doubt

    @property
    def n_train(self) -> int:
        return sum(self.per_class.values())

    def fitted(self) -> list[str]:
        """What a training will fit, in words."""
        optional = [("the OOD score", self.ood), ("the out-of-fold models (suspects)", self.out_of_fold)]
        return ["the model", "the embedder", *(name for name, fits in optional if fits)]

    def summary(self) -> str:
        counts = f"{self.n_train} train images in {len(self.per_class)} classes, {self.n_test} test"
        return f"{counts}: fits {', '.join(self.fitted())}"


def minimum_train_images(settings: Settings) -> dict[str, int]:
    """The documented minimums, for the README and the error messages."""
    return {
        "classes": MIN_CLASSES,
        "out_of_fold": MIN_IMAGES_PER_FOLD * settings.out_of_fold_folds,
        "ood": MIN_CALIBRATION + MIN_OOD_REFERENCE,
    }


def assess(settings: Settings, train_per_class: Mapping[str, int], n_test: int) -> Readiness:
    """What a training on these labels (train images per class) can fit; NotEnoughImages when it cannot train at all.

    Counts, not a label per image: ``bouncer import`` asks the database for them (a label per image was ~0.4 KB
    an image to read).
    """
    per_class = {name: count for name, count in sorted(train_per_class.items()) if count > 0}
    if len(per_class) < MIN_CLASSES:
        found = ", ".join(f"{name} ({count})" for name, count in per_class.items()) or "none"
        raise NotEnoughImages(
            f"need training images of at least {MIN_CLASSES} classes under "
            f"{settings.data_dir / settings.train_split}/<class>/, found: {found}"
        )
    n_train, notes = sum(per_class.values()), []
    folds = settings.out_of_fold_folds
    out_of_fold = folds >= 2 and n_train >= MIN_IMAGES_PER_FOLD * folds
    if folds >= 2 and not out_of_fold:
        notes.append(
            f"out-of-fold models skipped: {folds} folds need at least {MIN_IMAGES_PER_FOLD * folds} train images "
            f"({MIN_IMAGES_PER_FOLD} a fold), there are {n_train}; this version will have no suspects "
            "(trace and similar still work)"
        )
    # Calibrated on the test split, or on a tenth of the train split held out when the test split is small.
    ood = n_train >= MIN_OOD_REFERENCE and (n_test >= MIN_CALIBRATION or n_train >= MIN_CALIBRATION + MIN_OOD_REFERENCE)
    if not ood:
        notes.append(
            f"OOD score skipped: it needs {MIN_CALIBRATION} test images or {MIN_CALIBRATION + MIN_OOD_REFERENCE} "
            f"train images, there are {n_test} and {n_train}; predictions will carry no ood_score"
        )
    if n_test == 0:
        notes.append("no test split: the version gets no test accuracy and a training is promoted only with force")
    else:
        low, high = accuracy_interval(round(TYPICAL_ACCURACY * n_test), n_test)
        if high - low > WIDE_INTERVAL:
            notes.append(
                f"only {n_test} test images: an accuracy of {TYPICAL_ACCURACY} on them could be anywhere in "
                f"[{low:.2f}, {high:.2f}] (95%), too uncertain to trust or to compare models by; the promotion "
                "gate will say so"
            )
    return Readiness(per_class, n_test, out_of_fold, ood, notes)
