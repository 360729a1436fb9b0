"""Inputs a classifier does not know: noise, a blank page, a page of text (drawn, not copied)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def odd_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    blank = Image.new("RGB", (400, 300), "white")
    page = Image.new("RGB", (600, 800), "white")
    draw = ImageDraw.Draw(page)
    for line in range(30):
        draw.text((30, 20 + 25 * line), f"Lorem ipsum dolor sit amet, consectetur adipiscing elit {line}", fill="black")
    return {"noise": noise, "blank": blank, "page of text": page}
