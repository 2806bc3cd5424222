"""A version's metadata, typed: what training writes is what serving reads, and older or newer versions still read."""

from __future__ import annotations

import pytest

from training.registry.metadata import VersionMetadata


def test_what_training_writes_reads_back_the_same() -> None:
    written = VersionMetadata(
        class_names=["bunny", "dog"],
        image_size=28,
        dataset_id="d1",
        data_version="abc",
        recipe={"backbone": "cnn"},
        metrics={"test_accuracy": 0.9, "n_test": 20},
        ood={"ood_method": "fused", "ood_calibrated": False, "ood_warning": "too few"},
    )
    stored = written.as_dict()
    assert None not in stored.values()  # BentoML's metadata holds no None
    assert stored["ood_method"] == "fused" and "ood" not in stored  # flat, as versions always stored it
    read = VersionMetadata.of(stored)
    assert read == written
    assert read.ood_calibrated is False and read.ood_warning == "too few" and read.n_test() == 20


def test_a_version_from_an_older_bouncer_reads_with_nones() -> None:
    old = VersionMetadata.of({"class_names": ["a", "b"], "image_size": 32, "metrics": {"test_accuracy": 0.5}})
    assert old.dataset_id is None and old.recipe is None and old.ood == {}
    assert old.ood_calibrated is None and old.n_test() == 0


def test_keys_a_newer_bouncer_wrote_are_kept() -> None:
    newer = {"class_names": ["a"], "image_size": 8, "engine": "ray"}
    assert VersionMetadata.of(newer).extra == {"engine": "ray"}
    assert VersionMetadata.of(newer).as_dict()["engine"] == "ray"


def test_a_version_without_classes_cannot_be_registered(tmp_path: object) -> None:
    from training.registry.store import register_model

    with pytest.raises(ValueError, match="class names and image size"):
        register_model("x", None, None, None, metadata=VersionMetadata(class_names=[], image_size=0))  # type: ignore[arg-type]
