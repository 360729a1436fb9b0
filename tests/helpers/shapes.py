"""A small captioned image set for training tests: rendered shapes with template captions.

Each image shows one shape (circle, square, triangle) in one colour (red, green, blue, yellow)
at one place (left, right, top, bottom) on a noisy light background; each has three captions
phrased differently. Everything is drawn from a seed, so the set is the same on every run.
"""

from __future__ import annotations

import csv
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from captioner.training.datasets import CaptionedImage

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
PLACES = {"left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3), "bottom": (0.5, 0.7)}
COMBINATIONS = list(product(SHAPES, COLOURS, PLACES))  # 48


def captions_for(shape: str, colour: str, place: str) -> list[str]:
    return [f"a {colour} {shape} on the {place}",
            f"a {colour} {shape} at the {place} of the picture",
            f"there is a {colour} {shape} on the {place} side"]


def render(shape: str, colour: str, place: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    background = rng.integers(200, 250, size=3)
    pixels = np.clip(background + rng.normal(0, 8, size=(size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    cx, cy = (np.array(PLACES[place]) + rng.uniform(-0.04, 0.04, 2)) * size
    r = rng.uniform(0.13, 0.17) * size
    fill = tuple(int(v) for v in np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 21, 3), 0, 255))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    return image


def make_shapes(folder: Path, per_combination: int = 6, seed: int = 0,
                splits: tuple[str, ...] = ("train", "train", "train", "train", "val", "test")) -> list[CaptionedImage]:
    """``per_combination`` images of each of the 48 scenes; the i-th copy gets ``splits[i % len]``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for copy in range(per_combination):
        for shape, colour, place in COMBINATIONS:
            name = f"{shape}-{colour}-{place}-{copy}.png"
            render(shape, colour, place, rng).save(folder / name)
            items.append(CaptionedImage(folder / name, captions_for(shape, colour, place),
                                        splits[copy % len(splits)], name))
    return items


def write_csv(items: list[CaptionedImage], path: Path, with_split: bool = True) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "caption", "split"] if with_split else ["image", "caption"])
        for item in items:
            for caption in item.captions:
                row = [item.image_path.name, caption]
                writer.writerow([*row, item.split] if with_split else row)
    return path
