"""Do the torch and ONNX Runtime backends write the same captions? A table from one run.

    python benchmarks/onnx_agreement.py                 # the bundled model
    python benchmarks/onnx_agreement.py --model DIR

Photos: the shipped examples, the real photos bundled with scikit-image and matplotlib, and
generated variations of each (crops, flips, rotations, colour changes): well over 50 in all.
Every photo is captioned greedily and with beam 3 by both backends of the same model; any
caption that differs is listed with both scores, and the largest score difference is reported.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.core.inference import Captioner  # noqa: E402
from captioner.core.repository.storage import load_model  # noqa: E402

EXAMPLES = ROOT / "examples"
# scikit-image's photographs that ship inside the package (no download); horse, logo and the like are drawings.
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "moon", "clock", "brick", "grass", "gravel", "page", "text")


def base_photos() -> Iterator[tuple[str, Image.Image]]:
    """The shipped examples, then scikit-image's and matplotlib's bundled photos, as RGB images."""
    for path in sorted(EXAMPLES.glob("*.jpg")):
        with Image.open(path) as image:
            yield f"examples/{path.name}", image.convert("RGB")
    import skimage.data

    for name in SKIMAGE_PHOTOS:
        yield f"skimage {name}", Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
    yield "skimage stereo_motorcycle", Image.fromarray(skimage.data.stereo_motorcycle()[0]).convert("RGB")
    try:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
            yield "matplotlib grace_hopper", Image.open(file).convert("RGB")
    except (ImportError, OSError, ValueError):
        pass


def variations(image: Image.Image, index: int) -> list[tuple[str, Image.Image]]:
    """Four generated versions of a photo; ``index`` varies which ones, so the set covers more kinds."""
    width, height = image.size
    crop = {0: (0, 0, width * 2 // 3, height * 2 // 3), 1: (width // 3, height // 3, width, height),
            2: (width // 6, height // 6, width * 5 // 6, height * 5 // 6)}[index % 3]
    colour = [("grey", ImageOps.grayscale(image).convert("RGB")),
              ("brighter", ImageEnhance.Brightness(image).enhance(1.4)),
              ("desaturated", ImageEnhance.Color(image).enhance(0.3)),
              ("warm", Image.merge("RGB", [band.point(lambda v, f=f: min(255, int(v * f)))
                                           for band, f in zip(image.split(), (1.15, 1.0, 0.8))]))][index % 4]
    rotation = (90, 15, -20, 180)[index % 4]
    return [(f"crop {crop}", image.crop(crop)), ("mirrored", ImageOps.mirror(image)),
            (f"rotated {rotation}", image.rotate(rotation, expand=True, fillcolor=(128, 128, 128))), colour]


def real_photos() -> list[tuple[str, Image.Image]]:
    """Each base photo followed by its variations."""
    photos = []
    for index, (name, image) in enumerate(base_photos()):
        photos.append((name, image))
        photos += [(f"{name}, {what}", varied) for what, varied in variations(image, index)]
    return photos


def compare(source: str | None, photos: list[tuple[str, Image.Image]], beams: tuple[int, ...] = (1, 3),
            batch_size: int = 8) -> tuple[list[list], float, int]:
    """(rows for each differing caption, the largest score difference, captions compared)."""
    torch_captioner = Captioner(load_model(source, "cpu"), torch.device("cpu"), "torch")
    onnx_captioner = Captioner(load_model(source, "cpu"), torch.device("cpu"), "onnx", "fp32")
    differences, largest, compared = [], 0.0, 0
    for beam in beams:
        for start in range(0, len(photos), batch_size):
            chunk = photos[start:start + batch_size]
            images = [image for _, image in chunk]
            mine = torch_captioner(images, beam_size=beam)
            theirs = onnx_captioner(images, beam_size=beam)
            for (name, _), a, b in zip(chunk, mine, theirs):
                compared += 1
                score_a, score_b = a.candidates[0].score, b.candidates[0].score
                largest = max(largest, abs(score_a - score_b))
                if a.caption != b.caption:
                    differences.append([name, "greedy" if beam == 1 else f"beam {beam}", a.caption,
                                        round(score_a, 6), b.caption, round(score_b, 6)])
    return differences, largest, compared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory or owner/name (default: the bundled model)")
    args = parser.parse_args(argv)
    photos = real_photos()
    differences, largest, compared = compare(args.model, photos)
    print(f"{len(photos)} photos ({sum(', ' not in name for name, _ in photos)} originals), greedy and beam 3: "
          f"{compared} captions per backend, {len(differences)} differ; largest difference of the best "
          f"caption's score: {largest:.2e}\n")
    if differences:
        print("| photo | decoding | torch caption | torch score | onnx caption | onnx score |\n"
              "|---|---|---|---|---|---|")
        for row in differences:
            print("| " + " | ".join(str(cell) for cell in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
