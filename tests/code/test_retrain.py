"""The promotion gate of the train task."""

from __future__ import annotations

import pytest

from training.pipeline.retrain import should_promote


@pytest.mark.parametrize(
    ("new", "serving", "force", "promoted", "message"),
    [
        (0.5, 0.9, True, True, "forced"),
        (0.5, None, False, True, "no model was serving"),
        (0.91, 0.9, False, True, "0.9100 >= 0.9000"),
        (0.9, 0.9, False, True, "0.9000 >= 0.9000"),
        (0.89, 0.9, False, False, "not promoted"),
        (None, 0.9, False, False, "no test split"),
        (None, None, True, True, "forced"),
    ],
    ids=["forced", "no-serving-model", "better", "equal", "worse", "no-test-split", "no-test-split-forced"],
)
def test_should_promote(new: float | None, serving: float | None, force: bool, promoted: bool, message: str) -> None:
    decision, why = should_promote(new, serving, force=force)
    assert decision is promoted
    assert message in why
    if not promoted:
        assert "force" in why  # says how to override
