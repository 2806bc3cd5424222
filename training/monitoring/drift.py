"""Has the world moved? Recent served predictions against the serving version's drift reference.

Per window, three questions, each a named scipy test plus an effect size, because with
thousands of predictions a test alone flags differences too small to matter:

- **OOD share**: more predictions flagged ``ood`` than the expected ``1 - BOUNCER_OOD_QUANTILE``?
  One-sided binomial test; drift when p < alpha and the share is at least twice the expected one.
  The expected share holds by construction: every OOD method's threshold is that quantile of the
  held-out test images' scores (``training.model.ood``). Predictions answered ``ood: null`` (a
  version whose threshold is uncalibrated, or scoring off) are not counted: the share is unknown.
- **Label shift**: the predicted-label mix against the reference's (the model's predictions
  on held-out data). Chi-square goodness of fit; drift when p < alpha and the Jensen-Shannon
  distance is at least 0.1.
- **Embedding shift**: the reduced embeddings of the window's predictions (serving version
  only) against the reference sample. Two-sample Kolmogorov-Smirnov per dimension,
  Bonferroni-corrected; drift when p < alpha and the largest KS statistic is at least 0.1.

A window with fewer than ``BOUNCER_DRIFT_MIN_PREDICTIONS`` predictions gets "too few
predictions", never a verdict from noise.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from scipy.spatial.distance import jensenshannon

from training.errors import Invalid, quoted
from training.model.reference import DriftReference
from training.monitoring.prediction_log import PredictionLog, WindowCounts

OOD_RATIO_MIN = 2.0  # observed/expected OOD share that matters
LABEL_JS_MIN = 0.1  # Jensen-Shannon distance (base 2, 0..1) that matters
EMBEDDING_KS_MIN = 0.1  # KS statistic that matters
VECTOR_SAMPLE = 5000  # newest vectors compared per window
METHODS = {
    "ood_share": "one-sided binomial test against the expected share (scipy.stats.binomtest)",
    "label_shift": "chi-square goodness of fit (scipy.stats.chisquare), Jensen-Shannon distance as effect size",
    "embedding_shift": "two-sample Kolmogorov-Smirnov per reduced dimension (scipy.stats.ks_2samp), Bonferroni",
}
# 1 to 999 of a unit (s, m, h, d, w): the API's schema documents the same pattern, so a valid-looking
# window is never refused (issue 20: "0d" matched the old, looser pattern and was a 400).
DURATION_PATTERN = r"^[1-9][0-9]{0,2}[smhdw]$"
_DURATION = re.compile(DURATION_PATTERN)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class DriftInputError(Invalid):
    """A window that cannot be read (a 400, naming the problem)."""


def parse_window(text: str) -> float:
    """'15m', '1h', '24h', '7d', '2w' -> seconds."""
    if not _DURATION.fullmatch(text or ""):
        raise DriftInputError(
            f"window {quoted(text)} is not a duration like 30m, 1h, 24h, 7d or 2w (1 to 999 of s/m/h/d/w)"
        )
    return float(text[:-1]) * _UNIT_S[text[-1]]


@dataclass(frozen=True)
class WindowReport:
    start: float
    end: float
    n: int
    verdict: str  # "drift", "no drift" or "too few predictions"
    reasons: list[str]
    ood: dict[str, Any]
    labels: dict[str, Any]
    embedding: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": _iso(self.start),
            "end": _iso(self.end),
            "n": self.n,
            "verdict": self.verdict,
            "reasons": self.reasons,
            "ood": self.ood,
            "labels": self.labels,
            "embedding": self.embedding,
        }


def drift_report(
    log: PredictionLog,
    reference: DriftReference,
    model_version: str,
    *,
    window: str = "24h",
    windows: int = 7,
    alpha: float = 0.01,
    min_predictions: int = 30,
    now: float | None = None,
) -> dict[str, Any]:
    """The last ``windows`` windows of ``window`` each, newest first; the verdict is the newest window's."""
    if not 1 <= windows <= 366:
        raise DriftInputError(f"windows must be between 1 and 366, got {windows}")
    span = parse_window(window)
    end = now if now is not None else time.time()
    reports = []
    for _ in range(windows):
        start = max(end - span, 0.0)  # windows before 1970 hold nothing: empty, not a date out of range
        counts = log.window(start, end, vector_version=model_version, vector_sample=VECTOR_SAMPLE)
        reports.append(compare(counts, reference, start, end, alpha=alpha, min_predictions=min_predictions))
        end = start
    newest = reports[0]
    return {
        "model_version": model_version,
        "reference": {"source": reference.source, "n": reference.n, "expected_ood_share": reference.ood_share},
        "window": window,
        "alpha": alpha,
        "methods": METHODS,
        "verdict": newest.verdict,
        "reasons": newest.reasons,
        "windows": [r.as_dict() for r in reports],
    }


def compare(
    counts: WindowCounts, reference: DriftReference, start: float, end: float, *, alpha: float, min_predictions: int
) -> WindowReport:
    """One window's three tests and verdict."""
    ood = _ood_share(counts, reference, alpha)
    labels = _label_shift(counts, reference, alpha)
    embedding = _embedding_shift(counts.vectors, reference.vectors, alpha)
    if counts.n < min_predictions:
        needed = (
            f"{counts.n} prediction{'' if counts.n == 1 else 's'} in this window, at least {min_predictions} are "
            "needed for a verdict (BOUNCER_DRIFT_MIN_PREDICTIONS): every answer of predict counts"
        )
        return WindowReport(start, end, counts.n, "too few predictions", [needed], ood, labels, embedding)
    reasons = [part["reason"] for part in (ood, labels, embedding) if part.get("drift")]
    return WindowReport(start, end, counts.n, "drift" if reasons else "no drift", reasons, ood, labels, embedding)


def _ood_share(counts: WindowCounts, reference: DriftReference, alpha: float) -> dict[str, Any]:
    expected = reference.ood_share
    if counts.scored == 0:
        note = "no prediction in the window has an ood flag (an uncalibrated OOD threshold, or scoring off)"
        return {
            "share": None,
            "expected": expected,
            "p_value": None,
            "drift": False,
            "note": note if counts.n else None,
        }
    share = counts.ood / counts.scored
    p = float(stats.binomtest(counts.ood, counts.scored, expected, alternative="greater").pvalue)
    drift = p < alpha and share >= OOD_RATIO_MIN * expected
    return {
        "share": share,
        "expected": expected,
        "count": counts.ood,
        "p_value": p,
        "drift": drift,
        "reason": f"{share:.1%} of predictions out of distribution (expected {expected:.1%}, p={p:.2g})",
    }


def _label_shift(counts: WindowCounts, reference: DriftReference, alpha: float) -> dict[str, Any]:
    classes = reference.class_names
    observed = np.array([counts.labels.get(c, 0) for c in classes], dtype=np.float64)
    shares = dict(zip(classes, (observed / max(observed.sum(), 1)).round(6).tolist(), strict=True))
    expected_shares = dict(zip(classes, reference.label_shares.round(6).tolist(), strict=True))
    if observed.sum() == 0:
        return {"shares": shares, "reference_shares": expected_shares, "p_value": None, "drift": False}
    smoothed = reference.label_shares + 0.5 / max(reference.n, 1)  # a class never predicted on held-out data
    expected = smoothed / smoothed.sum() * observed.sum()
    p = float(stats.chisquare(observed, expected).pvalue)
    distance = float(jensenshannon(observed / observed.sum(), smoothed / smoothed.sum(), base=2))
    moved = max(classes, key=lambda c: abs(shares[c] - expected_shares[c]))
    return {
        "shares": shares,
        "reference_shares": expected_shares,
        "js_distance": distance,
        "p_value": p,
        "drift": p < alpha and distance >= LABEL_JS_MIN,
        "reason": (
            f"predicted-label mix moved (Jensen-Shannon {distance:.2f}, p={p:.2g}; "
            f"{moved}: {shares[moved]:.1%} vs {expected_shares[moved]:.1%})"
        ),
    }


def _embedding_shift(vectors: np.ndarray, reference: np.ndarray, alpha: float) -> dict[str, Any]:
    if len(vectors) < 2 or len(reference) < 2 or vectors.shape[1] != reference.shape[1]:
        return {"n_compared": int(len(vectors)), "ks_max": None, "p_value": None, "drift": False}
    dims = reference.shape[1]
    results = [stats.ks_2samp(vectors[:, d], reference[:, d]) for d in range(dims)]
    statistics = np.array([r.statistic for r in results])
    p_values = np.minimum(np.array([r.pvalue for r in results]) * dims, 1.0)  # Bonferroni
    worst = int(statistics.argmax())
    p = float(p_values.min())
    shifted = int(((p_values < alpha) & (statistics >= EMBEDDING_KS_MIN)).sum())
    return {
        "n_compared": int(len(vectors)),
        "ks_max": float(statistics[worst]),
        "dimension": worst,
        "p_value": p,
        "dimensions_shifted": shifted,
        "drift": shifted > 0,
        "reason": f"embedding moved in {shifted} of {dims} dimensions (largest KS {statistics[worst]:.2f}, p={p:.2g})",
    }


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if math.isfinite(seconds) else ""
