"""Image decoding: every format the dataset may hold reaches the model as RGB uint8."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from training.data.images import ImageError, load_model_input, open_image, to_rgb


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "I;16", "1", "CMYK"])
def test_any_mode_becomes_rgb_of_requested_size(mode: str) -> None:
    image = Image.new("RGB", (50, 20), (200, 100, 50)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode == "CMYK" else "PNG")
    array = load_model_input(buffer.getvalue(), 16, max_pixels=10_000)
    assert array.shape == (16, 16, 3)
    assert array.dtype == np.uint8


def test_transparent_pixels_become_black_not_their_hidden_colour() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere ...
    rgba[:, :4, 3] = 255  # ... but only the left half is opaque
    rgb = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))
    assert (rgb[:, :4] == [255, 0, 0]).all()
    assert (rgb[:, 4:] == 0).all()


def test_grayscale_and_rgb_versions_of_a_picture_give_the_same_input() -> None:
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    from_gray = load_model_input(_png(Image.fromarray(gray)), 8, max_pixels=100)
    from_rgb = load_model_input(_png(Image.fromarray(np.dstack([gray] * 3))), 8, max_pixels=100)
    np.testing.assert_array_equal(from_gray, from_rgb)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"hello, I am text pretending to be a jpeg\n", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image"),
    ],
)
def test_non_images_are_refused_with_a_reason(payload: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        open_image(payload, max_pixels=1_000_000)


def test_truncated_image_is_refused() -> None:
    data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageError, match="truncated|corrupt"):
        open_image(data[: len(data) // 2], max_pixels=1_000_000)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = _png(Image.new("L", (2000, 2000)))
    with pytest.raises(ImageError, match="over the limit"):
        open_image(data, max_pixels=1_000_000)


def _rgba16_png(width: int, height: int) -> bytes:
    """A 16-bit RGBA PNG of width x height, compressed row by row (a few hundred KB on the wire)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + (b"\xc3\x50\x00\x00\x00\x00\xff\xff" * width)  # filter byte + RGBA16 pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_huge_image_under_the_pixel_cap_decodes_in_bounded_memory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A 40 Mpx RGBA PNG is 160 MB decoded; decoding it used to peak at ~790 MB (copies at full size)."""
    import subprocess
    import sys

    path = tmp_path / "huge.png"
    path.write_bytes(_rgba16_png(7000, 5670))
    # VmHWM, the child's own peak: ru_maxrss would also count the (TensorFlow-sized) parent it forked from
    probe = (
        "from training.data.images import load_model_input; "
        f"x = load_model_input(open({str(path)!r}, 'rb').read(), 32, max_pixels=40_000_000); "
        "assert x.shape == (32, 32, 3) and x[0, 0, 0] > 150; "
        "peak = next(line for line in open('/proc/self/status') if line.startswith('VmHWM')); "
        "print(int(peak.split()[1]) // 1024)"
    )
    peak_mb = int(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout)
    assert peak_mb < 450, f"peak RSS {peak_mb} MB decoding one 40 Mpx image"


def _saved(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# An EPS that loops for ever in Ghostscript (the bytes an attacker sent), and one with a PostScript error.
LOOPING_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n{ } loop\n"
BROKEN_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnosuchoperator\n"


def _ico_holding(png: bytes, said: int = 0) -> bytes:
    """An ICO whose directory says ``said`` (0 means 256) x ``said`` pixels and which holds ``png``."""
    import struct

    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", said, said, 0, 0, 1, 32, len(png), 22) + png


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (LOOPING_EPS, "PostScript/EPS"),
        (BROKEN_EPS, "PostScript/EPS"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "PDF"),
        (_ico_holding(_saved(Image.new("RGB", (3000, 3000)), "PNG")), "ICO"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>', "SVG"),
    ],
)
def test_formats_that_run_programs_or_hide_their_size_are_refused_by_their_bytes(payload: bytes, named: str) -> None:
    import time

    started = time.monotonic()
    with pytest.raises(ImageError, match=f"{named} is not a format decoded here: send JPEG, PNG"):
        open_image(payload, max_pixels=1_000_000)
    assert time.monotonic() - started < 1.0  # nothing was run or decoded


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_every_documented_format_is_decoded(fmt: str) -> None:
    data = _saved(Image.new("RGB", (40, 30), (200, 30, 90)), fmt)
    assert load_model_input(data, 16, max_pixels=10_000).shape == (16, 16, 3)


def test_a_cameras_mpo_decodes_its_first_frame_and_only_that_frame_is_sized() -> None:
    from training.data.images import header_pixels

    data = _saved(Image.new("RGB", (32, 24)), "MPO", save_all=True, append_images=[Image.new("RGB", (3000, 3000))])
    image = open_image(data, max_pixels=1_000)
    assert image.format == "MPO" and image.size == (32, 24) and header_pixels(data) == 32 * 24


def test_a_multi_page_tiff_and_an_animated_gif_decode_frame_zero() -> None:
    big = Image.new("RGB", (2000, 2000))
    tiff = _saved(Image.new("RGB", (20, 10)), "TIFF", save_all=True, append_images=[big])
    gif = _saved(Image.new("RGB", (20, 10)), "GIF", save_all=True, append_images=[Image.new("RGB", (20, 10), "red")])
    assert open_image(tiff, max_pixels=1_000).size == (20, 10)
    assert open_image(gif, max_pixels=1_000).size == (20, 10)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
def test_a_truncated_file_of_each_format_is_refused(fmt: str) -> None:
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    data = _saved(noise, fmt)
    with pytest.raises(ImageError):
        open_image(data[: len(data) // 2], max_pixels=1_000_000)


def test_a_jpeg_cut_short_and_closed_with_an_end_marker_is_refused_and_the_smallest_real_one_is_not() -> None:
    """libjpeg fills a scan that ends early with grey and only warns: the bytes must hold a bit per 8x8 block."""
    noise = Image.fromarray(np.random.default_rng(2).integers(0, 255, (300, 300, 3), dtype=np.uint8))
    data = _saved(noise.resize((3000, 3000)), "JPEG")
    with pytest.raises(ImageError, match="cannot hold the 3000x3000 JPEG"):
        open_image(data[:2000] + b"\xff\xd9", max_pixels=10**7, shrink_to=64)
    for options in ({"quality": 1, "optimize": True}, {"quality": 1, "optimize": True, "progressive": True}):
        flat = _saved(Image.new("L", (3000, 3000), 128), "JPEG", **options)  # as few bytes as a JPEG can take
        assert load_model_input(flat, 64, max_pixels=10**7).shape == (64, 64, 3)
