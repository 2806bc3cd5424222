"""The in-worker predictor: concurrent requests share ONNX runs, answers are the model's, overload is a 503."""

from __future__ import annotations

import asyncio
import io
import shutil
from collections.abc import Iterator
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path

import bentoml
import numpy as np
import onnx
import pytest
from onnx.utils import Extractor
from PIL import Image

from bento_service.live_model import LiveModel
from bento_service.predictor import BadUpload, Overloaded, Predictor, answer_rows, infer
from tests.conftest import TrainedDemo
from training.curation.labels import Labels
from training.data.folders import load_records
from training.labels.store import open_store
from training.model.inference import INPUT_NAME, OUTPUT_EMBEDDING, OUTPUT_PROBABILITIES
from training.model.ood import fit_ood
from training.registry.serving import Registry
from training.registry.store import MODEL_FILE, OOD_FILE, load_registered


@pytest.fixture
def live(trained_demo: TrainedDemo) -> Iterator[LiveModel]:
    with open_store(trained_demo.settings) as store:
        model = LiveModel(Registry(Labels(trained_demo.settings, store)))
        yield model
        model.close()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_concurrent_requests_share_runs_and_get_the_models_answers(trained_demo: TrainedDemo, live: LiveModel) -> None:
    settings = trained_demo.settings
    with open_store(settings) as store:
        records = store.queries.images(split="test")[:40]
    model = live.get()
    pixels = load_records(settings, records, model.image_size)
    expected = model.classifier.probabilities(pixels)
    predictor = Predictor(live, settings)

    async def all_at_once() -> list[list[dict[str, object]]]:
        return await asyncio.gather(*(predictor.predict(p[None]) for p in pixels))

    answers = asyncio.run(all_at_once())
    assert predictor.runs < len(records)  # batched
    for answer, row in zip(answers, expected, strict=True):
        assert answer[0]["label"] == model.class_names[int(row.argmax())]
        assert answer[0]["model_version"] == model.version
        np.testing.assert_allclose(list(answer[0]["probabilities"].values()), row, atol=1e-5)

    uploads = [("images", png(p)) for p in pixels[:3]]
    batch = asyncio.run(predictor.predict_uploads(uploads))
    assert [a["label"] for a in batch] == [model.class_names[int(r.argmax())] for r in expected[:3]]


def test_bad_uploads_name_the_field(trained_demo: TrainedDemo, live: LiveModel) -> None:
    predictor = Predictor(live, trained_demo.settings.model_copy(update={"max_upload_bytes": 1000}))
    with pytest.raises(BadUpload, match="image: ") as not_image:
        asyncio.run(predictor.predict_uploads([("image", b"not an image at all")]))
    assert not_image.value.error_code == HTTPStatus.BAD_REQUEST
    with pytest.raises(BadUpload, match="images: upload is 5000 bytes, over the 1000 limit") as too_big:
        asyncio.run(predictor.predict_uploads([("images", b"x" * 5000)]))
    assert too_big.value.error_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def test_requests_that_cannot_be_served_in_time_are_refused_not_queued(
    trained_demo: TrainedDemo, live: LiveModel
) -> None:
    predictor = Predictor(live, trained_demo.settings)
    predictor.max_wait_s = 0.0  # any wait is over budget
    pixels = np.zeros((30, live.get().image_size, live.get().image_size, 3), np.uint8)

    async def flood() -> list[object]:
        return await asyncio.gather(*(predictor.predict(p[None]) for p in pixels), return_exceptions=True)

    outcomes = asyncio.run(flood())
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert refused and "over capacity" in str(refused[0])
    assert all(isinstance(o, (list, Overloaded)) for o in outcomes)


def registered_before_issue_25(trained_demo: TrainedDemo) -> str:
    """A copy of the demo's version as Bouncer registered it before issue 25: an ONNX graph with only
    probabilities and embedding, the old single-method ood.npz layout, no calibration check in its metadata."""
    settings = trained_demo.settings
    source = bentoml.models.get(trained_demo.result.tag)
    model = load_registered(str(source.tag))
    with open_store(settings) as store:
        train, test = store.queries.images(split="train"), store.queries.images(split="test")
    embed = lambda records: model.classifier.predict(load_records(settings, records, model.image_size)).embeddings  # noqa: E731
    labels = np.array([model.class_names.index(r.label) for r in train])
    old = fit_ood("mahalanobis", embed(train), labels, embed(test))
    metadata = {k: v for k, v in source.info.metadata.items() if not k.startswith("ood_")}
    metadata |= {"ood_method": "mahalanobis", "ood_threshold": old.threshold, "ood_threshold_raw": old.threshold_raw}
    with bentoml.models.create(source.tag.name, metadata=metadata, labels=dict(source.info.labels)) as copy:
        for path in Path(source.path).iterdir():
            if path.name not in (MODEL_FILE, OOD_FILE, "model.yaml"):
                (shutil.copytree if path.is_dir() else shutil.copy2)(path, Path(copy.path) / path.name)
        graph = Extractor(onnx.load(source.path_of(MODEL_FILE))).extract_model(
            [INPUT_NAME], [OUTPUT_PROBABILITIES, OUTPUT_EMBEDDING]
        )
        onnx.save(graph, copy.path_of(MODEL_FILE))
        component = old.components[0]
        np.savez(
            copy.path_of(OOD_FILE),
            method=np.array("mahalanobis"),
            k=np.array(1),
            reference=component.arrays["reference"],
            whitening=component.arrays["whitening"],
            calibration=old.calibration,
            quantile=np.array(0.99),
            normalise=np.array(True),
        )
    return str(copy.tag)


def test_a_version_registered_before_issue_25_keeps_serving_with_its_own_score(trained_demo: TrainedDemo) -> None:
    """No early_features output, the old ood.npz: it answers as it did (a bool `ood`, no warning)."""
    tag = registered_before_issue_25(trained_demo)
    settings = trained_demo.settings.model_copy(update={"model_tag": tag})
    with open_store(settings) as store:
        live = LiveModel(Registry(Labels(settings, store)))
        try:
            model = live.get()
            assert model.tag == tag and not model.classifier.has_early and model.ood is not None
            assert model.ood.method == "mahalanobis" and model.ood.calibrated is None
            records = store.queries.images(split="test")[:8]
            pixels = load_records(settings, records, model.image_size)
            noise = np.random.default_rng(1).integers(0, 256, (4, model.image_size, model.image_size, 3))
            answers = asyncio.run(Predictor(live, settings).predict(np.concatenate([pixels, noise.astype(np.uint8)])))
        finally:
            live.close()
    expected_scores, expected_flags = model.ood.score(model.classifier.predict(pixels).embeddings)
    for answer, score, flag in zip(answers, expected_scores, expected_flags, strict=False):
        assert answer["model_version"] == model.version and answer["ood_warning"] is None
        assert answer["ood_score"] == pytest.approx(score) and answer["ood"] is bool(flag)
    assert all(isinstance(a["ood"], bool) for a in answers)


def test_an_uncalibrated_version_answers_ood_null_and_says_why(trained_demo: TrainedDemo, live: LiveModel) -> None:
    """Fewer held-out images per class than the setting: the rank is still given, a confident false is not."""
    settings = trained_demo.settings
    model = live.get()
    with open_store(settings) as store:
        train, test = store.queries.images(split="train"), store.queries.images(split="test")
    outputs = [model.classifier.predict(load_records(settings, r, model.image_size)) for r in (train, test)]
    to_index = model.class_names.index
    uncalibrated = fit_ood(
        "fused",
        outputs[0].embeddings,
        np.array([to_index(r.label) for r in train]),
        outputs[1].embeddings,
        held_out_labels=np.array([to_index(r.label) for r in test]),
        train_early=outputs[0].early,
        held_out_early=outputs[1].early,
        min_held_out_per_class=1000,
        class_names=model.class_names,
    )
    noise = np.random.default_rng(2).integers(0, 256, (6, model.image_size, model.image_size, 3)).astype(np.uint8)
    found = infer(replace(model, ood=uncalibrated), noise, want_embeddings=False)
    answers = answer_rows(found.probabilities, model.class_names, model.version, found.ood, found.ood_warning)
    for answer in answers:
        assert answer["ood"] is None and 0.0 < answer["ood_score"] < 1.0
        assert answer["ood_warning"] == uncalibrated.warning and "need 1000 per class" in answer["ood_warning"]
    calibrated = infer(model, noise, want_embeddings=False)  # the demo's own version: 20 per class, enough
    assert calibrated.ood is not None and calibrated.ood[1] == [True] * 6 and calibrated.ood_warning is None
