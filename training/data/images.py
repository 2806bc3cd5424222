"""Decode any image Pillow reads into the one array layout the model sees.

Training, evaluation and serving all call :func:`to_model_input`, so an uploaded
JPEG and the PNG it was saved from reach the network identically.

Memory is bounded as well as pixels: a 40 Mpx RGBA PNG decodes to 160 MB, and the
old path (copy, then full-size colour conversions) peaked at 740 MB for one upload.
Now a JPEG is decoded at a reduced scale (``draft``), a large image is shrunk by an
integer factor before any conversion, and at most :data:`LARGE_DECODE_SLOTS` large
decodes run at once per process.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.errors import Invalid

# A decode of more pixels than this (after any JPEG draft) holds one of LARGE_DECODE_SLOTS:
# 8 concurrent 40 Mpx uploads peaked at 5.4 GB before; with 2 slots at most ~2 x 160 MB decode at once.
LARGE_DECODE_PIXELS = 8_000_000
LARGE_DECODE_SLOTS = 2
_large_decodes = threading.BoundedSemaphore(LARGE_DECODE_SLOTS)
# Modes Image.reduce() handles; others (palette, 1-bit) are converted at full size.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"})


class ImageError(Invalid):
    """The bytes are not a usable image; the message says why."""


def open_image(source: Path | bytes, *, max_pixels: int, shrink_to: int | None = None) -> Image.Image:
    """Fully decode an image, refusing non-images, truncated files and decompression bombs.

    ``shrink_to``: the caller only needs about this size (see :func:`shrink`), so a
    JPEG may be decoded at 1/2..1/8 scale and a large image is reduced before it is
    returned, inside the large-decode slot that bounds memory.
    """
    data = source if isinstance(source, bytes) else source.read_bytes()
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
            if shrink_to is not None and image.format == "JPEG":
                image.draft("RGB", (2 * shrink_to, 2 * shrink_to))
            with _decode_slot(image.size[0] * image.size[1]):
                image.load()  # decode now: truncated data fails here, not later
                return image if shrink_to is None else shrink(image, shrink_to)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            _short(exc) if not isinstance(exc, UnidentifiedImageError) else "not an image Pillow can read"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt streams
        raise ImageError(f"corrupt or truncated image: {_short(exc)}") from exc


@contextmanager
def _decode_slot(pixels: int) -> Iterator[None]:
    if pixels <= LARGE_DECODE_PIXELS:
        yield
        return
    with _large_decodes:
        yield


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten alpha onto black and drop palettes/grayscale, so every image is RGB."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def shrink(image: Image.Image, size: int) -> Image.Image:
    """Reduce by an integer factor while the shorter side stays >= 2 x ``size``: cheap, and it
    keeps every later conversion small. The final antialiased resize does the rest."""
    factor = min(image.size) // (2 * size)
    if factor >= 2 and image.mode in _REDUCIBLE_MODES:
        return image.reduce(factor)
    return image


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 array of shape (size, size, 3); the model rescales to [0, 1] itself."""
    rgb = to_rgb(shrink(image, size))  # a no-op for an image open_image already shrank
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def load_model_input(source: Path | bytes, size: int, *, max_pixels: int) -> np.ndarray:
    return to_model_input(open_image(source, max_pixels=max_pixels, shrink_to=size), size)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
