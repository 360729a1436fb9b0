"""Loading untrusted images safely and turning them into model input tensors.

``load_image`` accepts a path, raw bytes, a PIL image or a numpy array and returns a fresh
RGB ``PIL.Image``, or raises ``ImageError`` with a message fit to show a user. It checks
the declared size before decoding (decompression bombs), forces a full decode (truncated
files fail here, not later in the model) and flattens transparency onto white.

Memory is bounded by design. With ``min_side`` a large image is decoded at reduced size where
the format allows (JPEG's DCT scaling through ``Image.draft``) and otherwise reduced right after
decoding, before 16-bit scaling, transparency or EXIF rotation make full-size copies. The
decoded pixel memory of all calls in flight, across threads, is capped by ``DECODE_MEMORY`` (a
semaphore counted in bytes), and freed pixel memory goes back to the operating system. glibc
keeps freed blocks of up to 32 MB in the arena of the thread that used them (``malloc_trim`` does
not empty other threads' arenas), so from the first large decode on Pillow allocates pixels in
blocks of ``PILLOW_BLOCK_BYTES`` (64 MB, which glibc always maps on its own and unmaps when
freed), reduction works in small bands, and ``malloc_trim`` runs after each large decode. A burst
of huge images decoded on many threads leaves no lasting growth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import os
import platform
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
import numpy as np
import torch
from PIL import Image, ImageOps

from captioner.core.errors import ImageError

MAX_IMAGE_PIXELS = 50_000_000  # about 8000 x 6000; far above any camera photo
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# Formats people upload as photos ("JPEG" also opens multi-picture MPO files). Others
# (EPS runs Ghostscript, TGA has no magic number) are refused rather than guessed.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "ICO", "PPM", "AVIF")
# Leading bytes of the accepted formats, to tell a broken image from a non-image.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
MAX_ASPECT = 4.0  # see _limit_aspect
# Decoded pixel memory that all load_image calls may hold at once (CAPTIONER_DECODE_BUDGET_MB).
DECODE_BUDGET_BYTES = int(os.environ.get("CAPTIONER_DECODE_BUDGET_MB") or 512) * 1024 * 1024
TRIM_AFTER_BYTES = 32 * 1024 * 1024  # decodes at least this large hand freed memory back afterwards
PILLOW_BLOCK_BYTES = 64 * 1024 * 1024  # Pillow's pixel blocks from the first large decode on (see above)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray
Preprocessor = Callable[[Image.Image], torch.Tensor]


class ByteSemaphore:
    """A semaphore counted in bytes: ``hold(n)`` waits until ``n`` more bytes fit under ``capacity``.

    A request larger than the whole capacity waits until nothing else is held, then runs alone.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 byte, got {capacity}")
        self.capacity = capacity
        self.in_use = 0  # bytes held now
        self.peak = 0  # most bytes held at once so far
        self._condition = threading.Condition()

    @contextmanager
    def hold(self, size: int) -> Iterator[None]:
        size = max(0, min(int(size), self.capacity))
        with self._condition:
            self._condition.wait_for(lambda: self.in_use + size <= self.capacity)
            self.in_use += size
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._condition:
                self.in_use -= size
                self._condition.notify_all()


DECODE_MEMORY = ByteSemaphore(DECODE_BUDGET_BYTES)


def load_image(
    source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES,
    min_side: int | None = None,
) -> Image.Image:
    """Return ``source`` as a new RGB image (EXIF orientation applied, first frame only).

    ``min_side``: when given, an image whose shorter side is at least twice this is decoded or
    reduced by a whole factor to a shorter side of no less than ``min_side`` (a model that resizes
    to ``r`` loses nothing visible with ``min_side=2 * r``). None keeps the full size.

    Raises ``ImageError`` for missing, empty, oversized, non-image, truncated or corrupt input.
    """
    if min_side is not None and (isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 1):
        raise ValueError(f"min_side must be a whole number of at least 1, got {min_side!r}")
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels)
        return _bounded_decode(source, min_side, owned=False)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(os.fspath(source), max_bytes)
    else:
        raise ImageError(f"unsupported image input of type {type(source).__name__}")
    if not data:
        raise ImageError("empty file")
    if len(data) > max_bytes:
        raise ImageError(f"file too large: {_mb(len(data))} (limit {_mb(max_bytes)})")
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    # PIL only warns between its own MAX_IMAGE_PIXELS (89M) and twice that; with the default
    # max_pixels those images are refused by _check_size below. Above twice, PIL refuses:
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "too many pixels"
        raise ImageError(f"image is too large: {size} (limit {max_pixels})") from exc
    except Image.UnidentifiedImageError as exc:
        if data.startswith(_SIGNATURES) or data[8:12] == b"WEBP":
            raise ImageError("truncated or corrupt image") from exc
        raise ImageError(f"not an image ({_describe(data)})") from exc
    except Exception as exc:  # a recognised header that its plugin cannot parse
        raise ImageError("truncated or corrupt image") from exc
    _check_size(image.size, max_pixels)
    return _bounded_decode(image, min_side, owned=True)


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from an image's header (nothing is decoded), or None when the header
    is not one of an accepted format."""
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            return image.size
    except Exception:  # noqa: BLE001 - load_image says what is wrong with it
        return None


def decoded_bytes(size: tuple[int, int], mode: str, *, reduced: bool = False) -> int:
    """Pixel memory that decoding an image of this size and mode holds at its peak, about.

    Pillow keeps one byte per pixel for 1-bit, greyscale and palette images, two for 16-bit
    greyscale and four for everything else (RGB included). Reduction works band by band, so it
    adds little; without it the conversions to RGB make full-size copies (counted as two more
    4-byte images).
    """
    per_pixel = 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4
    return size[0] * size[1] * (per_pixel + (0 if reduced else 8))


def _bounded_decode(image: Image.Image, min_side: int | None, owned: bool) -> Image.Image:
    """Decode under ``DECODE_MEMORY``: reduced early when ``min_side`` allows, then RGB.
    ``owned``: the image was opened here, so its full-size pixels are freed as soon as possible."""
    reduces = min_side is not None and min(image.size) >= 2 * min_side
    if reduces and owned and image.format in ("JPEG", "MPO") and getattr(image, "tile", None):
        try:
            image.draft(image.mode, (min_side, min_side))  # DCT scaling, never below min_side
        except (OSError, ValueError):
            pass
        reduces = min(image.size) >= 2 * min_side
    need = decoded_bytes(image.size, image.mode, reduced=reduces)
    if need >= TRIM_AFTER_BYTES:
        _use_large_pixel_blocks()
    try:
        with DECODE_MEMORY.hold(need):
            _load(image)
            small = _reduce(image, min_side) if reduces else image
            if owned and small is not image:
                image.close()  # frees the full-size pixels now, not when the caller's frame ends
            # An image opened here is turned and converted in place of copies; the caller's is copied.
            result = _to_rgb(_transpose(small, in_place=owned), copy=False)
            if owned and result is not small:
                small.close()
            return result
    finally:
        if need >= TRIM_AFTER_BYTES:
            release_free_memory()


_REDUCE_BAND_BYTES = 2 * 1024 * 1024  # pixels converted at once while reducing (small: see the module notes)


def _reduce(image: Image.Image, min_side: int) -> Image.Image:
    """Shrink by the largest whole factor that keeps the shorter side at least ``min_side``.

    Works in horizontal bands: Pillow's reduce (and any mode conversion it needs, such as
    premultiplying alpha) would otherwise copy the whole full-size image first.
    """
    factor = min(image.size) // min_side
    if factor < 2:
        return image
    width, height = image.size
    rows = max(1, _REDUCE_BAND_BYTES // (width * 4 * factor)) * factor
    out: Image.Image | None = None
    for top in range(0, height, rows):
        band = _reducible(image.crop((0, top, width, min(height, top + rows))))
        try:
            small = band.reduce(factor)
        except ValueError:  # a mode Pillow cannot reduce: a box-filtered resize does the same job
            small = band.resize((-(-band.width // factor), -(-band.height // factor)), Image.Resampling.BOX)
        if out is None:
            out = Image.new(small.mode, (small.width, -(-height // factor)))
        out.paste(small, (0, top // factor))
    assert out is not None  # noqa: S101 - height >= 2 * min_side > 0
    out.info = dict(image.info)  # EXIF orientation and transparency travel with the pixels
    return out


def _reducible(image: Image.Image) -> Image.Image:
    """``image`` in a mode that Pillow can average (1-bit, palette and 16-bit modes cannot be)."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if image.has_transparency_data else "RGB")
    if image.mode.startswith("I;16"):
        return image.convert("I")
    return image


_LIBC: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: not glibc
_LARGE_BLOCKS = False


def _glibc() -> ctypes.CDLL | None:
    global _LIBC
    if _LIBC is False:
        _LIBC = None
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                _LIBC = libc
            except (OSError, AttributeError):
                _LIBC = None
    return _LIBC


def release_free_memory() -> bool:
    """Hand memory that the C allocator keeps after frees back to the system (glibc's
    ``malloc_trim``). Returns False where that is not available (other C libraries)."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def _use_large_pixel_blocks() -> None:
    """Allocate Pillow's pixel memory in blocks of ``PILLOW_BLOCK_BYTES`` (once per process)."""
    global _LARGE_BLOCKS
    if not _LARGE_BLOCKS:
        _LARGE_BLOCKS = True
        if Image.core.get_block_size() < PILLOW_BLOCK_BYTES:
            Image.core.set_block_size(PILLOW_BLOCK_BYTES)


def _read_file(path: str, max_bytes: int) -> bytes:
    if not os.path.exists(path):
        raise ImageError(f"file not found: {path}")
    if not os.path.isfile(path):
        raise ImageError(f"not a file: {path}")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ImageError(f"file too large: {_mb(size)} (limit {_mb(max_bytes)})")
    try:
        with open(path, "rb") as handle:
            return handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 100 * 1024 else f"{n} bytes"


def _describe(data: bytes) -> str:
    """Say what a file that is not an image seems to be."""
    head = data[:1024].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "it is a PDF document"
    if b"<svg" in head:
        return "it is an SVG drawing; only raster images are supported"
    if head.startswith(b"<!doctype html") or b"<html" in head:
        return "it is an HTML page"
    try:
        head.decode("utf-8")
        is_text = b"\x00" not in head
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end still counts
        is_text = exc.start >= len(head) - 3 and b"\x00" not in head
    return "it is a text file" if is_text else "unrecognised or unsupported file format"


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size: {width} x {height} pixels")
    if width * height > max_pixels:
        raise ImageError(f"image is too large: {width} x {height} pixels (limit {max_pixels})")


def _load(image: Image.Image) -> None:
    """Fully decode, surfacing truncation as ``ImageError``."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image is too large ({exc})") from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, EOFError, ValueError...
        raise ImageError("truncated or corrupt image") from exc


def _transpose(image: Image.Image, in_place: bool = False) -> Image.Image:
    """Apply EXIF orientation: to ``image`` itself when ``in_place``, else to a new copy."""
    try:
        if in_place:
            ImageOps.exif_transpose(image, in_place=True)
            return image
        return ImageOps.exif_transpose(image)  # a transposed copy, or a plain copy
    except Exception:  # unreadable EXIF data: keep the pixels as stored
        return image if in_place else image.copy()


def _to_rgb(image: Image.Image, copy: bool) -> Image.Image:
    """``image`` as RGB: converted, or itself when it is RGB already (a copy with ``copy``)."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float: scale, don't clip
        image = Image.fromarray(_scale_wide(np.asarray(image)))
    if image.has_transparency_data:
        try:
            rgba = image.convert("RGBA")
        except ValueError as exc:
            raise ImageError(f"unsupported image mode {mode}") from exc
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image.copy() if copy else image
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"unsupported image mode {mode}") from exc


def _scale_wide(values: np.ndarray) -> np.ndarray:
    """Integers in 0..65535 (16-bit data) and floats in [0, 1] map onto 0..255; other ranges
    are stretched from their minimum to their maximum."""
    is_float = np.issubdtype(values.dtype, np.floating)
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if is_float and 0 <= low and high <= 1:
        scaled = values * 255.0
    elif not is_float and 0 <= low and high <= 65535:
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / (high - low) if high > low else 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays of uint8, uint16, bool or floats in [0, 1]."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(
            f"unsupported array shape {array.shape}: expected H x W, H x W x 1, 3 or 4"
        )
    _check_size((array.shape[1], array.shape[0]), max_pixels)
    if array.dtype == np.uint8:
        pixels = array.copy()
    elif array.dtype == np.bool_:
        pixels = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        pixels = np.rint(array / 257.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageError("float image arrays must hold finite values in [0, 1]")
        pixels = np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageError(
            f"unsupported array dtype {array.dtype}: expected uint8, uint16, bool or float"
        )
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), copy=True)  # fromarray may share the array


def _limit_aspect(image: Image.Image, max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Centre-crop the long side of a very elongated image to ``max_aspect`` times its short side.

    The later shorter-side resize and centre crop keep only the middle of such an image
    anyway, so the crop changes no output pixel that matters, while a 10000 x 10 strip no
    longer becomes a 256000 x 256 intermediate image.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long <= short * max_aspect:
        return image
    keep = max(1, round(short * max_aspect))
    if width > height:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))


RESIZE_MODES = ("shorter_side", "squash")
SQUASH_MIN_SIDE = 2048
RESAMPLE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
                    "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


def build_preprocessor(
    resize: int, crop: int, mean: Sequence[float], std: Sequence[float], *,
    resize_mode: str = "shorter_side", resample: str = "bilinear",
) -> Preprocessor:
    """RGB image -> normalised float tensor of shape 3 x crop x crop.

    ``shorter_side``: shorter side to ``resize``, centre crop ``crop`` (torchvision's ``Resize`` +
    ``CenterCrop``). ``squash``: the whole image resized to ``crop`` x ``crop`` (the classic tutorial's
    ``sample.py``). Then ``(x - mean) / std`` on [0, 1] values, as ``ToTensor`` + ``Normalize``.
    Written with PIL and torch directly: importing torchvision costs seconds of start-up that a
    one-shot command line call would otherwise pay.

    The function's ``min_side`` attribute is what ``load_image`` may decode an image down to
    (``prepare_pixels`` does): twice the side a shorter-side resize goes to, with no visible change
    in the output. ``squash`` (the tutorial's preprocessing, kept exact) reduces only images whose
    shorter side is at least ``2 * SQUASH_MIN_SIDE``: every camera photo up to about 16 MP is
    resized from its full size, as ``sample.py`` does.
    """
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"resample must be one of {tuple(RESAMPLE_FILTERS)}, got {resample!r}")
    method = RESAMPLE_FILTERS[resample]
    # numpy, not torch: the same float32 arithmetic as ToTensor + Normalize (bit for bit), on the calling
    # thread, where torch's ops on a tensor this size wake its thread pool, which then competes with
    # ONNX Runtime's for the cores (benchmarks/onnx_threads.py).
    mean_np = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    std_np = np.asarray(std, np.float32).reshape(-1, 1, 1)

    def preprocess(image: Image.Image) -> torch.Tensor:
        image = image if image.mode == "RGB" else image.convert("RGB")
        if resize_mode == "squash":
            if image.size != (crop, crop):
                image = image.resize((crop, crop), method)
        else:
            image = _limit_aspect(image)
            width, height = image.size
            short, long = min(width, height), max(width, height)
            new_long = int(resize * long / short)
            size = (resize, new_long) if width <= height else (new_long, resize)
            image = _resized_centre_crop(image, size, crop, method)
        pixels = np.asarray(image, np.uint8).transpose(2, 0, 1).astype(np.float32, order="C")
        pixels /= 255
        pixels -= mean_np
        pixels /= std_np
        return torch.from_numpy(pixels)

    preprocess.min_side = SQUASH_MIN_SIDE if resize_mode == "squash" else 2 * resize  # type: ignore[attr-defined]
    return preprocess


def preprocessor_for(config) -> Preprocessor:
    """The preprocessing a model's ``ModelConfig`` records."""
    return build_preprocessor(config.resize, config.image_size, config.mean, config.std,
                              resize_mode=config.resize_mode, resample=config.resample)


def _resized_centre_crop(image: Image.Image, size: tuple[int, int], crop: int, method: int) -> Image.Image:
    """The centre ``crop`` x ``crop`` of ``image`` resized to ``size``, resampling only the source region
    that the crop keeps (Pillow's ``box``): half the work of resizing the whole image for a 3:2 photo,
    and the same pixels give or take one level in about one value in 10,000 (where the filter's
    coordinates round differently)."""
    if size == image.size or crop > min(size):
        return _centre_crop(image if size == image.size else image.resize(size, method), crop)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    scale_x, scale_y = image.width / size[0], image.height / size[1]
    box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
    return image.resize((crop, crop), method, box=box)


def _centre_crop(image: Image.Image, size: int) -> Image.Image:
    """A ``size`` x ``size`` centre crop; a side shorter than ``size`` is padded with black."""
    width, height = image.size
    left = int(round((width - size) / 2.0)) if width >= size else -((size - width) // 2)
    top = int(round((height - size) / 2.0)) if height >= size else -((size - height) // 2)
    return image.crop((left, top, left + size, top + size))


def load_for(source: ImageSource, preprocess: Preprocessor) -> Image.Image:
    """``load_image(source)`` decoded only as large as ``preprocess`` needs (its ``min_side``, if it
    has one): the image that ``prepare_pixels`` preprocesses. Raises ``ImageError``."""
    return load_image(source, min_side=getattr(preprocess, "min_side", None))


def prepare_pixels(source: ImageSource, preprocess: Preprocessor) -> torch.Tensor | str:
    """``preprocess(load_for(source, preprocess))``, or the message saying why that image cannot be
    used. Large images are decoded only as large as ``preprocess`` needs."""
    try:
        return preprocess(load_for(source, preprocess))
    except ImageError as error:
        return str(error)


def load_pixels(sources: Sequence[ImageSource], preprocess: Preprocessor, pool: Executor | None = None
                ) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """Load and preprocess every source once (``pool`` decodes in parallel):
    ``(batch of the usable ones, their indices, (index, why) for the others)``."""
    results = list(pool.map(lambda source: prepare_pixels(source, preprocess), sources) if pool else
                   (prepare_pixels(source, preprocess) for source in sources))
    kept = [i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    failures = [(i, r) for i, r in enumerate(results) if isinstance(r, str)]
    batch = torch.from_numpy(np.stack([results[i].numpy() for i in kept])) if kept else None  # numpy: see build_preprocessor
    return batch, kept, failures
