"""What a training run of the train task answers, typed, without importing TensorFlow.

The child process writes it (:mod:`training.jobs.child`), the service's runner reads it
back (:mod:`training.jobs.runner`) and the service answers it: all three share this type,
and only the child imports the training pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class RetrainResult:
    model_version: str
    tag: str
    metrics: dict[str, float]
    previous_version: str | None
    previous_metrics: dict[str, float] | None
    promoted: bool
    promotion_message: str
    bento_tag: str | None
    bento_message: str
    data_version: str
    mlflow_run_id: str
    epochs_run: int
    beats_baseline: bool | None  # test accuracy above always answering the most common label; None without test
    warning: str | None  # for people: the new model is no better than that baseline, or there was no test split
    test_accuracy_interval: list[float] | None = None  # 95% interval of the new model's test accuracy
    promotion_warning: str | None = None  # the test split cannot tell the new and the serving model apart
    ood_calibrated: bool | None = None  # False: too few held-out images per class; predictions answer ood: null
    ood_warning: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, result: Mapping[str, Any]) -> RetrainResult:
        """Read back from the child's result file; keys a newer child wrote are left out, not a TypeError."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in result.items() if k in names})
