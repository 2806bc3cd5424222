"""The serving façade: which stored version serves a dataset, its versions, promotions, loading one.

:class:`Registry` is the door the service, the page, the CLI, the notebooks and the
benchmarks use; the functions below are its parts. Promotion has one owner here
(:meth:`Registry.promote`): the label database keeps its record, and a server's live
model only follows it.

The model store is shared by every dataset trained on this machine: a version's
metadata names its dataset (``dataset_id``), and :func:`resolve_serving_tag` picks
this dataset's version for serving, evaluating and finding suspects alike.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml

from training.curation.curator import CurationCache, Curator
from training.curation.labels import Labels
from training.errors import Invalid, NotFound, quoted
from training.labels.store import LabelStore
from training.model.evaluation import accuracy_interval, join_warnings, small_test_warning, weak_model_warning
from training.registry import promotions
from training.registry.bento import BuildOutcome, build_bento
from training.registry.metadata import VersionMetadata
from training.registry.store import RegisteredModel, list_versions, load_registered, use_home_model_store, version_of
from training.settings import Settings

__all__ = [
    "BuildOutcome",
    "ModelResolutionError",
    "RegisteredModel",
    "Registry",
    "UnknownVersion",
    "VersionInfo",
    "open_curator",
    "version_of",
]

log = logging.getLogger(__name__)


class ModelResolutionError(Invalid):
    """No stored version can serve this dataset; the message says what to do (a 4xx / CLI error, not a crash)."""


def dataset_matches(metadata: VersionMetadata, dataset_id: str, classes: list[str]) -> bool:
    """Was the version with this metadata trained on this dataset?"""
    if metadata.dataset_id is None:
        # Registered before datasets had an identity: it is this dataset's when it predicts
        # exactly this dataset's classes (the best evidence such a version carries).
        return metadata.class_names == classes
    return metadata.dataset_id == dataset_id


def versions_for_dataset(name: str, store: LabelStore) -> list[bentoml.Model]:
    """The stored versions of ``name`` trained on the dataset ``store`` curates, newest first."""
    classes = store.queries.classes()
    return [m for m in list_versions(name) if dataset_matches(metadata_of(m), store.dataset_id, classes)]


def check_classes(
    tag: str, metadata: VersionMetadata, store: LabelStore, *, chosen_as: str = "", then: str = ""
) -> None:
    """Refuse a version whose classes are not this dataset's: its answers would name the wrong classes.

    ``chosen_as`` says how the version was picked (" (the promoted version)"), ``then`` what to
    do after training; both go into the message.
    """
    model_classes, classes = metadata.class_names, store.queries.classes()
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
    check_classes(str(model.tag), metadata_of(model), store, chosen_as=chosen_as)
    return str(model.tag)


def resolve_serving_tag(settings: Settings, store: LabelStore) -> str:
    """The version that serves this dataset; ``evaluate`` and ``suspects`` use it too, so all of them agree.

    In order: the promoted version (a row in this dataset's label DB) if this model
    store holds it; else BOUNCER_MODEL_TAG (or the model a served bento was built with)
    if set; else the newest version trained on this dataset. A ModelResolutionError when
    there is none, or when the chosen version's classes are not the dataset's.
    """
    promoted = promotions.serving(store.database, settings.model_name)
    if promoted is not None:
        try:
            model = bentoml.models.get(promoted.tag)
        except bentoml.exceptions.NotFound:
            log.warning("promoted version %s is not in this model store; not serving it", promoted.tag)
        else:
            check_classes(
                str(model.tag),
                metadata_of(model),
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
    check_classes(str(matching[0].tag), metadata_of(matching[0]), store, chosen_as=" (the newest of this dataset)")
    return str(matching[0].tag)


@contextmanager
def open_curator(settings: Settings, *, model_tag: str | None = None) -> Iterator[Curator]:
    """The curation façade over this dataset's labels and the version serving it (or ``model_tag``).

    The CLI, notebooks and benchmarks use this; the service builds a Curator per request
    with the version its live model serves, resolved the same way.
    """
    with Labels.open(settings) as labels:
        yield Registry(labels).curator(model_tag)


class UnknownVersion(NotFound):
    """No stored version by that name (a 404)."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class VersionInfo:
    """One stored version of this dataset, as ``models`` / ``bouncer models`` show it."""

    version: str
    tag: str
    created_at: str
    metrics: dict[str, float]
    data_version: str | None
    serving: bool
    beats_baseline: bool | None  # test accuracy above the majority-label baseline; None without test figures
    warning: str | None
    recipe: dict[str, Any] | None
    test_accuracy_interval: list[float] | None = None  # 95%, from test_accuracy and n_test
    ood_calibrated: bool | None = None  # False: `ood` is answered null; None: not recorded (older versions)
    ood_warning: str | None = None


def describe_versions(settings: Settings, store: LabelStore, serving_tag: str) -> list[VersionInfo]:
    """This dataset's versions, newest first, with their metrics and whether each beat the majority label.

    The serving version is always listed, even when it was trained on another dataset
    (pinned with BOUNCER_MODEL_TAG, e.g. after the labels moved to a new PostgreSQL database).
    """
    models = versions_for_dataset(settings.model_name, store)
    if serving_tag not in {str(m.tag) for m in models}:
        with contextlib.suppress(bentoml.exceptions.NotFound):
            models = [*models, bentoml.models.get(serving_tag)]
            models.sort(key=lambda m: m.info.creation_time, reverse=True)
    return [_describe(model, serving_tag) for model in models]


def _describe(model: bentoml.Model, serving_tag: str) -> VersionInfo:
    metadata = metadata_of(model)
    metrics = {k: v if isinstance(v, int) else float(v) for k, v in metadata.metrics.items()}
    baseline, accuracy = metrics.get("baseline_accuracy"), metrics.get("test_accuracy")
    known = baseline is not None and accuracy is not None
    n_test = metadata.n_test()
    interval = accuracy_interval(round(accuracy * n_test), n_test) if accuracy is not None and n_test else None
    return VersionInfo(
        version=model.tag.version,
        tag=str(model.tag),
        created_at=model.info.creation_time.isoformat(),
        metrics=metrics,
        data_version=metadata.data_version,
        serving=str(model.tag) == serving_tag,
        beats_baseline=accuracy > baseline if known else None,  # type: ignore[operator]
        warning=join_warnings(
            weak_model_warning(accuracy, baseline) if known else None,  # type: ignore[arg-type]
            small_test_warning(accuracy, n_test) if accuracy is not None else None,
        ),
        recipe=metadata.recipe,
        test_accuracy_interval=list(interval) if interval else None,
        ood_calibrated=metadata.ood_calibrated,
        ood_warning=metadata.ood_warning,
    )


def metadata_of(model: bentoml.Model) -> VersionMetadata:
    return VersionMetadata.of(model.info.metadata)


def promotion_signal(settings: Settings) -> Path:
    """A file every serving worker on this machine checks (one ``stat``) per request; touched after each promotion.

    Workers also poll the promotion record every BOUNCER_MODEL_POLL_SECONDS, each on its
    own clock: without the signal, two workers would answer with different versions for
    up to that long, and a client would see the new version, then the old one again.
    """
    return settings.runtime_dir / "serving.changed"


def record_promotion(settings: Settings, store: LabelStore, tag: str, *, actor: str, reason: str) -> None:
    """The promotion row, then the signal: workers here follow from their next request, others on their next poll."""
    promotions.promote(store.database, settings.model_name, tag, actor=actor, reason=reason)
    signal = promotion_signal(settings)
    signal.parent.mkdir(parents=True, exist_ok=True)
    signal.write_text(tag)


def promote_version(settings: Settings, store: LabelStore, version: str, *, actor: str, reason: str) -> str:
    """Record that ``version`` serves this dataset from now on (every worker follows); its tag.

    UnknownVersion if the store lacks it; ModelResolutionError if it predicts other classes.
    """
    tag = f"{settings.model_name}:{version}"
    if version not in {m.tag.version for m in list_versions(settings.model_name)}:
        raise UnknownVersion(f"unknown model version {quoted(version)}; see `models` for the registered ones")
    fitting_tag(tag, store)  # another dataset's model: its answers would name other classes
    record_promotion(settings, store, tag, actor=actor, reason=reason or "promote")
    return tag


@dataclass(frozen=True)
class Registry:
    """This dataset's model versions: the serving façade over the model store and the promotion record."""

    labels: Labels

    @property
    def settings(self) -> Settings:
        return self.labels.settings

    def serving_tag(self) -> str:
        """The version that serves (promoted, else pinned, else the newest of this dataset): see resolve_serving_tag."""
        return resolve_serving_tag(self.settings, self.labels.store)

    def promoted_tag(self) -> str | None:
        """The tag of the last promotion recorded for this dataset, if any."""
        promoted = promotions.serving(self.labels.store.database, self.settings.model_name)
        return None if promoted is None else promoted.tag

    def fitting_tag(self, tag: str, *, chosen_as: str = "") -> str:
        """``tag`` in full, refused (ModelResolutionError) unless its classes are this dataset's."""
        return fitting_tag(tag, self.labels.store, chosen_as=chosen_as)

    def versions(self, serving_tag: str | None = None) -> list[VersionInfo]:
        """This dataset's versions, newest first, ``serving_tag`` (default: the one that serves) marked."""
        return describe_versions(self.settings, self.labels.store, serving_tag or self.serving_tag())

    def version_tags(self) -> list[str]:
        """The tags of this dataset's versions, newest first."""
        return [str(m.tag) for m in versions_for_dataset(self.settings.model_name, self.labels.store)]

    def promote(self, version: str, *, actor: str, reason: str) -> str:
        """Serve ``version`` from now on (every worker and replica follows); its tag. See promote_version."""
        return promote_version(self.settings, self.labels.store, version, actor=actor, reason=reason)

    def keep_serving(self, tag: str, *, actor: str, reason: str) -> None:
        """Put on record that ``tag``, which serves now by default (the newest), goes on serving."""
        record_promotion(self.settings, self.labels.store, tag, actor=actor, reason=reason)

    def promotion_signal(self) -> Path:
        return promotion_signal(self.settings)

    def load(self, tag: str, *, threads: int = 0) -> RegisteredModel:
        """A stored version ready to answer (ONNX session, embedder, index, OOD score)."""
        return load_registered(tag, threads=threads, settings=self.settings)

    def build_bento(self, tag: str) -> BuildOutcome:
        """``bentoml build`` of the service with ``tag`` packed (what ``bentoml containerize`` ships)."""
        return build_bento(tag)

    @staticmethod
    def use_home_model_store() -> list[str]:
        """In a server run from a built bento (an image): its models and those trained since, all in BENTOML_HOME's
        store, where trainings register; call it first in each worker. See store.use_home_model_store."""
        return use_home_model_store()

    def curator(self, model_tag: str | None = None, *, cache: CurationCache | None = None) -> Curator:
        """The curation façade over ``model_tag`` (default: the version that serves), loaded now."""
        tag = self.fitting_tag(model_tag) if model_tag else self.serving_tag()
        return Curator(self.labels, self.load(tag), cache or CurationCache())
