"""What a model version records about how it was made, typed: written once at registration, read everywhere.

BentoML keeps a version's metadata as a flat JSON-like mapping (no None values). Training
writes it through :meth:`VersionMetadata.as_dict`; serving, ``models``, scoring and the
dataset check read it through :meth:`VersionMetadata.of`, which also reads versions
registered by older Bouncers (a missing field is None, not a KeyError).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

OOD_PREFIX = "ood_"  # the OOD score's description (training.model.ood.OodScorer.describe), flat beside the rest


@dataclass(frozen=True)
class VersionMetadata:
    class_names: list[str]
    image_size: int
    dataset_id: str | None = None  # whose model this is (training.registry.serving); None: before datasets had one
    data_version: str | None = None  # the hash of labels.csv it was trained on
    data_dir: str | None = None  # for humans reading `bentoml models get`
    recipe: dict[str, Any] | None = None  # how it was trained (training.model.recipe.Recipe.params)
    metrics: dict[str, float] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)  # Keras vs ONNX on the same images
    embedder: str | None = None
    embedding_dim: int | None = None
    epochs_run: int | None = None
    mlflow_run_id: str | None = None
    onnx_opset: int | None = None
    out_of_fold_folds: int = 0
    train_input: str | None = None  # memory or stream (training.data.decoded)
    train_engine: str | None = None  # local or ray (training.pipeline.engines)
    fold_nodes: list[str] | None = None  # where each out-of-fold model was trained, fold order
    ray_nodes: int | None = None  # the Ray cluster's live nodes at the time
    train_task_cpus: int | None = None  # CPUs each Ray fold task asked for
    ood: dict[str, Any] = field(default_factory=dict)  # ood_* keys; empty for a version without an OOD score
    extra: dict[str, Any] = field(default_factory=dict)  # keys this Bouncer does not know (a newer one wrote them)

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> VersionMetadata:
        known = {f.name for f in fields(cls)} - {"ood", "extra"}
        values = {k: v for k, v in metadata.items() if k in known}
        values["class_names"] = list(metadata.get("class_names", []))
        values["image_size"] = int(metadata.get("image_size", 0))
        for name in ("recipe", "metrics", "parity"):
            if name in values:
                values[name] = dict(values[name])
        ood = {k: v for k, v in metadata.items() if k.startswith(OOD_PREFIX)}
        extra = {k: v for k, v in metadata.items() if k not in known and k not in ood}
        return cls(**values, ood=ood, extra=extra)

    def as_dict(self) -> dict[str, Any]:
        """The flat mapping BentoML stores (None values left out, the OOD keys beside the rest)."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("ood", "extra")}
        return {k: v for k, v in {**self.extra, **flat, **self.ood}.items() if v is not None}

    @property
    def ood_calibrated(self) -> bool | None:
        """False: too few held-out images per class, predictions answer ood null; None: not recorded."""
        value = self.ood.get("ood_calibrated")
        return None if value is None else bool(value)

    @property
    def ood_warning(self) -> str | None:
        return self.ood.get("ood_warning")

    def n_test(self) -> int:
        return int(self.metrics.get("n_test", 0))
