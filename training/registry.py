"""The BentoML model store: one model name, one version per training run.

A version holds the ONNX graph, the fitted embedder and the reduced vectors of
every image, so a service needs nothing but the tag to answer every endpoint.
The store is shared by every dataset trained on this machine: a version's metadata
names its dataset (``dataset_id``), and :func:`resolve_serving_tag` picks this
dataset's version for serving, evaluating and finding suspects alike.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
import joblib
import numpy as np
import onnx
from sklearn.pipeline import Pipeline

from training.embedder import EmbeddingIndex
from training.inference import OnnxClassifier
from training.label_issues import LabelAudit

if TYPE_CHECKING:
    from training.label_store import LabelStore
    from training.settings import Settings

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
EMBEDDER_FILE = "embedder.joblib"
INDEX_FILE = "index.npz"
AUDIT_FILE = "label_audit.npz"  # out-of-fold probabilities etc. for finding label errors
KERAS_FILE = "model.keras"  # the same weights in Keras, for fine-tuning and the naive-serving benchmark


@dataclass
class RegisteredModel:
    """A loaded model version: everything serving needs, from one tag."""

    tag: str
    classifier: OnnxClassifier
    embedder: Pipeline
    index: EmbeddingIndex
    metadata: dict[str, Any]
    audit: LabelAudit | None = None  # None for versions trained without out-of-fold probabilities

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    @property
    def image_size(self) -> int:
        return self.classifier.image_size

    def reduce(self, images: np.ndarray) -> np.ndarray:
        """Vectors in the index's space for images that are not in the index (e.g. uploads)."""
        return self.embedder.transform(self.classifier.predict(images).embeddings)


def register_model(
    name: str,
    onnx_model: onnx.ModelProto,
    embedder: Pipeline,
    index: EmbeddingIndex,
    *,
    metadata: dict[str, Any],
    labels: dict[str, str] | None = None,
    keras_model: Any | None = None,
    audit: LabelAudit | None = None,
) -> str:
    """Save a new version under ``name``; returns its tag ``name:version``."""
    for key in ("class_names", "image_size"):
        if key not in metadata:
            raise ValueError(f"metadata needs {key!r}")
    with bentoml.models.create(name, metadata=metadata, labels=labels or {}) as model:
        onnx.save(onnx_model, model.path_of(MODEL_FILE))
        joblib.dump(embedder, model.path_of(EMBEDDER_FILE))
        index.save(Path(model.path_of(INDEX_FILE)))
        if keras_model is not None:
            keras_model.save(model.path_of(KERAS_FILE))
        if audit is not None:
            audit.save(Path(model.path_of(AUDIT_FILE)))
    return str(model.tag)


def load_registered(tag: str, *, threads: int = 0) -> RegisteredModel:
    """Load ``name:version`` (or ``name:latest``) from the store; KeyError-like NotFound if absent."""
    model = bentoml.models.get(tag)
    metadata = dict(model.info.metadata)
    classifier = OnnxClassifier(
        Path(model.path_of(MODEL_FILE)), list(metadata["class_names"]), int(metadata["image_size"]), threads=threads
    )
    embedder = joblib.load(model.path_of(EMBEDDER_FILE))
    index = EmbeddingIndex.load(Path(model.path_of(INDEX_FILE)))
    audit_path = Path(model.path_of(AUDIT_FILE))
    audit = LabelAudit.load(audit_path) if audit_path.is_file() else None
    return RegisteredModel(str(model.tag), classifier, embedder, index, metadata, audit)


def keras_model_path(tag: str) -> Path:
    """Where ``tag`` keeps its Keras model (FileNotFoundError for versions saved without one)."""
    path = Path(bentoml.models.get(tag).path_of(KERAS_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{tag} has no {KERAS_FILE}")
    return path


def list_versions(name: str) -> list[bentoml.Model]:
    """Every stored version of ``name``, newest first."""
    try:
        models = bentoml.models.list(name)
    except bentoml.exceptions.NotFound:
        return []
    return sorted(models, key=lambda m: m.info.creation_time, reverse=True)


class ModelResolutionError(ValueError):
    """No stored version can serve this dataset; the message says what to do (a 4xx / CLI error, not a crash)."""


def dataset_matches(metadata: Mapping[str, Any], dataset_id: str, classes: list[str]) -> bool:
    """Was the version with this metadata trained on this dataset?"""
    recorded = metadata.get("dataset_id")
    if recorded is None:
        # Registered before datasets had an identity: it is this dataset's when it predicts
        # exactly this dataset's classes (the best evidence such a version carries).
        return list(metadata.get("class_names", [])) == classes
    return recorded == dataset_id


def versions_for_dataset(name: str, store: LabelStore) -> list[bentoml.Model]:
    """The stored versions of ``name`` trained on the dataset ``store`` curates, newest first."""
    classes = store.classes()
    return [m for m in list_versions(name) if dataset_matches(m.info.metadata, store.dataset_id, classes)]


def check_classes(
    tag: str, metadata: Mapping[str, Any], store: LabelStore, *, chosen_as: str = "", then: str = ""
) -> None:
    """Refuse a version whose classes are not this dataset's: its answers would name the wrong classes.

    ``chosen_as`` says how the version was picked (" (the promoted version)"), ``then`` what to
    do after training; both go into the message.
    """
    model_classes, classes = list(metadata.get("class_names", [])), store.classes()
    if not classes:
        raise ModelResolutionError(
            f"model {tag}{chosen_as} predicts the classes {model_classes}, but this dataset has no classes yet: "
            "nothing was imported into its label database (`bouncer import`)"
        )
    if model_classes != classes:
        raise ModelResolutionError(
            f"model {tag}{chosen_as} predicts the classes {model_classes}, but this dataset's classes are "
            f"{classes}: train a model on this dataset (`bouncer train`){then}"
        )


def fitting_tag(tag: str, store: LabelStore, *, chosen_as: str = "") -> str:
    """The full ``name:version`` of ``tag`` (``latest`` resolved), refused unless its classes are the dataset's."""
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        message = f"model {tag}{chosen_as} is not in the model store (see `bentoml models list`)"
        raise ModelResolutionError(message) from None
    check_classes(str(model.tag), model.info.metadata, store, chosen_as=chosen_as)
    return str(model.tag)


def resolve_serving_tag(settings: Settings, store: LabelStore) -> str:
    """The version that serves this dataset; ``evaluate`` and ``suspects`` use it too, so all of them agree.

    In order: the promoted version (a row in this dataset's label DB) if this model
    store holds it; else BOUNCER_MODEL_TAG (or the model a served bento was built with)
    if set; else the newest version trained on this dataset. A ModelResolutionError when
    there is none, or when the chosen version's classes are not the dataset's.
    """
    promoted = store.serving(settings.model_name)
    if promoted is not None:
        try:
            model = bentoml.models.get(promoted.tag)
        except bentoml.exceptions.NotFound:
            log.warning("promoted version %s is not in this model store; not serving it", promoted.tag)
        else:
            check_classes(
                str(model.tag),
                model.info.metadata,
                store,
                chosen_as=" (the promoted version)",
                then=", then promote it (`bouncer promote VERSION`)",
            )
            return str(model.tag)
    if settings.pinned_model_tag:
        pinned_by = "BOUNCER_MODEL_TAG" if settings.model_tag else "the model_tag the bento was built with"
        return fitting_tag(settings.pinned_model_tag, store, chosen_as=f" ({pinned_by})")
    matching = versions_for_dataset(settings.model_name, store)
    if not matching:
        others = len(list_versions(settings.model_name))
        raise ModelResolutionError(
            f"no '{settings.model_name}' model was trained on the dataset in {settings.data_dir} "
            f"(dataset id {store.dataset_id}"
            + (f"; the {others} stored version(s) belong to other datasets" if others else "")
            + "): train one with `bouncer train`"
        )
    check_classes(str(matching[0].tag), matching[0].info.metadata, store, chosen_as=" (the newest of this dataset)")
    return str(matching[0].tag)
