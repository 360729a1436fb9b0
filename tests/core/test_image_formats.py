"""Every format is read from its header before it is decoded: only the formats a photo comes in,
the real size of the frame that will be decoded, and a decode budget that counts what decoding
really allocates, measured here as the peak resident memory of a child process.

The crafted files are made by ``tests.helpers.hostile_images`` (never committed): the attacks that
escaped the budget before each has a test at the library level here and over HTTP in
``tests/web/test_hostile_formats.py``.
"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from captioner.core.errors import ImageError
from captioner.core.images import decode, formats
from captioner.core.images.decode import load_image
from captioner.core.images.memory import DECODE_BUDGET_BYTES
from tests.helpers import hostile_images
from tests.helpers.decode_memory import measure
from tests.helpers.paths import EXAMPLES, ROOT

MB = 1024 * 1024
SLACK = 24 * MB  # the allocator's own overhead on top of the pixels counted (glibc arenas, Python objects)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def pillow_rgb(data: bytes) -> Image.Image:
    """What Pillow itself makes of a small, well-formed file: the reference for identical pixels
    (floats in [0, 1] scaled onto 0..255, where Pillow would clip them)."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode == "F":
            image = Image.fromarray(np.rint(np.asarray(image, np.float64) * 255).astype(np.uint8))
        if image.has_transparency_data:
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
        return image.convert("RGB")


# ---- the allow-list ---------------------------------------------------------------------------

ACCEPTED = {
    "baseline.jpg": lambda: encode(photo(), "JPEG", quality=90),
    "progressive.jpg": lambda: encode(photo(), "JPEG", progressive=True, subsampling=0),
    "grey.jpg": lambda: encode(photo().convert("L"), "JPEG"),
    "cmyk.jpg": lambda: encode(photo().convert("CMYK"), "JPEG"),
    "rgba.png": lambda: encode(photo().convert("RGBA"), "PNG"),
    "palette.png": lambda: encode(photo().convert("P"), "PNG"),
    "lossy.webp": lambda: encode(photo(), "WEBP", quality=80),
    "lossless.webp": lambda: encode(photo().convert("RGBA"), "WEBP", lossless=True),
    "animated.webp": lambda: encode(photo(), "WEBP", save_all=True, append_images=[photo().rotate(90)]),
    "animated.gif": lambda: encode(photo().convert("P"), "GIF", save_all=True, append_images=[photo().convert("P")]),
    "24-bit.bmp": lambda: encode(photo(), "BMP"),
    "palette.bmp": lambda: encode(photo().convert("P"), "BMP"),
    "lzw.tif": lambda: encode(photo(), "TIFF", compression="tiff_lzw"),
    "float.tif": lambda: encode(Image.fromarray(np.linspace(0, 1, 96 * 64, dtype=np.float32).reshape(64, 96)), "TIFF"),
    "photo.avif": lambda: encode(photo(), "AVIF", quality=90),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_each_accepted_format_decodes_to_the_pixels_pillow_makes(name):
    data = ACCEPTED[name]()
    header = formats.inspect(data)
    assert header.format in formats.ACCEPTED and header.size == (96, 64)
    image = load_image(data)
    assert image.mode == "RGB" and image.size == (96, 64)
    assert image.tobytes() == pillow_rgb(data).tobytes()


def _ppm() -> bytes:
    return encode(photo(), "PPM")


REFUSED = {  # name: (bytes, message)
    "icon.ico": (lambda: encode(photo(), "ICO"), "unsupported image format: ICO icon (accepted: JPEG, PNG, WebP"),
    "cursor.cur": (lambda: b"\x00\x00\x02\x00\x01\x00" + bytes(64), "unsupported image format: CUR cursor"),
    "icon.icns": (lambda: encode(photo().resize((64, 64)), "ICNS"), "unsupported image format: ICNS icon"),
    "photo.ppm": (_ppm, "unsupported image format: Netpbm"),
    "photo.qoi": (lambda: encode(photo(), "QOI"), "unsupported image format: QOI"),
    "layers.psd": (lambda: b"8BPS\x00\x01" + bytes(40), "unsupported image format: Photoshop document"),
    "photo.heic": (lambda: struct.pack(">I", 24) + b"ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
                   "unsupported image format: HEIC (accepted: JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF); "
                   "convert it to JPEG"),
    "photo.tga": (lambda: encode(photo(), "TGA"), "not an image (unrecognised or unsupported file format)"),
    "photo.pcx": (lambda: encode(photo(), "PCX"), "not an image (unrecognised or unsupported file format)"),
    "lossless.jpg": (lambda: b"\xff\xd8\xff\xc3\x00\x0b\x08\x00\x10\x00\x10\x01\x01\x11\x00" + bytes(32),
                     "unsupported JPEG variant: lossless"),
    "twelve-bit.jpg": (lambda: b"\xff\xd8\xff\xc1\x00\x0b\x0c\x00\x10\x00\x10\x01\x01\x11\x00\xff\xda" + bytes(32),
                       "unsupported JPEG variant: 12-bit samples"),
    "png-inside.bmp": (lambda: _bmp_holding_png(), "unsupported BMP variant: it holds a JPEG or PNG"),
}


def _bmp_holding_png() -> bytes:
    data = bytearray(encode(photo(), "BMP"))
    data[30:34] = struct.pack("<I", 5)  # compression: BI_PNG
    return bytes(data)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_other_formats_are_refused_by_name_before_pillow_sees_them(name):
    make, message = REFUSED[name]
    with pytest.raises(ImageError, match="^" + re.escape(message)):
        load_image(make())
    assert decode.image_size(make()) is None


def test_an_icon_holding_a_huge_png_is_refused_without_decoding_it():
    """The icon's directory declares 256 x 256; its entry holds a 13000 x 13000 PNG that Pillow would
    decode while merely opening the file (+4.8 GiB for 16 requests)."""
    data = hostile_images.ico_holding_png(13000)
    assert len(data) < 1024 * 1024
    started = time.perf_counter()
    with pytest.raises(ImageError, match="^unsupported image format: ICO icon"):
        load_image(data)
    assert time.perf_counter() - started < 1  # nothing was inflated


# ---- the frame that will be decoded -------------------------------------------------------------

def _gif_with_wide_first_frame() -> bytes:
    """A GIF whose logical screen is 10 x 10 and whose first frame is 40 x 30 at (5, 5)."""
    data = bytearray(encode(Image.new("P", (40, 30), 3), "GIF"))
    data[6:10] = struct.pack("<HH", 10, 10)
    at = data.index(b",")
    data[at + 1:at + 5] = struct.pack("<HH", 5, 5)
    return bytes(data)


@pytest.mark.parametrize(("make", "size"), [
    (_gif_with_wide_first_frame, (45, 35)),
    (lambda: hostile_images.tiff(300, 200, bits=8, sample_format=1, pages=3), (300, 200)),
    (lambda: hostile_images.lossless_webp(5000, 40), (5000, 40)),
    (lambda: encode(Image.new("RGB", (700, 20)), "WEBP"), (700, 20)),
    (lambda: encode(Image.new("RGBA", (30, 90), (1, 2, 3, 4)), "WEBP", save_all=True,
                    append_images=[Image.new("RGBA", (30, 90))]), (30, 90)),
    (lambda: encode(Image.new("RGB", (640, 10)), "PNG", save_all=True, append_images=[Image.new("RGB", (640, 10))]),
     (640, 10)),
], ids=["gif-frame-wider-than-screen", "tiff-first-page", "vp8l", "vp8", "vp8x-animated", "apng"])
def test_the_header_size_is_the_size_pillow_decodes(make, size):
    data = make()
    assert formats.inspect(data).size == size
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == size
    assert load_image(data).size == size


def test_headers_cut_short_are_refused_as_corrupt():
    for data in (b"\x89PNG\r\n\x1a\n\x00\x00", b"GIF89a\x10\x00", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM\x00",
                 b"II*\x00\x08\x00\x00\x00", b"\xff\xd8\xff\xe0\x00\x10JFIF"):
        with pytest.raises(ImageError, match="^truncated or corrupt image$"):
            load_image(data)


# ---- work Pillow would do while opening ---------------------------------------------------------

def test_a_long_gif_comment_is_refused_before_pillow_joins_it():
    """Pillow joins a comment's 255-byte pieces one by one (4 MB took 23 s); the header walk counts them."""
    base = encode(Image.new("P", (8, 8)), "GIF")
    at = base.index(b",")
    comment = b"\x21\xfe" + (b"\xff" + b"x" * 255) * 4096 + b"\x00"
    data = base[:at] + comment + base[at:]
    started = time.perf_counter()
    with pytest.raises(ImageError, match=re.escape(f"GIF comment too long: over {formats.MAX_GIF_COMMENT} bytes")):
        load_image(data)
    assert time.perf_counter() - started < 1


def _tiff_with_strips(count: int) -> bytes:
    """A 100-pixel-wide greyscale TIFF of ``count`` one-row strips that all point at the same bytes."""
    entries = [(256, 4, 1, 100), (257, 4, 1, count), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, count, 0), (277, 3, 1, 1), (278, 4, 1, 1), (279, 4, count, 0)]
    ifd_end = 8 + 2 + 12 * len(entries) + 4
    offsets_at, counts_at, pixels_at = ifd_end, ifd_end + 4 * count, ifd_end + 8 * count
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, n, value in entries:
        value = {273: offsets_at, 279: counts_at}.get(tag, value)
        out += struct.pack("<HHII", tag, kind, n, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, n, value, 0)
    out += struct.pack("<I", 0) + struct.pack(f"<{count}I", *[pixels_at] * count)
    return bytes(out + struct.pack(f"<{count}I", *[100] * count) + bytes(100))


def test_a_tiff_of_very_many_strips_is_refused_before_pillow_lists_them():
    """Pillow makes a Python object for every strip while opening (a million: 18 s and +334 MB)."""
    assert load_image(_tiff_with_strips(2000)).size == (100, 2000)
    data = _tiff_with_strips(200_000)
    started = time.perf_counter()
    with pytest.raises(ImageError, match=re.escape("TIFF has 200000 strips (limit 65536)")):
        load_image(data)
    assert time.perf_counter() - started < 1


def test_a_tiff_directory_of_very_many_fields_is_refused():
    data = bytearray(_tiff_with_strips(4))
    data[8:10] = struct.pack("<H", 5000)
    with pytest.raises(ImageError, match=re.escape("TIFF directory has 5000 fields (limit 1024)")):
        load_image(bytes(data))


def _png_with_text(chunks: int) -> bytes:
    """A tiny PNG carrying ``chunks`` zTXt chunks that each inflate to almost a megabyte."""
    base = encode(Image.new("RGB", (8, 8)), "PNG")
    text = zlib.compress(b"a" * (1000 * 1000), 9)
    extra = b"".join(hostile_images._chunk(b"zTXt", b"k%d\x00\x00" % i + text) for i in range(chunks))
    return base[:33] + extra + base[33:]


def test_png_text_is_counted_in_the_decode_budget(tmp_path):
    """Pillow inflates a PNG's text while opening it (up to 64 MB): 40 chunks of 1 KB hold 40 MB."""
    data = _png_with_text(40)
    assert len(data) < 64 * 1024
    header = formats.inspect(data)
    assert header.metadata >= 40 * 1000 * 1000
    path = tmp_path / "text.png"
    path.write_bytes(data)
    report, = measure([path])
    assert report["outcomes"] == ["8x8"]
    assert report["peak"] <= decode.decode_need(header) + SLACK, report


# ---- the budget counts what decoding allocates --------------------------------------------------

def _sized(side: int) -> dict:
    """Files of ``side`` x ``side`` pixels (of each kind that allocates differently)."""
    picture = hostile_images._picture(side, side)
    return {
        "baseline.jpg": encode(picture, "JPEG", quality=80),
        "progressive-444.jpg": hostile_images.progressive_jpeg(side, side),
        "progressive-420.jpg": hostile_images.progressive_jpeg(side, side, subsampling=2),
        "cmyk.jpg": encode(picture.convert("CMYK"), "JPEG"),
        "rgba16.png": hostile_images.png(side, side, bit_depth=16),
        "grey16.png": hostile_images.png(side, side, bit_depth=16, colour_type=0),
        "palette.gif": encode(picture.convert("P"), "GIF"),
        "lossless.webp": hostile_images.lossless_webp(side, side, alpha=True),
        "lossy.webp": encode(picture, "WEBP", quality=50, method=0),
        "float.tif": hostile_images.tiff(side, side),
        "rgb.tif": hostile_images.tiff(side, side, bits=8, sample_format=1, samples=3, rows_per_strip=64),
        "photo.avif": encode(picture.resize((side // 2, side // 2)), "AVIF", quality=50, speed=10),
    }


@pytest.mark.slow
@pytest.mark.parametrize("min_side", [None, 512], ids=["full-size", "reduced"])
def test_the_budget_counts_what_each_decode_allocates(tmp_path, min_side):
    """For each kind of file, the bytes held from the budget are at least the peak memory one decode
    really takes (measured in a child process), and not a blanket overestimate."""
    files = []
    for name, data in _sized(3000).items():
        files.append(tmp_path / name)
        files[-1].write_bytes(data)
    for path, report in zip(files, measure(files, 1, min_side)):
        header = formats.inspect(path.read_bytes())
        need = decode.decode_need(header, *decode.plan(header, min_side))
        assert not report["outcomes"][0].startswith("ImageError"), report
        assert report["budget_peak"] == need
        print(f"{path.name:22} {header.kind:24} counted {need / MB:6.1f} MB, peak {report['peak'] / MB:6.1f} MB")
        assert report["peak"] <= need + SLACK, (path.name, need, report)
        assert need <= 2.5 * report["peak"] + 64 * MB, (path.name, need, report)


# ---- the attacks --------------------------------------------------------------------------------

ATTACKS = {  # name: (builder, what happens to each request)
    "icon-holding-13000px-png.ico": (hostile_images.ico_holding_png, "unsupported image format: ICO icon"),
    "float-1000x49000.tif": (hostile_images.tiff, "1000x49000"),
    "lossless-7000x7000.webp": (hostile_images.lossless_webp,
                                "image too large to decode: a 7000 x 7000 lossless WebP needs 794.4 MB of memory "
                                "(limit 512.0 MB)"),
    "progressive-444-7000x7000.jpg": (hostile_images.progressive_jpeg, "875x875"),
    "rgba16-1000x49000.png": (lambda: hostile_images.png(1000, 49000, bit_depth=16), "1000x49000"),
    "truncated-7000x7000.jpg": (hostile_images.truncated_jpeg, "truncated or corrupt image"),
    "truncated-7000x7000-with-end-marker.jpg": (lambda: hostile_images.truncated_jpeg() + b"\xff\xd9",
                                                "truncated or corrupt image"),
}


@pytest.fixture(scope="module")
def attack_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("attacks")
    paths = {}
    for name, (make, _) in ATTACKS.items():
        paths[name] = folder / name
        paths[name].write_bytes(make())
    return paths


@pytest.mark.stress
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sixteen_concurrent_decodes_of_each_attack_stay_within_the_budget(attack_files):
    """Each attack on 16 threads at once, as the caption path decodes (``min_side=512``): refused with
    its message or decoded, the peak within the 512 MB budget, memory back afterwards."""
    reports = measure(list(attack_files.values()), 16, 512)
    for report in reports:
        expected = ATTACKS[report["file"]][1]
        print(f"{report['file']:40} peak +{report['peak'] / MB:5.0f} MB, after +{report['after'] / MB:4.0f} MB: "
              f"{report['outcomes'][0]}")
        assert all(outcome.removeprefix("ImageError: ").startswith(expected) for outcome in report["outcomes"])
        assert report["budget_peak"] <= DECODE_BUDGET_BYTES
        assert report["peak"] <= DECODE_BUDGET_BYTES + 64 * MB, report
        assert report["after"] <= 64 * MB, report


# ---- JPEG: truncation and identical pixels -------------------------------------------------------

def test_jpegs_whose_data_ends_early_are_refused_even_with_an_end_marker():
    whole = encode(hostile_images._picture(1200, 900), "JPEG", quality=80)
    progressive = encode(hostile_images._picture(1200, 900), "JPEG", progressive=True)
    scan = whole.index(b"\xff\xda")
    for data in (whole[:len(whole) // 2], whole[:len(whole) // 2] + b"\xff\xd9", whole[:scan + 20] + b"\xff\xd9",
                 progressive[:len(progressive) * 2 // 3] + b"\xff\xd9", whole[:-2]):
        for min_side in (None, 256):
            with pytest.raises(ImageError, match="^truncated or corrupt image$"):
                load_image(data, min_side=min_side)
    # Stray bytes before the end marker lose nothing: decoded as Pillow decodes them.
    stray = whole[:-2] + b"\x00\x00\x00\xff\xd9"
    assert load_image(stray).tobytes() == pillow_rgb(stray).tobytes()


def _rotated_by_xmp() -> bytes:
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    data = encode(photo((90, 40)), "JPEG")
    segment = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(segment) + 2) + segment + data[2:]


def test_jpegs_decode_to_the_pixels_pillow_makes_at_every_scale():
    """simplejpeg and Pillow both run libjpeg-turbo: the same pixels, orientation (EXIF or XMP) included,
    at full size and at the reduced sizes ``min_side`` picks (Pillow's ``draft``)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {path.name: path.read_bytes() for path in sorted(EXAMPLES.glob("*.jpg"))}
    files |= {"exif-rotated.jpg": encode(photo((90, 40)), "JPEG", exif=exif), "xmp-rotated.jpg": _rotated_by_xmp(),
              "cmyk.jpg": encode(photo().convert("CMYK"), "JPEG"),
              "big.jpg": encode(hostile_images._picture(2600, 1900), "JPEG", exif=exif)}
    for name, data in files.items():
        for min_side in (None, 150, 300):
            with Image.open(io.BytesIO(data)) as image:
                if min_side and min(image.size) >= 2 * min_side:
                    image.draft(image.mode, (min_side, min_side))
                image.load()
                want = ImageOps.exif_transpose(image).convert("RGB")
            got = load_image(data, min_side=min_side)
            if min_side and min(want.size) >= 2 * min_side:
                continue  # reduced further after decoding: test_images covers the reduction
            assert got.size == want.size and got.tobytes() == want.tobytes(), (name, min_side)


def test_coefficient_buffers_are_counted_for_progressive_jpegs_only():
    """A progressive JPEG keeps 2 bytes per coefficient of its full size (6 bytes a pixel at 4:4:4)
    whatever scale it is decoded at; a sequential one with another picture appended (as MPO files
    and phones' gain maps are) keeps none."""
    picture = hostile_images._picture(1600, 1200)
    sequential = encode(picture, "JPEG")
    progressive = formats.inspect(encode(picture, "JPEG", progressive=True, subsampling=0))
    assert progressive.kind == "progressive JPEG 4:4:4" and progressive.scratch >= 1600 * 1200 * 6
    for data in (sequential, sequential + sequential):
        header = formats.inspect(data)
        assert header.kind == "JPEG" and header.scratch < 1600 * 1200
    assert decode.decode_need(progressive, *decode.plan(progressive, 256)) > 1600 * 1200 * 6


def test_the_file_suffixes_are_those_of_the_accepted_formats():
    registered = Image.registered_extensions()
    assert {registered[suffix] for suffix in formats.SUFFIXES} == set(formats.ACCEPTED)
    assert {suffix for suffix, format_ in registered.items() if format_ in formats.ACCEPTED} == set(formats.SUFFIXES)


@pytest.mark.slow
@pytest.mark.parametrize("raw, budget", [("64", "67108864"), ("", "536870912"), ("0", None), ("lots", None)])
def test_the_decode_budget_comes_from_the_environment_in_megabytes(raw, budget):
    """Read once, when the module is imported: a bad value stops the import with the variable's name."""
    child = subprocess.run([sys.executable, "-c", "from captioner.core.images.memory import DECODE_BUDGET_BYTES as b; "
                            "print(b)"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env={**os.environ, "CAPTIONER_DECODE_BUDGET_MB": raw})
    if budget is None:
        assert child.returncode != 0
        assert f"CAPTIONER_DECODE_BUDGET_MB must be a whole number of at least 1, got '{raw}'" in child.stderr
    else:
        assert child.returncode == 0 and child.stdout.strip() == budget, child.stderr
