"""Decode any image Pillow reads into the one array layout the model sees.

Training, evaluation and serving all call :func:`to_model_input`, so an uploaded
JPEG and the PNG it was saved from reach the network identically.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """The bytes are not a usable image; the message says why."""


def open_image(source: Path | bytes, *, max_pixels: int) -> Image.Image:
    """Fully decode an image, refusing non-images, truncated files and decompression bombs."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    if isinstance(source, bytes) and not source:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                    )
                image.load()  # decode now: truncated data fails here, not later
                return image.copy()
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            _short(exc) if not isinstance(exc, UnidentifiedImageError) else "not an image Pillow can read"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt streams
        raise ImageError(f"corrupt or truncated image: {_short(exc)}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten alpha onto black and drop palettes/grayscale, so every image is RGB."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """RGB uint8 array of shape (size, size, 3); the model rescales to [0, 1] itself."""
    rgb = to_rgb(image)
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def load_model_input(source: Path | bytes, size: int, *, max_pixels: int) -> np.ndarray:
    return to_model_input(open_image(source, max_pixels=max_pixels), size)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
