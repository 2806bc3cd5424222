"""What a training run leaves for finding label errors later, stored with the model version."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class LabelAudit:
    """What a training run leaves for finding label errors later, stored with the model version."""

    image_ids: np.ndarray  # (n,) train images, in training order
    out_of_fold: np.ndarray  # (n, K) probabilities from models that did not see the image
    in_sample: np.ndarray  # (n, K) probabilities from the final model (the naive baseline)
    duplicate_groups: np.ndarray  # (n,) near-duplicate group id, -1 for none (see near_duplicate_groups)
    sha256s: np.ndarray  # (n,) hex
    folds: int
    # Feature-space neighbours (see training.model.out_of_fold): rows of this audit's images, and rows of
    # ``test_ids``, most like each image in a space its own label did not shape; -1 none. Empty (n, 0)
    # in audits from before them, which rank on the probabilities alone.
    neighbours: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))  # (n, k)
    similarities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (n, k)
    test_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, str))  # (m,) the test images of the run
    test_neighbours: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int32))  # (n, k) rows of test_ids
    test_similarities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # (n, k)

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        for name in ("neighbours", "similarities", "test_neighbours", "test_similarities"):
            value = getattr(self, name)
            if len(value) != n:  # none stored (older audits): no neighbours for anyone
                object.__setattr__(self, name, np.zeros((n, 0), value.dtype))

    def extended(self, image_ids: list[str], probabilities: np.ndarray, sha256s: list[str]) -> LabelAudit:
        """With images the version never trained on (imported later, scored by ``bouncer score``).

        The model never saw them, so its probabilities are out-of-sample for them as
        the fold models' are for the train images.
        """
        if not image_ids:
            return self
        new = len(image_ids)

        def none_for_them(rows: np.ndarray, fill: float) -> np.ndarray:  # no neighbours were searched for them
            return np.concatenate([rows, np.full((new, rows.shape[1]), fill, rows.dtype)])

        return LabelAudit(
            np.concatenate([self.image_ids, np.asarray(image_ids, dtype=self.image_ids.dtype)]),
            np.concatenate([self.out_of_fold, probabilities.astype(self.out_of_fold.dtype)]),
            np.concatenate([self.in_sample, probabilities.astype(self.in_sample.dtype)]),
            np.concatenate([self.duplicate_groups, np.full(new, -1, self.duplicate_groups.dtype)]),
            np.concatenate([self.sha256s, np.asarray(sha256s, dtype=self.sha256s.dtype)]),
            self.folds,
            none_for_them(self.neighbours, -1),
            none_for_them(self.similarities, 0),
            self.test_ids,
            none_for_them(self.test_neighbours, -1),
            none_for_them(self.test_similarities, 0),
        )

    def save(self, path: Path) -> None:
        np.savez_compressed(
            path,
            image_ids=self.image_ids,
            out_of_fold=self.out_of_fold,
            in_sample=self.in_sample,
            duplicate_groups=self.duplicate_groups,
            sha256s=self.sha256s,
            folds=np.int64(self.folds),
            neighbours=self.neighbours,
            similarities=self.similarities,
            test_ids=self.test_ids,
            test_neighbours=self.test_neighbours,
            test_similarities=self.test_similarities,
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
                *(data[name] for name in _NEIGHBOUR_FIELDS if name in data.files),
            )


_NEIGHBOUR_FIELDS = ("neighbours", "similarities", "test_ids", "test_neighbours", "test_similarities")
