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
