"""captioner.images: every input kind and mode becomes a fresh RGB image; bad input is refused."""

from __future__ import annotations

import importlib.util
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision import transforms

from captioner.core.errors import ImageError
from captioner.core.images.decode import MAX_IMAGE_PIXELS, load_image
from captioner.core.images.preprocess import build_preprocessor, load_pixels
from tests.helpers.paths import ROOT

EXAMPLES = ROOT / "examples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    assert image.mode == "RGB"
    return image.getpixel(xy)


def close(actual, expected, tolerance: int = 2) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


# ---------------------------------------------------------------- modes -> RGB


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGB", (3, 2), (10, 200, 30)), (10, 200, 30)),
        (Image.new("L", (3, 2), 100), (100, 100, 100)),
        (Image.new("1", (3, 2), 1), (255, 255, 255)),
        (Image.new("1", (3, 2), 0), (0, 0, 0)),
        (Image.new("LA", (3, 2), (0, 255)), (0, 0, 0)),
        (Image.new("LA", (3, 2), (0, 0)), (255, 255, 255)),  # fully transparent black: white
        (Image.new("RGBA", (3, 2), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("RGBA", (3, 2), (255, 0, 0, 128)), (255, 127, 127)),  # half red on white: pink
        (Image.new("RGBA", (3, 2), (0, 0, 255, 0)), (255, 255, 255)),
        (Image.new("CMYK", (3, 2), (0, 255, 255, 0)), (255, 0, 0)),
        (Image.new("CMYK", (3, 2), (0, 0, 0, 255)), (0, 0, 0)),
        (Image.new("YCbCr", (3, 2), (76, 85, 255)), (254, 0, 0)),
        (Image.new("HSV", (3, 2), (0, 255, 255)), (255, 0, 0)),
        (Image.frombytes("LAB", (1, 1), bytes([128, 0, 0])), (119, 119, 119)),  # L*=50, a=b=0: grey
        (Image.frombytes("LAB", (1, 1), bytes([135, 80, 67])), (249, 3, 10)),  # L*=53, red
        (Image.new("I;16", (3, 2), 32896), (128, 128, 128)),  # mid-grey stays mid-grey
        (Image.new("I;16", (3, 2), 65535), (255, 255, 255)),
        (Image.new("I;16B", (3, 2), 32896), (128, 128, 128)),
        (Image.new("I", (3, 2), 32896), (128, 128, 128)),
        (Image.new("F", (3, 2), 0.5), (128, 128, 128)),
    ],
    ids=lambda value: value.mode if isinstance(value, Image.Image) else None,
)
def test_every_mode_becomes_rgb_with_the_right_colour(image, expected):
    before = image.tobytes()
    result = load_image(image)
    assert result.mode == "RGB" and result.size == image.size
    assert close(pixel(result), expected, tolerance=1), pixel(result)
    assert result is not image and image.tobytes() == before  # caller's image untouched


def test_wide_integer_and_float_images_are_stretched_not_clipped():
    values = np.array([[-1000, 0, 3000, 1_000_000]], dtype=np.int32)
    result = load_image(Image.fromarray(values, mode="I"))
    assert [pixel(result, (x, 0))[0] for x in range(4)] == [0, 0, 1, 255]
    floats = Image.fromarray(np.array([[0.0, 500.0, 1000.0]], dtype=np.float32), mode="F")
    assert [pixel(load_image(floats), (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_sixteen_bit_png_file_keeps_its_grey_level(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((4, 6), 16448, dtype=np.uint16)).save(path)  # 16448 / 257 = 64
    with Image.open(path) as stored:
        assert stored.mode.startswith("I")
    assert pixel(load_image(path)) == (64, 64, 64)


def test_palette_transparency_is_white():
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    plain = load_image(encode(image))
    assert pixel(plain, (0, 0)) == (255, 0, 0) and pixel(plain, (1, 0)) == (0, 0, 255)
    for fmt in ("PNG", "GIF"):
        reloaded = load_image(encode(image, fmt, transparency=0))
        assert pixel(reloaded, (0, 0)) == (255, 255, 255), fmt
        assert pixel(reloaded, (1, 0)) == (0, 0, 255), fmt


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: turn 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, quality=95, exif=exif)
    result = load_image(path)
    assert result.size == (20, 40)
    assert close(pixel(result, (10, 5)), (255, 0, 0), 30)  # left side is now the top
    assert close(pixel(result, (10, 35)), (0, 0, 255), 30)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0,
                  **({"lossless": True} if fmt == "WEBP" else {}))
    with Image.open(io.BytesIO(data)) as stored:
        assert getattr(stored, "n_frames", 1) == 2
    assert close(pixel(load_image(data)), (255, 0, 0), 2)


# ---------------------------------------------------------------- input kinds


def test_paths_bytes_and_images_are_all_accepted(tmp_path):
    image = Image.new("RGB", (5, 4), (1, 2, 3))
    path = tmp_path / "small.png"
    image.save(path)
    data = path.read_bytes()
    for source in (str(path), path, data, bytearray(data), image):
        result = load_image(source)
        assert result.size == (5, 4) and pixel(result) == (1, 2, 3), type(source)


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((4, 5), 7, np.uint8), (7, 7, 7)),
        (np.full((4, 5, 1), 7, np.uint8), (7, 7, 7)),
        (np.full((4, 5, 3), (1, 2, 3), np.uint8), (1, 2, 3)),
        (np.full((4, 5, 4), (255, 0, 0, 128), np.uint8), (255, 127, 127)),
        (np.full((4, 5, 4), (0, 0, 0, 0), np.uint8), (255, 255, 255)),
        (np.full((4, 5), 32896, np.uint16), (128, 128, 128)),
        (np.full((4, 5, 3), (65535, 0, 32896), np.uint16), (255, 0, 128)),
        (np.ones((4, 5), bool), (255, 255, 255)),
        (np.full((4, 5, 3), (0.0, 0.5, 1.0), np.float32), (0, 128, 255)),
        (np.full((4, 5), 0.25, np.float64), (64, 64, 64)),
    ],
    ids=lambda value: f"{value.dtype}{value.shape}" if isinstance(value, np.ndarray) else None,
)
def test_arrays_are_accepted(array, expected):
    before = array.copy()
    result = load_image(array)
    assert result.size == (5, 4)
    assert close(pixel(result), expected, tolerance=1), pixel(result)
    result.putpixel((0, 0), (9, 9, 9))
    np.testing.assert_array_equal(array, before)  # no shared memory with the caller's array


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 5), np.int64), "unsupported array dtype int64"),
        (np.zeros((4, 5, 3), np.complex64), "unsupported array dtype"),
        (np.zeros((4, 5, 2), np.uint8), "unsupported array shape"),
        (np.zeros((3, 4, 5, 3), np.uint8), "unsupported array shape"),
        (np.zeros(5, np.uint8), "unsupported array shape"),
        (np.zeros((0, 5), np.uint8), "zero size"),
        (np.full((4, 5), 1.5, np.float32), "in [0, 1]"),
        (np.full((4, 5), np.nan, np.float32), "in [0, 1]"),
    ],
)
def test_bad_arrays_are_refused(array, message):
    with pytest.raises(ImageError, match=re.escape(message)):
        load_image(array)


def test_unsupported_input_type_is_refused():
    with pytest.raises(ImageError, match="unsupported image input of type int"):
        load_image(42)  # type: ignore[arg-type]


# ---------------------------------------------------------------- refused files


def noise_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    return encode(Image.fromarray(noise))


def declared_size_png(width: int, height: int) -> bytes:
    """A small, valid PNG whose IHDR (with a correct CRC) declares width x height pixels."""
    data = bytearray(encode(Image.new("L", (8, 8))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"Just some notes.\nNothing to see here.\n", "not an image (it is a text file)"),
        (b"<!DOCTYPE html>\n<html><body><img src=cat.jpg></body></html>", "not an image (it is an HTML page)"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
         "not an image (it is an SVG drawing"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "not an image (it is a PDF document)"),
        (np.random.default_rng(1).bytes(4096), "not an image (unrecognised"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "truncated or corrupt image"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 300, "truncated or corrupt image"),
    ],
    ids=["empty", "text", "html", "svg", "pdf", "random", "corrupt-png", "corrupt-jpeg"],
)
def test_non_images_and_corrupt_bytes_are_refused(data, message):
    with pytest.raises(ImageError, match=re.escape(message)):
        load_image(data)


@pytest.mark.parametrize("name", ["rocket.jpg", "noise.png"])
def test_files_cut_in_half_are_refused(tmp_path, name):
    data = (EXAMPLES / name).read_bytes() if name.endswith(".jpg") else noise_png()
    assert load_image(data).size  # the whole file is fine
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt image"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_pdf_renamed_to_jpg_and_empty_file_are_refused(tmp_path):
    pdf = tmp_path / "holiday.jpg"
    pdf.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Page >> endobj\n%%EOF\n")
    with pytest.raises(ImageError, match=re.escape("not an image (it is a PDF document)")):
        load_image(pdf)
    empty = tmp_path / "empty.png"
    empty.touch()
    with pytest.raises(ImageError, match="^empty file$"):
        load_image(empty)


def test_missing_path_and_directory_are_refused(tmp_path):
    missing = tmp_path / "nowhere.jpg"
    with pytest.raises(ImageError, match=re.escape(f"file not found: {missing}")):
        load_image(missing)
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_decompression_bombs_are_refused_from_their_header():
    """Far above PIL's own limit or just above ours: refused from the declared size, before Pillow opens it."""
    with pytest.raises(ImageError, match=re.escape(f"100000 x 100000 pixels (limit {MAX_IMAGE_PIXELS})")):
        load_image(declared_size_png(100_000, 100_000))
    with pytest.raises(ImageError, match=re.escape(f"10000 x 6000 pixels (limit {MAX_IMAGE_PIXELS})")):
        load_image(declared_size_png(10_000, 6_000))


def test_pixel_and_byte_limits_can_be_lowered(tmp_path):
    image = Image.new("RGB", (100, 100))
    with pytest.raises(ImageError, match=re.escape("image is too large: 100 x 100 pixels (limit 5000)")):
        load_image(image, max_pixels=5000)
    path = tmp_path / "noise.png"
    path.write_bytes(noise_png())
    for source in (path, path.read_bytes()):
        with pytest.raises(ImageError, match="file too large"):
            load_image(source, max_bytes=1000)


def test_zero_size_image_is_refused():
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 3)))


def test_extreme_aspect_ratio_is_accepted():
    assert load_image(np.zeros((10, 10_000), np.uint8)).size == (10_000, 10)


# ---------------------------------------------------------------- preprocessing

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("size", [(640, 480), (224, 224), (1, 1), (10_000, 10), (10, 10_000)])
def test_preprocessed_shape(size):
    preprocess = build_preprocessor(256, 224, MEAN, STD)
    tensor = preprocess(Image.new("RGB", size, (255, 255, 255)))
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    expected = (1 - torch.tensor(MEAN)) / torch.tensor(STD)  # white, normalised
    assert torch.allclose(tensor.mean(dim=(1, 2)), expected, atol=1e-4)


def test_elongated_images_give_the_standard_centre_crop():
    """Cropping the long side first changes nothing the plain resize + centre crop would keep."""
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 256, (60, 1500, 3), dtype=np.uint8))
    standard = transforms.Compose([
        transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])
    ours = build_preprocessor(256, 224, MEAN, STD)(image)
    assert torch.allclose(ours, standard(image), atol=0.05)


def test_the_centre_crop_is_resampled_alone_with_the_pixels_of_a_whole_resize(example_photos):
    """Only the region the crop keeps is resampled; the pixels are those of resizing the whole photo
    and cropping, give or take one level where the filter's coordinates round differently."""
    preprocess = build_preprocessor(256, 224, (0, 0, 0), (1, 1, 1))
    for photo in example_photos.values():
        image = Image.open(photo).convert("RGB")
        width, height = image.size
        size = (256, int(256 * height / width)) if width <= height else (int(256 * width / height), 256)
        whole = image.resize(size, Image.Resampling.BILINEAR)
        left, top = round((size[0] - 224) / 2), round((size[1] - 224) / 2)
        want = np.asarray(whole.crop((left, top, left + 224, top + 224)), np.float32).transpose(2, 0, 1) / 255
        difference = (preprocess(image) - torch.from_numpy(want)).abs()
        assert difference.max() <= 1 / 255 + 1e-6, photo.name
        assert (difference > 1e-6).float().mean() < 1e-3, photo.name


def test_normalisation_is_exactly_to_tensor_then_normalize():
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    want = transforms.Normalize(MEAN, STD)(transforms.ToTensor()(image))
    assert torch.equal(build_preprocessor(224, 224, MEAN, STD)(image), want)


def test_load_pixels_stacks_the_usable_images_in_order_and_names_the_others():
    preprocess = build_preprocessor(32, 28, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    red, blue = Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (30, 40), (0, 0, 255))
    batch, kept, failures = load_pixels([red, b"not an image", blue, red], preprocess)
    assert batch.shape == (3, 3, 28, 28) and kept == [0, 2, 3]
    assert failures == [(1, "not an image (it is a text file)")]
    assert batch[0, 0].min() == 1 and batch[0, 2].max() == -1
    assert batch[1, 2].min() == 1 and batch[1, 0].max() == -1
    assert torch.equal(batch[0], batch[2])
    assert load_pixels([], preprocess) == (None, [], [])


def test_squash_resizes_the_whole_image_with_the_named_filter():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 120, 3), dtype=np.uint8))
    ours = build_preprocessor(224, 224, (0, 0, 0), (1, 1, 1), resize_mode="squash", resample="lanczos")(image)
    want = np.asarray(image.resize((224, 224), Image.Resampling.LANCZOS), np.float32) / 255
    assert torch.allclose(ours, torch.from_numpy(want).permute(2, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="resize_mode"):
        build_preprocessor(224, 224, (0, 0, 0), (1, 1, 1), resize_mode="stretch")


# ---------------------------------------------------------------- real photos


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def test_examples_load_and_preprocess():
    files = example_files()
    assert len(files) >= 6
    assert sum(p.stat().st_size for p in files) < 2 * 1024 * 1024
    preprocess = build_preprocessor(256, 224, MEAN, STD)
    batch, kept, _ = load_pixels(files, preprocess)
    assert kept == list(range(len(files)))
    assert batch.shape == (len(files), 3, 224, 224)
    assert batch.std(dim=(1, 2, 3)).min() > 0.3  # real pictures, not blank ones


def test_every_example_has_an_attribution_row():
    text = (EXAMPLES / "ATTRIBUTION.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([^`]+)` \|.*$", text, re.M)}
    for path in example_files():
        assert path.name in rows, f"{path.name} has no row in examples/ATTRIBUTION.md"
        assert re.search(r"Public domain|CC0", rows[path.name]), rows[path.name]
    assert set(rows) <= {p.name for p in example_files()}, "rows for files that do not exist"


SKIMAGE = importlib.util.find_spec("skimage")
SKIMAGE_DATA = Path(SKIMAGE.submodule_search_locations[0]) / "data" if SKIMAGE else None


@pytest.mark.skipif(SKIMAGE is None, reason="scikit-image is not installed")
@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("horse.png", (400, 328)),  # RGBA silhouette, CC0
        ("coins.png", (384, 303)),  # greyscale photo
        ("hubble_deep_field.jpg", (1000, 872)),
        ("no_time_for_that_tiny.gif", (14, 25)),  # animated GIF
    ],
)
def test_more_real_files_from_scikit_image(name, size):
    result = load_image(SKIMAGE_DATA / name)
    assert result.mode == "RGB" and result.size == size
    with Image.open(SKIMAGE_DATA / name) as original:
        if original.mode == "RGBA":  # the horse: a black silhouette on (partly transparent) white
            assert pixel(result, (0, 0)) == (255, 255, 255) and min(result.getextrema()[0]) == 0
        else:  # nothing else to do than decode and convert the first frame
            assert result.tobytes() == original.convert("RGB").tobytes()


# ---- bounded decoding (min_side, the byte semaphore) ------------------------------------------

@pytest.mark.parametrize("mode, fmt", [("RGB", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"),
                                       ("I;16", "PNG"), ("LA", "PNG"), ("CMYK", "TIFF"), ("F", "TIFF")])
@pytest.mark.slow
def test_large_images_are_reduced_but_never_below_min_side(mode, fmt):
    rng = np.random.default_rng(1)
    photo = Image.fromarray((rng.random((1300, 2100, 3)) * 255).astype(np.uint8))
    if mode == "F":  # floats in [0, 1] (other ranges are stretched from their own minimum to maximum)
        source = Image.fromarray(np.asarray(photo.convert("L"), np.float32) / 255)
    else:
        source = photo.convert("L").convert(mode) if mode == "I;16" else photo.convert(mode)
    image = load_image(encode(source, fmt), min_side=300)
    assert image.mode == "RGB" and 300 <= min(image.size) < 600
    assert image.width / image.height == pytest.approx(2100 / 1300, rel=0.01)
    full = load_image(encode(source, fmt)).resize(image.size, Image.Resampling.BOX)
    difference = np.abs(np.asarray(image, np.int16) - np.asarray(full, np.int16)).mean()
    assert difference < 6, difference  # the same picture, averaged the same way


def test_small_images_and_min_side_none_keep_their_size():
    data = encode(Image.new("RGB", (700, 500), "red"), "JPEG")
    assert load_image(data, min_side=256).size == (700, 500)  # shorter side under twice min_side
    assert load_image(encode(Image.new("RGB", (3000, 2000), "red"), "JPEG")).size == (3000, 2000)


def test_reduction_keeps_exif_orientation_and_transparency():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    for fmt in ("JPEG", "PNG"):
        image = load_image(encode(Image.new("RGB", (3000, 1200), "blue"), fmt, exif=exif), min_side=256)
        assert image.height > image.width, fmt
    clear = Image.new("RGBA", (2400, 1200), (255, 0, 0, 0))
    assert load_image(encode(clear), min_side=256).getpixel((10, 10)) == (255, 255, 255)


def test_a_caller_s_image_is_not_changed():
    photo = Image.open(io.BytesIO(encode(Image.new("RGB", (3000, 2000), "green"), "JPEG")))
    assert load_image(photo, min_side=256).size == (429, 286)  # reduced by 7 after decoding, not drafted
    assert photo.size == (3000, 2000) and load_image(photo).size == (3000, 2000)


def test_bad_min_side_is_refused():
    for value in (0, -1, 2.5, True, "256"):
        with pytest.raises(ValueError, match="min_side"):
            load_image(encode(Image.new("RGB", (8, 8))), min_side=value)


def test_byte_semaphore_caps_the_bytes_held_across_threads():
    import threading
    import time

    from captioner.core.images.memory import ByteSemaphore

    semaphore = ByteSemaphore(100)
    holding = []

    def work(size):
        with semaphore.hold(size):
            holding.append(semaphore.in_use)
            time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(size,)) for size in (60, 60, 30, 30, 500, 10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert semaphore.peak <= 100 and max(holding) <= 100 and semaphore.in_use == 0
    assert len(holding) == 6  # the request over the capacity ran alone instead of waiting forever
    with pytest.raises(ValueError):
        ByteSemaphore(0)


def test_decoding_in_flight_stays_within_the_budget(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from captioner.core.images import decode, formats, memory

    data = encode(Image.new("RGBA", (3000, 3000), (10, 20, 30, 128)))
    header = formats.inspect(data)
    need = decode.decode_need(header, *decode.plan(header, 256))
    before = memory.DECODE_MEMORY.peak
    memory.DECODE_MEMORY.peak = 0
    try:
        with ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(lambda _: load_image(data, min_side=256).size, range(8)))
        assert sizes == [(273, 273)] * 8  # 3000 / 11, rounded up
        assert need <= memory.DECODE_MEMORY.peak <= memory.DECODE_MEMORY.capacity
    finally:
        memory.DECODE_MEMORY.peak = max(before, memory.DECODE_MEMORY.peak)
