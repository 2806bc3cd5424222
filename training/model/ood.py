"""How unlike the training data an image is: the out-of-distribution score served with every prediction.

A softmax is confident about anything, including noise and classes it never saw; the
network's penultimate embedding is not. Two well-studied scores over that embedding
(``BOUNCER_OOD_METHOD``; ``benchmarks/ood.py`` measures which separates best):

- ``knn``: cosine distance from the image's L2-normalised embedding to its k-th nearest
  training embedding (Sun et al., ICML 2022, "Out-of-distribution detection with deep
  nearest neighbors"), over a fixed-size sample of the train split, so its cost per
  prediction does not grow with the dataset.
- ``mahalanobis``: the smallest Mahalanobis distance to a class mean under one shared,
  shrunk covariance (Lee et al., NeurIPS 2018), d*d + classes*d operations per image, over
  the L2-normalised embedding by default (``normalise``): on the demo that lifted the AUROC
  of a held-out class from 0.84 to 0.96 and of photographs from 0.94 to 0.96, noise staying 1.0.

A raw score means nothing to a user, so it is mapped to 0..1 by its rank among held-out
in-distribution images (the test split, which the network never trained on): an
``ood_score`` of 0.995 is more unusual than 99.5% of them. ``ood`` is true above the
``BOUNCER_OOD_QUANTILE`` (0.99) of those held-out images: about 1% of in-distribution
images are flagged, by construction. The map is strictly increasing, so ranking (AUROC)
is the raw score's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

OodMethod = Literal["knn", "mahalanobis"]
MIN_CALIBRATION = 10  # held-out images needed for a meaningful rank
EIGEN_CUTOFF = 1e-8  # covariance eigenvalues below this share of the largest are no direction at all


@dataclass
class OodScorer:
    """Fitted at training time, saved with the model version (``ood.npz``), loaded by every worker."""

    method: OodMethod
    k: int
    reference: np.ndarray  # knn: (m, d) L2-normalised training embeddings; mahalanobis: (classes, d) whitened means
    whitening: np.ndarray  # mahalanobis: (d, r), r <= d directions with variance; knn: (0, 0)
    calibration: np.ndarray  # raw scores of held-out in-distribution images, sorted
    quantile: float
    normalise: bool = True  # mahalanobis: on the L2-normalised embedding (knn always is)
    threshold_raw: float = field(init=False)

    def __post_init__(self) -> None:
        self.threshold_raw = float(np.quantile(self.calibration, self.quantile))

    @property
    def threshold(self) -> float:
        """``ood`` is ``ood_score > threshold`` (the quantile's place on the 0..1 scale)."""
        return float(self.to_unit(np.array([self.threshold_raw]))[0])

    def raw(self, embeddings: np.ndarray) -> np.ndarray:
        """The method's distance for each row of (n, D) network embeddings: higher = further from training."""
        x = np.asarray(embeddings, dtype=np.float32)
        if self.method == "knn":
            x = _normalise(x)
            similarity = x @ self.reference.T  # (n, m)
            kth = min(self.k, similarity.shape[1]) - 1
            nearest = -np.partition(-similarity, kth, axis=1)[:, kth]
            return np.maximum(1.0 - nearest, 0.0).astype(np.float64)
        white = (_normalise(x) if self.normalise else x) @ self.whitening  # (n, d)
        squared = (
            (white * white).sum(axis=1, keepdims=True)
            - 2.0 * white @ self.reference.T
            + (self.reference * self.reference).sum(axis=1)
        )
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0)).astype(np.float64)

    def to_unit(self, raw: np.ndarray) -> np.ndarray:
        """Rank among the held-out scores, continuous and strictly increasing, tails included."""
        c = self.calibration
        n = len(c)
        ranks = np.arange(1, n + 1) / (n + 1)
        unit = np.interp(raw, c, ranks)
        low, high = raw < c[0], raw > c[-1]
        unit[low] = ranks[0] * raw[low] / max(c[0], 1e-12)
        unit[high] = ranks[-1] + (1 - ranks[-1]) * (1 - c[-1] / raw[high])
        return unit

    def score(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(ood_score, ood)`` for each row of (n, D) embeddings."""
        raw = self.raw(embeddings)
        return self.to_unit(raw), raw > self.threshold_raw

    def save(self, path: Path) -> None:
        np.savez(
            path,
            method=np.array(self.method),
            k=np.array(self.k),
            reference=self.reference,
            whitening=self.whitening,
            calibration=self.calibration,
            quantile=np.array(self.quantile),
            normalise=np.array(self.normalise),
        )

    @classmethod
    def load(cls, path: Path) -> OodScorer:
        with np.load(path) as f:
            return cls(
                method=str(f["method"]),  # type: ignore[arg-type]
                k=int(f["k"]),
                reference=f["reference"],
                whitening=f["whitening"],
                calibration=f["calibration"],
                quantile=float(f["quantile"]),
                normalise=bool(f["normalise"]) if "normalise" in f.files else False,
            )

    def describe(self) -> dict[str, float | int | str]:
        """What MLflow and the model's metadata record about it."""
        return {
            "ood_method": self.method,
            "ood_normalise": int(self.normalise),
            "ood_k": self.k,
            "ood_reference_size": int(len(self.reference)),
            "ood_calibration_size": int(len(self.calibration)),
            "ood_quantile": self.quantile,
            "ood_threshold": self.threshold,
            "ood_threshold_raw": self.threshold_raw,
        }


def fit_ood(
    method: OodMethod,
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    held_out_embeddings: np.ndarray,
    *,
    k: int = 10,
    reference_max: int = 2048,
    quantile: float = 0.99,
    seed: int = 0,
    normalise: bool = True,
) -> OodScorer:
    """Fit on the train split's embeddings (and integer labels), calibrate on held-out in-distribution ones.

    With fewer than MIN_CALIBRATION held-out images (no test split), a random tenth of
    the train split is held out of the reference and calibrates instead.
    """
    rng = np.random.default_rng(seed)
    train = np.asarray(train_embeddings, dtype=np.float32)
    labels = np.asarray(train_labels)
    held_out = np.asarray(held_out_embeddings, dtype=np.float32)
    if len(held_out) < MIN_CALIBRATION:
        order = rng.permutation(len(train))
        cut = max(MIN_CALIBRATION, len(train) // 10)
        if len(train) - cut < 2:
            raise ValueError(f"need at least {MIN_CALIBRATION + 2} images to fit the OOD score, got {len(train)}")
        held_out, train, labels = train[order[:cut]], train[order[cut:]], labels[order[cut:]]
    if method == "knn":
        sample = rng.choice(len(train), size=min(reference_max, len(train)), replace=False)
        reference, whitening = _normalise(train[np.sort(sample)]), np.zeros((0, 0), np.float32)
    elif method == "mahalanobis":
        reference, whitening = _class_gaussians(_normalise(train) if normalise else train, labels)
    else:
        raise ValueError(f"unknown OOD method {method!r}; use 'knn' or 'mahalanobis'")
    uncalibrated = OodScorer(method, k, reference, whitening, np.zeros(1), quantile, normalise)
    return replace(uncalibrated, calibration=np.sort(uncalibrated.raw(held_out)))


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _class_gaussians(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whitened class means and the whitening of the shared empirical covariance, pseudo-inverted.

    Directions without variance in the train split (dead ReLU units) are dropped, as a
    pseudo-inverse does. Shrunk estimates (Ledoit-Wolf, OAS) separated photographs less
    well on the demo (AUROC 0.948, 0.951 against 0.956).
    """
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes]).astype(np.float64)
    centred = x - means[np.searchsorted(classes, labels)]
    values, vectors = np.linalg.eigh(centred.T @ centred / len(centred))
    keep = values > values.max() * EIGEN_CUTOFF
    whitening = (vectors[:, keep] / np.sqrt(values[keep])).astype(np.float32)
    return (means @ whitening).astype(np.float32), whitening
