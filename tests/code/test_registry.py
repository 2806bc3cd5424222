"""Which model version serves a dataset: a real label store and real (metadata-only) versions in the BentoML store.

The versions here are saved under a model name of their own, so the session's
``bouncer`` versions (and ``bouncer:latest``) stay what the other tests trained.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import bentoml
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from bento_service.live_model import LiveModel
from training.curation.labels import Labels
from training.labels.migrate import alembic_config
from training.labels.store import LabelStore, open_store
from training.labels.sync import import_folder
from training.registry.promotions import promote
from training.registry.serving import ModelResolutionError, Registry, resolve_serving_tag, versions_for_dataset
from training.settings import Settings

SHAPE_CLASSES = ["cross", "ring", "square"]


@pytest.fixture
def named(settings: Settings) -> Settings:
    return settings.model_copy(update={"model_name": f"resolve-{uuid.uuid4().hex[:8]}"})


@pytest.fixture
def store(named: Settings, shapes_dataset: Path) -> Iterator[LabelStore]:
    with open_store(named) as store:
        import_folder(named, store)
        yield store


def save_version(name: str, **metadata: object) -> str:
    """A version holding only metadata: all that choosing one reads."""
    with bentoml.models.create(name, metadata={"image_size": 16, **metadata}) as model:
        pass
    return str(model.tag)


def test_a_label_database_has_one_identity_that_survives_reopening(tmp_path: Path) -> None:
    with LabelStore(f"sqlite:///{tmp_path / 'a.db'}") as first:
        dataset_id = first.dataset_id
    assert uuid.UUID(dataset_id)
    with LabelStore(f"sqlite:///{tmp_path / 'a.db'}") as again:
        assert again.dataset_id == dataset_id
    with LabelStore(f"sqlite:///{tmp_path / 'b.db'}") as other:
        assert other.dataset_id != dataset_id


def test_a_database_from_before_identities_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")  # the schema before the dataset table existed,
        connection.execute(text("DROP TABLE alembic_version"))  # from before migrations: 0001 is detected
    engine.dispose()
    with LabelStore(f"sqlite:///{path}") as store:
        assert uuid.UUID(store.dataset_id)
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*) FROM dataset").fetchone() == (1,)


def test_the_newest_version_of_this_dataset_serves_not_the_newest_of_the_store(
    named: Settings, store: LabelStore
) -> None:
    mine = save_version(named.model_name, dataset_id=store.dataset_id, class_names=SHAPE_CLASSES)
    save_version(named.model_name, dataset_id=str(uuid.uuid4()), class_names=SHAPE_CLASSES)  # newer, another dataset
    assert resolve_serving_tag(named, store) == mine


def test_a_version_from_before_identities_is_this_datasets_when_its_classes_are(
    named: Settings, store: LabelStore
) -> None:
    legacy = save_version(named.model_name, class_names=SHAPE_CLASSES)
    save_version(named.model_name, class_names=["bear", "cat"])  # newer, no identity, other classes
    assert [str(m.tag) for m in versions_for_dataset(named.model_name, store)] == [legacy]
    assert resolve_serving_tag(named, store) == legacy


def test_no_version_of_this_dataset_is_an_error_saying_to_train(named: Settings, store: LabelStore) -> None:
    save_version(named.model_name, dataset_id=str(uuid.uuid4()), class_names=["bear", "cat"])
    with pytest.raises(ModelResolutionError, match=r"belong to other datasets\): train one with `bouncer train`"):
        resolve_serving_tag(named, store)


def test_the_promoted_version_wins_when_this_store_holds_it(named: Settings, store: LabelStore) -> None:
    promoted = save_version(named.model_name, dataset_id=store.dataset_id, class_names=SHAPE_CLASSES)
    newest = save_version(named.model_name, dataset_id=store.dataset_id, class_names=SHAPE_CLASSES)
    promote(store.database, named.model_name, promoted)
    assert resolve_serving_tag(named, store) == promoted
    promote(store.database, named.model_name, f"{named.model_name}:trainedelsewhere")  # another replica's version
    assert resolve_serving_tag(named, store) == newest


def test_a_pinned_version_serves_but_not_with_another_datasets_classes(named: Settings, store: LabelStore) -> None:
    pinned = save_version(named.model_name, dataset_id=str(uuid.uuid4()), class_names=SHAPE_CLASSES)
    save_version(named.model_name, dataset_id=store.dataset_id, class_names=SHAPE_CLASSES)
    assert resolve_serving_tag(named.model_copy(update={"model_tag": pinned}), store) == pinned
    animals = save_version(named.model_name, class_names=["bear", "cat"])
    with pytest.raises(ModelResolutionError) as refused:
        resolve_serving_tag(named.model_copy(update={"model_tag": animals}), store)
    assert str(refused.value) == (
        f"model {animals} (BOUNCER_MODEL_TAG) predicts the classes ['bear', 'cat'], but this dataset's classes "
        "are ['cross', 'ring', 'square']: train a model on this dataset (`bouncer train`)"
    )


def test_a_promoted_version_with_other_classes_is_refused(named: Settings, store: LabelStore) -> None:
    tag = save_version(named.model_name, dataset_id=store.dataset_id, class_names=["cross", "ring"])
    promote(store.database, named.model_name, tag)
    with pytest.raises(ModelResolutionError, match=r"\(the promoted version\) predicts .* then promote it"):
        resolve_serving_tag(named, store)


def test_the_service_model_does_not_start_on_another_datasets_model(named: Settings, store: LabelStore) -> None:
    save_version(named.model_name, dataset_id=str(uuid.uuid4()), class_names=SHAPE_CLASSES)
    with pytest.raises(ModelResolutionError, match="no '.*' model was trained on the dataset in"):
        LiveModel(Registry(Labels(named, store)))


def test_a_dataset_nothing_was_imported_into_says_to_import(named: Settings, tmp_path: Path) -> None:
    pinned = save_version(named.model_name, class_names=SHAPE_CLASSES)
    fresh = LabelStore(f"sqlite:///{tmp_path / 'fresh.db'}")
    with fresh, pytest.raises(ModelResolutionError, match=r"has no classes yet: .*\(`bouncer import`\)"):
        resolve_serving_tag(named.model_copy(update={"model_tag": pinned}), fresh)
