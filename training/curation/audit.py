"""What a training run leaves for finding label errors later, stored with the model version."""

from __future__ import annotations

from dataclasses import dataclass
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

    def extended(self, image_ids: list[str], probabilities: np.ndarray, sha256s: list[str]) -> LabelAudit:
        """With images the version never trained on (imported later, scored by ``bouncer score``).

        The model never saw them, so its probabilities are out-of-sample for them as
        the fold models' are for the train images.
        """
        if not image_ids:
            return self
        return LabelAudit(
            np.concatenate([self.image_ids, np.asarray(image_ids, dtype=self.image_ids.dtype)]),
            np.concatenate([self.out_of_fold, probabilities.astype(self.out_of_fold.dtype)]),
            np.concatenate([self.in_sample, probabilities.astype(self.in_sample.dtype)]),
            np.concatenate([self.duplicate_groups, np.full(len(image_ids), -1, self.duplicate_groups.dtype)]),
            np.concatenate([self.sha256s, np.asarray(sha256s, dtype=self.sha256s.dtype)]),
            self.folds,
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
            )
