"""Embedder and OOD fits read every train image up to BOUNCER_FIT_SAMPLE_MAX, a seeded sample beyond."""

from __future__ import annotations

import numpy as np

from training.pipeline.training_run import fit_sample
from training.settings import Settings


def test_up_to_the_limit_a_fit_reads_every_row_as_a_view(settings: Settings) -> None:
    limited = settings.model_copy(update={"fit_sample_max": 1_000})
    features = np.arange(1_000 * 4, dtype=np.float32).reshape(1_000, 4)
    rows = fit_sample(len(features), limited)
    assert np.shares_memory(features[rows], features)  # no copy: the very fit of before the setting
    assert np.array_equal(features[rows], features)


def test_beyond_the_limit_a_seeded_sample_of_distinct_rows_in_order(settings: Settings) -> None:
    limited = settings.model_copy(update={"fit_sample_max": 1_000})
    rows = fit_sample(50_000, limited)
    assert isinstance(rows, np.ndarray) and len(rows) == 1_000
    assert len(np.unique(rows)) == 1_000 and np.all(np.diff(rows) > 0) and rows[-1] < 50_000
    assert np.array_equal(rows, fit_sample(50_000, limited))  # the same seed, the same rows
    reseeded = limited.model_copy(update={"seed": limited.seed + 1})
    assert not np.array_equal(rows, fit_sample(50_000, reseeded))
    # spread over the whole split, not its first rows (a folder sorted by class would fit one class)
    assert np.histogram(rows, bins=10, range=(0, 50_000))[0].min() > 50
