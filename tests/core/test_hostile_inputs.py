"""Whatever a stranger uploads: a caption or an ImageError, quickly, never anything else.

Fixed hostile files go through the whole captioner (library and CLI); hypothesis then
throws random and mutated bytes at the image loader.
"""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from captioner.core.errors import ImageError
from captioner.core.images.decode import load_image
from captioner.core.inference import load_captioner
from tests.helpers import hostile_images
from tests.helpers.cli import run


def _encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _photo(size=(64, 48)):
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _bomb_png(width=100_000, height=100_000):
    """A valid tiny PNG whose header declares a huge image (correct CRC)."""
    data = bytearray(_encode(Image.new("L", (8, 8)), "PNG"))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _exif_rotated():
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(_photo((60, 30)), "JPEG", exif=exif)


def _animated(fmt):
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")]
    return _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50)


def _palette_transparent():
    image = Image.new("P", (32, 32), 0)
    image.putpalette([255, 0, 0] * 256)
    image.info["transparency"] = 0
    return _encode(image, "PNG", transparency=0)


GOOD = {
    "1x1.png": lambda: _encode(Image.new("RGB", (1, 1), "white"), "PNG"),
    "10000x10.png": lambda: _encode(Image.new("RGB", (10000, 10), "gray"), "PNG"),
    "10x10000.png": lambda: _encode(Image.new("RGB", (10, 10000), "gray"), "PNG"),
    "16bit.png": lambda: _encode(Image.fromarray(np.full((40, 40), 30000, np.uint16)), "PNG"),
    "cmyk.jpg": lambda: _encode(_photo().convert("CMYK"), "JPEG"),
    "palette-transparent.png": _palette_transparent,
    "animated.gif": lambda: _animated("GIF"),
    "animated.webp": lambda: _animated("WEBP"),
    "exif-rotated.jpg": _exif_rotated,
    "grey.jpg": lambda: _encode(_photo().convert("L"), "JPEG"),
    "progressive.jpg": lambda: _encode(_photo(), "JPEG", progressive=True, subsampling=0),
    "photo.avif": lambda: _encode(_photo(), "AVIF"),
    "float.tif": lambda: _encode(Image.fromarray(np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)), "TIFF"),
}
BAD = {
    "empty.jpg": (lambda: b"", "empty file"),
    "truncated.jpg": (lambda: _encode(_photo(), "JPEG")[:400], "truncated or corrupt"),
    "truncated.png": (lambda: _encode(_photo(), "PNG")[:300], "truncated or corrupt"),
    "random.jpg": (lambda: os.urandom(5000), "not an image"),
    "text.jpg": (lambda: b"hello, this is a text file\n" * 20, "not an image"),
    "page.jpg": (lambda: b"<!DOCTYPE html><html><body>hi</body></html>", "not an image"),
    "drawing.jpg": (lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "not an image"),
    "document.jpg": (lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "not an image"),
    "bomb.png": (lambda: _bomb_png(), "too large"),
    "truncated-ended.jpg": (lambda: _encode(_photo((640, 480)), "JPEG")[:2000] + b"\xff\xd9", "truncated or corrupt"),
    "icon.ico": (lambda: _encode(_photo(), "ICO"), "unsupported image format: ICO icon"),
    "photo.ppm": (lambda: _encode(_photo(), "PPM"), "unsupported image format: Netpbm"),
    "huge.webp": (lambda: hostile_images.lossless_webp(), "image too large to decode"),
}


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    for name, make in GOOD.items():
        (folder / name).write_bytes(make())
    for name, (make, _) in BAD.items():
        (folder / name).write_bytes(make())
    return folder


@pytest.mark.timeout(120)
def test_library_captions_odd_images_and_refuses_hostile_ones(tiny_model_dir, hostile_dir):
    captioner = load_captioner(tiny_model_dir, "cpu")
    for name in GOOD:
        result = captioner(hostile_dir / name)
        assert result.candidates, name
    for name, (_, message) in BAD.items():
        with pytest.raises(ImageError, match=message):
            captioner(hostile_dir / name)
    assert captioner(hostile_dir / "1x1.png").candidates  # still serving


@pytest.mark.timeout(300)
def test_cli_reports_each_hostile_file_and_goes_on(tiny_model_dir, hostile_dir):
    names = sorted(GOOD) + sorted(BAD)
    proc = run("caption", "--model", tiny_model_dir, *(hostile_dir / n for n in names))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    captioned = {line.split(": ", 1)[0].rsplit("/", 1)[-1] for line in proc.stdout.splitlines()}
    assert captioned == set(GOOD)
    for name, (_, message) in BAD.items():
        assert any(name in line and message in line for line in proc.stderr.splitlines()), name


SEEDS = {fmt: _encode(_photo((24, 16)), fmt) for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")}
SEEDS["progressive JPEG"] = _encode(_photo((24, 16)), "JPEG", progressive=True)


def _load_or_refuse(data: bytes) -> None:
    try:
        image = load_image(data)
    except ImageError:
        return
    assert image.mode == "RGB" and image.width > 0 and image.height > 0


@settings(deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data):
    _load_or_refuse(data)


@settings(deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_fuzz_mutated_real_images(fmt, data):
    """Flip, overwrite or cut bytes of real encoded images: the cases real decoders stumble on."""
    blob = bytearray(SEEDS[fmt])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(blob)))
    _load_or_refuse(bytes(blob[:cut]))
