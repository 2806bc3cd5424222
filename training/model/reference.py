"""What served predictions should look like if the world has not moved: the drift report's baseline.

Fitted at training time on held-out in-distribution images (the test split, never
trained on; the train split when there is no test split), from the served model's own
outputs, so a report compares predictions with predictions: the share of each
predicted class, the reduced embedding of a sample, and the share flagged OOD (by
construction ``1 - BOUNCER_OOD_QUANTILE``). Saved with the model version and logged to
MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VECTOR_SAMPLE = 2000  # reduced vectors kept for the embedding test


@dataclass(frozen=True)
class DriftReference:
    class_names: list[str]
    label_shares: np.ndarray  # (classes,) predicted-label shares, summing to 1
    vectors: np.ndarray  # (m, d) reduced embeddings of a sample
    ood_share: float  # expected share of `ood: true` among in-distribution images
    n: int  # images the shares come from
    source: str  # which split they come from

    def save(self, path: Path) -> None:
        np.savez(
            path,
            class_names=np.array(self.class_names),
            label_shares=self.label_shares,
            vectors=self.vectors,
            ood_share=np.array(self.ood_share),
            n=np.array(self.n),
            source=np.array(self.source),
        )

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        with np.load(path) as f:
            return cls(
                [str(c) for c in f["class_names"]],
                f["label_shares"],
                f["vectors"],
                float(f["ood_share"]),
                int(f["n"]),
                str(f["source"]),
            )

    def statistics(self) -> dict[str, Any]:
        """What MLflow records: the label mix and the embedding's mean and spread per dimension."""
        return {
            "source": self.source,
            "n": self.n,
            "expected_ood_share": self.ood_share,
            "label_shares": dict(zip(self.class_names, self.label_shares.round(6).tolist(), strict=True)),
            "vector_mean": self.vectors.mean(axis=0).round(6).tolist() if len(self.vectors) else [],
            "vector_std": self.vectors.std(axis=0).round(6).tolist() if len(self.vectors) else [],
        }


def fit_reference(
    class_names: list[str],
    probabilities: np.ndarray,
    vectors: np.ndarray,
    *,
    ood_share: float,
    source: str,
    seed: int = 0,
) -> DriftReference:
    """From the model's outputs on held-out images: (n, classes) probabilities and (n, d) reduced vectors."""
    predicted = np.asarray(probabilities).argmax(axis=1)
    counts = np.bincount(predicted, minlength=len(class_names)).astype(np.float64)
    shares = counts / max(counts.sum(), 1.0)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(vectors), size=min(VECTOR_SAMPLE, len(vectors)), replace=False))
    return DriftReference(
        list(class_names), shares, np.asarray(vectors, np.float32)[keep], ood_share, len(predicted), source
    )
