"""From a decoded image to the model's input tensor, and the geometry that mapping follows.

``build_preprocessor`` resizes and crops (or squashes) as the model's config says and normalises;
``crop_geometry`` says where each pixel of the original lies in the model's input, for the
preprocessor and for explanations that lay their maps back onto the photo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from captioner.core.errors import ImageError
from captioner.core.images.decode import ImageSource, load_image

MAX_ASPECT = 4.0  # see crop_geometry
Preprocessor = Callable[..., torch.Tensor]  # (image, out=None): see build_preprocessor


@dataclass(frozen=True)
class CropGeometry:
    """How an image of some size becomes the model's square input.

    ``box`` (left, top, right, bottom) is the part of the original kept: all of it, or the middle
    of a very elongated image (see ``crop_geometry``); that part is resized to ``resized`` (width,
    height), and the model sees the ``crop`` x ``crop`` square at ``start`` (x, y) in it."""

    box: tuple[int, int, int, int]
    resized: tuple[int, int]
    start: tuple[int, int]
    crop: int

    def axis(self, index: int) -> tuple[float, float, float]:
        """For x (0) or y (1): (offset in the original, scale to the resized image, crop start), so that
        a position ``p`` in the original lies at ``(p - offset) * scale - start`` in the model's input."""
        low, high = self.box[index], self.box[index + 2]
        return float(low), self.resized[index] / (high - low), float(self.start[index])


def crop_geometry(size: tuple[int, int], resize: int, crop: int, resize_mode: str = "shorter_side") -> CropGeometry:
    """Where the model's input comes from in an image of ``size`` (width, height).

    ``squash``: the whole image resized to ``crop`` x ``crop``. ``shorter_side``: the shorter side
    resized to ``resize``, then the centre ``crop`` x ``crop``. An image whose long side is more than
    ``MAX_ASPECT`` times its short side keeps only the middle of its long side first: the centre crop
    keeps only the middle anyway, and a 10000 x 10 strip never becomes a 256000 x 256 intermediate."""
    width, height = size
    if resize_mode == "squash":
        return CropGeometry((0, 0, width, height), (crop, crop), (0, 0), crop)
    left, top, right, bottom = 0, 0, width, height
    short, long = min(width, height), max(width, height)
    if long > short * MAX_ASPECT:
        keep = max(1, round(short * MAX_ASPECT))
        if width > height:
            left = (width - keep) // 2
            right = left + keep
        else:
            top = (height - keep) // 2
            bottom = top + keep
    width, height = right - left, bottom - top
    short, long = min(width, height), max(width, height)
    new_long = int(resize * long / short)
    resized = (resize, new_long) if width <= height else (new_long, resize)
    start = (int(round((resized[0] - crop) / 2.0)), int(round((resized[1] - crop) / 2.0)))
    return CropGeometry((left, top, right, bottom), resized, start, crop)


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

    def preprocess(image: Image.Image, out: np.ndarray | None = None) -> torch.Tensor:
        """``out``: a float32 array of shape (3, crop, crop) to normalise into (a row of a batch)."""
        image = image if image.mode == "RGB" else image.convert("RGB")
        if resize_mode == "squash":
            if image.size != (crop, crop):
                image = image.resize((crop, crop), method)
        else:
            image = _resized_centre_crop(image, crop_geometry(image.size, resize, crop), method)
        pixels = np.empty((3, crop, crop), np.float32) if out is None else out
        np.copyto(pixels, np.asarray(image, np.uint8).transpose(2, 0, 1))
        pixels /= 255
        pixels -= mean_np
        pixels /= std_np
        return torch.from_numpy(pixels)

    preprocess.min_side = SQUASH_MIN_SIDE if resize_mode == "squash" else 2 * resize  # type: ignore[attr-defined]
    preprocess.input_size = crop  # type: ignore[attr-defined]
    return preprocess


def preprocessor_for(config) -> Preprocessor:
    """The preprocessing a model's ``ModelConfig`` records."""
    return build_preprocessor(config.resize, config.image_size, config.mean, config.std,
                              resize_mode=config.resize_mode, resample=config.resample)


def _resized_centre_crop(image: Image.Image, geometry: CropGeometry, method: int) -> Image.Image:
    """The model's input square of ``image`` as ``geometry`` places it, resampling only the source
    region that the crop keeps (Pillow's ``box``, inside the whole image: an elongated photo's kept
    middle is never copied out first): half the work of resizing the whole image for a 3:2 photo,
    and the same pixels give or take one level in about one value in 10,000 (where the filter's
    coordinates round differently)."""
    left, top, right, bottom = geometry.box
    size, crop = geometry.resized, geometry.crop
    if size == (right - left, bottom - top) or crop > min(size):
        kept = image if geometry.box == (0, 0, *image.size) else image.crop(geometry.box)
        return _centre_crop(kept if size == kept.size else kept.resize(size, method), crop)
    scale_x, scale_y = (right - left) / size[0], (bottom - top) / size[1]
    start_x, start_y = geometry.start
    box = (left + start_x * scale_x, top + start_y * scale_y,
           left + (start_x + crop) * scale_x, top + (start_y + crop) * scale_y)
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
    """Load and preprocess every source once (``pool`` decodes in parallel), each normalised
    straight into its row of one batch: ``(batch of the usable ones, their indices, (index, why)
    for the others)``."""
    side = getattr(preprocess, "input_size", None)
    batch = np.empty((len(sources), 3, side, side), np.float32) if side else None

    def prepare(index: int) -> torch.Tensor | str:
        try:
            image = load_for(sources[index], preprocess)
            return preprocess(image, batch[index]) if batch is not None else preprocess(image)  # type: ignore[call-arg]
        except ImageError as error:
            return str(error)

    results = list(pool.map(prepare, range(len(sources))) if pool else map(prepare, range(len(sources))))
    kept = [i for i, r in enumerate(results) if isinstance(r, torch.Tensor)]
    failures = [(i, r) for i, r in enumerate(results) if isinstance(r, str)]
    if not kept:
        return None, kept, failures
    if batch is None:  # a preprocessor of another making: stacked (numpy: see build_preprocessor)
        return torch.from_numpy(np.stack([results[i].numpy() for i in kept])), kept, failures
    return torch.from_numpy(batch if len(kept) == len(sources) else batch[kept]), kept, failures
