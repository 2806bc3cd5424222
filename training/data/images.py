"""Decode the photo formats a user means (:data:`DECODED_FORMATS`) into the one array layout the model sees.

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
from PIL import (  # the decoded formats' plugins, registered with Pillow before any open names them
    BmpImagePlugin,  # noqa: F401
    GifImagePlugin,  # noqa: F401
    Image,
    JpegImagePlugin,  # noqa: F401
    MpoImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    UnidentifiedImageError,
    WebPImagePlugin,  # noqa: F401
)

from training.errors import Invalid

# A decode of more pixels than this (after any JPEG draft) holds one of LARGE_DECODE_SLOTS:
# 8 concurrent 40 Mpx uploads peaked at 5.4 GB before; with 2 slots at most ~2 x 160 MB decode at once.
LARGE_DECODE_PIXELS = 8_000_000
LARGE_DECODE_SLOTS = 2
_large_decodes = threading.BoundedSemaphore(LARGE_DECODE_SLOTS)
# Modes Image.reduce() handles; others (palette, 1-bit) are converted at full size.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I", "F"})


# The formats decoded, by Pillow's own decoders in this process. Nothing else is ever opened:
# Pillow also reads EPS and PDF by running Ghostscript (no time limit, on whatever thread
# asked), and ICO, ICNS and the like hold images of other sizes than their headers say.
# JPEG includes a camera's MPO (a JPEG with more frames appended). Only frame 0 of a GIF, TIFF
# or MPO is decoded, and its size is the one checked.
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# Signatures of formats a user may send that are refused, to say what the file is.
_REFUSED_SIGNATURES = (
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"icns", "ICNS"),
    (b"<svg", "SVG"),
    (b"<?xml", "XML/SVG"),
)
FORMATS_SENTENCE = "JPEG, PNG, WebP, GIF, BMP or TIFF"


class ImageError(Invalid):
    """The bytes are not a usable image; the message says why."""


def identify(data: bytes) -> str | None:
    """What a refused file is, from its first bytes ('PDF', 'ICO'...), or None when it looks like nothing known."""
    head = data[:16].lstrip()
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "HEIC/AVIF"
    return next((name for signature, name in _REFUSED_SIGNATURES if head.startswith(signature)), None)


def header_pixels(data: bytes) -> int:
    """Width x height of frame 0 from the header of an image of a decoded format (0 if it is none)."""
    try:
        with Image.open(io.BytesIO(data), formats=DECODED_FORMATS) as image:
            width, height = image.size
    except Exception:  # noqa: BLE001 - any unreadable header; the decode names the problem
        return 0
    return width * height


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
            image = Image.open(io.BytesIO(data), formats=DECODED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
            if image.format in ("JPEG", "MPO") and (problem := jpeg_too_short(data, width, height)):
                raise ImageError(problem)
            if shrink_to is not None and image.format == "JPEG":
                image.draft("RGB", (2 * shrink_to, 2 * shrink_to))
            with _decode_slot(image.size[0] * image.size[1]):
                image.load()  # decode now: truncated data fails here, not later
                return image if shrink_to is None else shrink(image, shrink_to)
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        if not isinstance(exc, UnidentifiedImageError):
            raise ImageError(_short(exc)) from exc
        what = identify(data)
        problem = f"{what} is not a format decoded here" if what else "not an image of a decoded format"
        raise ImageError(f"{problem}: send {FORMATS_SENTENCE}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated / corrupt streams
        raise ImageError(f"corrupt or truncated image: {_short(exc)}") from exc


# Huffman-coded DCT frames (baseline, extended, progressive): every 8x8 luma block costs at least
# one bit (its DC code) in the first scan. libjpeg fills a scan that ends early with grey and
# only warns, so a file cut short and closed with an end marker would decode as a whole image.
_HUFFMAN_DCT_FRAMES = frozenset({0xC0, 0xC1, 0xC2})


def jpeg_too_short(data: bytes, width: int, height: int) -> str | None:
    """Why a JPEG cannot hold the ``width`` x ``height`` image its header declares, or None."""
    frame, scan_start = _jpeg_first_scan(data)
    if frame not in _HUFFMAN_DCT_FRAMES:
        return None  # arithmetic-coded or lossless: no such floor
    blocks = -(-width // 8) * -(-height // 8)
    if (len(data) - scan_start) * 8 < blocks:
        return (
            f"truncated image: {len(data)} bytes cannot hold the {width}x{height} JPEG its header declares "
            f"(at least {blocks // 8 + scan_start})"
        )
    return None


def _jpeg_first_scan(data: bytes) -> tuple[int | None, int]:
    """(the frame's SOF marker, where the first scan's data starts), walking the marker segments."""
    frame, at = None, 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame = marker
        if marker == 0xDA:
            return frame, at + 2 + length
        at += 2 + length
    return frame, len(data)


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
