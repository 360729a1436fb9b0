"""Image preparation (a JPEG's bytes to the model's input tensor) on real photos: the same steps
through Pillow alone, the library's path, and decodes at smaller sizes (candidates), with the
captions each one leads to. Prints a Markdown table of one run's measurements.

    python benchmarks/image_prep.py [--photos DIR] [--rounds 5] [--json results.json]

``--photos``: a real-photo set made by ``python -m captioner.build.photos DIR`` (made in a
temporary folder when not given). Each photo is prepared from the JPEG a camera would store
(quality 92; the set's JPEGs as they are), in memory, on one thread. Times are medians over
``--rounds`` interleaved rounds (each round prepares every photo by every path), so that a busy
machine slows every row alike; compare the ratios. Agreement: the bundled model's captions
(beam 3) of each path's tensors against those of the Pillow path; "bit-identical" compares the
tensors themselves.

Paths (the bundled model resizes the shorter side to 256 and crops 224):
- Pillow path: Pillow decodes (``draft`` to 1/2, 1/4 or 1/8 when the shorter side stays at least
  512), turns by EXIF, converts; the kept region is copied out, resized and normalised through
  ``astype`` and a stack.
- library path: ``prepare_pixels``: simplejpeg (the same libjpeg-turbo, the same scales), the resize
  reads the kept region in place, normalised straight into the batch row.
- the candidates: DCT scaling in eighths (libjpeg-turbo's 1/8 to 7/8) to a shorter side of at least
  twice the resize (512) or twice the crop (448), and halves to 448.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from captioner.core.images import convert  # noqa: E402
from captioner.core.images.decode import load_image  # noqa: E402
from captioner.core.images.preprocess import build_preprocessor, crop_geometry, prepare_pixels  # noqa: E402
from captioner.core.inference import load_captioner  # noqa: E402
from captioner.core.options import DecodeOptions  # noqa: E402
from tables import Table, cpu_name  # noqa: E402

RESIZE, CROP = 256, 224


def jpeg_photos(folder: Path) -> list[tuple[str, bytes]]:
    """Every photo of a real-photo set as JPEG bytes (JPEGs as they are, others re-encoded at quality 92)."""
    found = []
    for path in sorted((folder / "photos").rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg"):
            found.append((path.name, path.read_bytes()))
        elif path.suffix.lower() in (".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"):
            buffer = io.BytesIO()
            with Image.open(path) as image:
                convert.to_rgb(image.convert("RGBA") if image.mode == "P" else image).save(buffer, "JPEG", quality=92)
            found.append((path.stem + ".jpg", buffer.getvalue()))
    return found


def pillow_path(mean: np.ndarray, std: np.ndarray) -> Callable[[bytes], torch.Tensor]:
    """The same steps through Pillow alone: decode (``draft``), turn, convert, copy the kept region out,
    resize, normalise through ``astype`` and a stack."""
    min_side = 2 * RESIZE

    def prepare(data: bytes) -> torch.Tensor:
        image = Image.open(io.BytesIO(data))
        if min(image.size) >= 2 * min_side:
            image.draft(image.mode, (min_side, min_side))
        image.load()
        if min(image.size) >= 2 * min_side:
            image = convert.reduce(image, min(image.size) // min_side)
        ImageOps.exif_transpose(image, in_place=True)
        image = image.convert("RGB")
        geometry = crop_geometry(image.size, RESIZE, CROP)
        if geometry.box != (0, 0, *image.size):
            image = image.crop(geometry.box)
        size = geometry.resized
        left, top = int(round((size[0] - CROP) / 2.0)), int(round((size[1] - CROP) / 2.0))
        scale_x, scale_y = image.width / size[0], image.height / size[1]
        box = (left * scale_x, top * scale_y, (left + CROP) * scale_x, (top + CROP) * scale_y)
        image = image.resize((CROP, CROP), Image.Resampling.BILINEAR, box=box)
        pixels = np.asarray(image, np.uint8).transpose(2, 0, 1).astype(np.float32, order="C")
        pixels /= 255
        pixels -= mean
        pixels /= std
        return torch.from_numpy(np.stack([pixels])[0])

    return prepare


def eighths(preprocess: Callable, side: int) -> Callable[[bytes], torch.Tensor]:
    """simplejpeg at the smallest of its scales (eighths) that keeps the shorter side at least ``side``."""

    def prepare(data: bytes) -> torch.Tensor:
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=side, min_width=side)
        image = Image.fromarray(pixels)
        turn = convert.orientation(Image.open(io.BytesIO(data)))
        return preprocess(convert.transposed(image, turn))

    return prepare


def halves(preprocess: Callable, side: int) -> Callable[[bytes], torch.Tensor]:
    return lambda data: preprocess(load_image(data, min_side=side))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="a real-photo set (python -m captioner.build.photos DIR)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the tables as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.photos
        if folder is None:
            folder = Path(tmp) / "photos"
            subprocess.run([sys.executable, "-m", "captioner.build.photos", str(folder)], check=True, cwd=ROOT)
        photos = jpeg_photos(folder)
    captioner = load_captioner(None, "cpu", backend="torch")
    config = captioner.config
    assert (config.resize, config.image_size, config.resize_mode) == (RESIZE, CROP, "shorter_side"), config
    preprocess = build_preprocessor(RESIZE, CROP, config.mean, config.std)
    mean, std = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in (config.mean, config.std))
    paths = {
        "Pillow path: Pillow decodes (draft in halves to >= 512), kept region copied, astype + stack":
            pillow_path(mean, std),
        "library path: simplejpeg at the same scales, resize in place, into the batch row":
            lambda data: prepare_pixels(data, preprocess),
        "candidate: simplejpeg in eighths to >= 512 (2 x resize)": eighths(preprocess, 2 * RESIZE),
        "candidate: simplejpeg in eighths to >= 448 (2 x crop)": eighths(preprocess, 2 * CROP),
        "candidate: halves to >= 448 (2 x crop)": halves(preprocess, 2 * CROP),
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    tensors: dict[str, list[torch.Tensor]] = {}
    for name, prepare in paths.items():  # an untimed round, which also keeps every tensor
        tensors[name] = [prepare(data) for _, data in photos]
    for round_index in range(args.rounds):
        order = list(paths)[round_index % len(paths):] + list(paths)[:round_index % len(paths)]
        for name in order:
            started = time.process_time()
            for _, data in photos:
                paths[name](data)
            times[name].append((time.process_time() - started) / len(photos))
    captions = {}
    for name, batch in tensors.items():
        found = []
        for start in range(0, len(batch), 16):
            pixels = torch.stack(batch[start:start + 16])
            found += [r.caption for r in captioner.pipeline.caption_batch(pixels, DecodeOptions())]
        captions[name] = found
    reference = next(iter(paths))
    sides = [min(Image.open(io.BytesIO(data)).size) for _, data in photos]
    table = Table(f"Image preparation per photo, {len(photos)} real photos as JPEG (process CPU time, median of "
                  f"{args.rounds} interleaved rounds, one thread)",
                  ["path", "ms per photo", "x Pillow path", "tensors bit-identical to the Pillow path",
                   "captions identical to the Pillow path"])
    for name in paths:
        median = statistics.median(times[name])
        same = sum(torch.equal(a, b) for a, b in zip(tensors[name], tensors[reference]))
        agree = sum(a == b for a, b in zip(captions[name], captions[reference]))
        table.rows.append([name, round(median * 1000, 2), round(median / statistics.median(times[reference]), 2),
                           f"{same} / {len(photos)}", f"{agree} / {len(photos)}"])
    table.notes.append(f"shorter sides: {sum(s < 448 for s in sides)} photos under 448 px, "
                       f"{sum(448 <= s < 1024 for s in sides)} from 448 to 1023, {sum(s >= 1024 for s in sides)} "
                       f"of 1024 or more (decoded at 1/2 or less on both the Pillow and the library path)")
    table.notes.append(f"machine: {cpu_name()}; bundled model, torch backend for the captions")
    print(table.markdown())
    if args.json:
        args.json.write_text(json.dumps({"title": table.title, "headers": table.headers, "rows": table.rows,
                                         "notes": table.notes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
