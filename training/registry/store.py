"""The BentoML model store: one model name, one version per training run.

A version holds the ONNX graph, the fitted embedder and the reduced vectors of
every image (the vector index, :mod:`training.vectors`), so a service needs
nothing but the tag to answer every endpoint. Which version serves is :mod:`training.registry.serving`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import joblib
import numpy as np
import onnx
from sklearn.pipeline import Pipeline

from training.curation.audit import LabelAudit
from training.model.inference import OnnxClassifier
from training.model.ood import OodScorer
from training.model.reference import DriftReference
from training.registry.metadata import VersionMetadata
from training.settings import Settings
from training.vectors.base import VectorIndex
from training.vectors.open import load_index

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
EMBEDDER_FILE = "embedder.joblib"
AUDIT_FILE = "label_audit.npz"  # out-of-fold probabilities etc. for finding label errors
OOD_FILE = "ood.npz"  # the fitted out-of-distribution scorer (training.model.ood)
REFERENCE_FILE = "drift_reference.npz"  # what predictions looked like on held-out data (training.model.reference)
KERAS_FILE = "model.keras"  # the same weights in Keras, for fine-tuning and the naive-serving benchmark


@dataclass
class RegisteredModel:
    """A loaded model version: everything serving needs, from one tag."""

    tag: str
    classifier: OnnxClassifier
    embedder: Pipeline
    index: VectorIndex
    metadata: VersionMetadata
    audit: LabelAudit | None = None  # None for versions trained without out-of-fold probabilities
    ood: OodScorer | None = None  # None for versions trained before the OOD score existed
    reference: DriftReference | None = None  # likewise

    @property
    def version(self) -> str:
        return version_of(self.tag)

    @property
    def class_names(self) -> list[str]:
        return self.classifier.class_names

    @property
    def image_size(self) -> int:
        return self.classifier.image_size

    def reduce(self, images: np.ndarray) -> np.ndarray:
        """Vectors in the index's space for images that are not in the index (e.g. uploads)."""
        return self.embedder.transform(self.classifier.predict(images).similarity)


def register_model(
    name: str,
    onnx_model: onnx.ModelProto,
    embedder: Pipeline,
    index: VectorIndex,
    *,
    metadata: VersionMetadata,
    labels: dict[str, str] | None = None,
    keras_model: Any | None = None,
    audit: LabelAudit | None = None,
    ood: OodScorer | None = None,
    reference: DriftReference | None = None,
) -> str:
    """Save a new version under ``name``; returns its tag ``name:version``."""
    if not metadata.class_names or metadata.image_size <= 0:
        raise ValueError(f"a version needs its class names and image size, got {metadata}")
    with bentoml.models.create(name, metadata=metadata.as_dict(), labels=labels or {}) as model:
        onnx.save(onnx_model, model.path_of(MODEL_FILE))
        joblib.dump(embedder, model.path_of(EMBEDDER_FILE))
        index.save(Path(model.path))
        if keras_model is not None:
            keras_model.save(model.path_of(KERAS_FILE))
        if audit is not None:
            audit.save(Path(model.path_of(AUDIT_FILE)))
        if ood is not None:
            ood.save(Path(model.path_of(OOD_FILE)))
        if reference is not None:
            reference.save(Path(model.path_of(REFERENCE_FILE)))
    return str(model.tag)


def load_registered(tag: str, *, threads: int = 0, settings: Settings | None = None) -> RegisteredModel:
    """Load ``name:version`` (or ``name:latest``) from the store; KeyError-like NotFound if absent.

    ``settings`` choose the vector index backend and its options (default: the embedded faiss index).
    """
    model = bentoml.models.get(tag)
    metadata = VersionMetadata.of(model.info.metadata)
    classifier = OnnxClassifier(
        Path(model.path_of(MODEL_FILE)), metadata.class_names, metadata.image_size, threads=threads
    )
    embedder = joblib.load(model.path_of(EMBEDDER_FILE))
    index = load_index(Path(model.path), str(model.tag), settings or Settings())
    audit_path = Path(model.path_of(AUDIT_FILE))
    audit = LabelAudit.load(audit_path) if audit_path.is_file() else None
    ood_path, reference_path = Path(model.path_of(OOD_FILE)), Path(model.path_of(REFERENCE_FILE))
    ood = OodScorer.load(ood_path) if ood_path.is_file() else None
    reference = DriftReference.load(reference_path) if reference_path.is_file() else None
    return RegisteredModel(str(model.tag), classifier, embedder, index, metadata, audit, ood, reference)


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


def version_of(tag: str) -> str:
    """The version part of a model tag ('bouncer:abc' -> 'abc'), as BentoML parses tags."""
    return str(bentoml.Tag.from_taglike(tag).version)


def use_home_model_store() -> list[str]:
    """Make BENTOML_HOME's model store this process's store, holding the models of the bento it serves.

    Serving a built bento that carries its models (an image made by ``bentoml containerize``),
    BentoML reads models from the bento's own folder only, while a training registers into
    BENTOML_HOME's store: the train task could not find the serving version, and the service
    never saw a newly trained one. So the bento's models are copied into BENTOML_HOME's store
    (once; later starts find them there) and every lookup uses that store. Elsewhere the two are
    one store and nothing changes. Returns the tags copied now.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    current = BentoMLContainer.model_store.get()
    home = Path(BentoMLContainer.model_store_dir.get())
    if Path(current._path).resolve() == home.resolve():
        return []
    staging_root = Path(BentoMLContainer.tmp_bento_store_dir.get())  # under BENTOML_HOME: a rename moves it
    copied = []
    for model in current.list():
        target = home / model.tag.name / model.tag.version
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"model-{model.tag.version}-", dir=staging_root))
        shutil.copytree(model.path, staging, dirs_exist_ok=True)
        try:
            staging.rename(target)  # whole or not at all: a crash leaves no half-copied version
        except OSError:  # another process on the same store was first
            shutil.rmtree(staging, ignore_errors=True)
            continue
        latest = home / model.tag.name / "latest"
        if not latest.exists():
            latest.write_text(model.tag.version)
        copied.append(str(model.tag))
    BentoMLContainer.model_store.set(ModelStore(home))
    return copied
