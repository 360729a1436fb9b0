"""Are the per-word heatmaps faithful? The deletion test and the randomisation test, measured.

    python benchmarks/explain_faithfulness.py                # examples/ + scikit-image photos, with variations
    python benchmarks/explain_faithfulness.py --quick        # examples/ only, no variations
    python benchmarks/explain_faithfulness.py --grid docs/explain-grid.png   # also draw example maps

Deletion: for every word of the model's own caption, the 20% most heated pixels that the model sees are
replaced with the image's mean colour, and the word's probability (teacher-forced, given the words before
it) is compared with the intact image's; the baseline replaces 20% random pixels (mean of 3 draws). A
faithful map makes the probability fall more. A photo passes when its words' mean fall is larger.

Randomisation (Adebayo et al., 2018): the encoder's last block is re-initialised at random and the same
caption explained again. Spearman's rank correlation between the trained and the randomised maps (over the
pixels the model sees) must be clearly below the trained model's agreement with itself, measured between
the photo and a copy with faint noise added (sigma 3 of 255).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.core.explain.gradcam import visible_mask  # noqa: E402
from captioner.training.faithfulness import deletion_test, randomised_captioner, rank_correlation  # noqa: E402
from captioner.core.images.decode import load_image  # noqa: E402
from captioner.core.inference import load_captioner  # noqa: E402
from captioner.core.explain.overlays import overlay  # noqa: E402
from tables import Table  # noqa: E402

SKIMAGE_PHOTOS = ("clock", "coins", "hubble_deep_field", "immunohistochemistry", "retina", "moon")
STOP_WORDS = {"a", "an", "the", "of", "with", "on", "in", "and", "to", "at", "is", "its", "his", "her", "next"}


def photos(quick: bool) -> list[tuple[str, Image.Image]]:
    """(name, image): examples/*.jpg, then (unless ``quick``) scikit-image's other photos and the
    motorcycle, then variations of every one (mirrored, an off-centre crop, darker, turned)."""
    found = [(path.stem, load_image(path)) for path in sorted((ROOT / "examples").glob("*.jpg"))]
    if quick:
        return found
    import skimage.data

    found += [(name, load_image(getattr(skimage.data, name)())) for name in SKIMAGE_PHOTOS]
    found.append(("motorcycle", load_image(skimage.data.stereo_motorcycle()[0])))
    variations = []
    for name, image in found:
        width, height = image.size
        variations += [(f"{name} (mirrored)", image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
                       (f"{name} (crop)", image.crop((0, 0, int(width * 0.8), int(height * 0.8)))),
                       (f"{name} (darker)", Image.eval(image, lambda v: int(v * 0.7))),
                       (f"{name} (turned)", image.transpose(Image.Transpose.ROTATE_90))]
    return found + variations


def noisy(image: Image.Image, seed: int = 0) -> Image.Image:
    pixels = np.asarray(image, np.float32)
    pixels = pixels + np.random.default_rng(seed).normal(0, 3, pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def measure(model: str | None, quick: bool, seed: int = 0) -> dict:
    captioner = load_captioner(model, "cpu")
    randomised = randomised_captioner(model, "cpu", seed=seed)
    rows = []
    for name, image in photos(quick):
        explanation = captioner.explain(image)
        if not explanation.words:
            continue
        deletions = deletion_test(captioner, explanation, seed=seed)
        visible = visible_mask(explanation.image.size, captioner.config, explanation.words[0].heatmap.shape)
        again = captioner.explain(noisy(image, seed), explanation.caption)
        random_maps = randomised.explain(image, explanation.caption)
        rows.append({
            "name": name, "explanation": explanation, "random_maps": random_maps, "deletions": deletions,
            "self": [rank_correlation(a.heatmap, b.heatmap, visible) for a, b in zip(explanation.words, again.words)],
            "random": [rank_correlation(a.heatmap, b.heatmap, visible)
                       for a, b in zip(explanation.words, random_maps.words)]})
        print(f"{name}: {explanation.caption}", file=sys.stderr, flush=True)
    return {"captioner": captioner, "rows": rows}


def _mean(values) -> float:
    values = [v for v in values if not np.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


def tables(rows: list[dict]) -> list[Table]:
    deletion = Table("Deletion test: probability fall when 20% of the pixels are replaced",
                     ["Photos", "Words", "Fall, most heated", "Fall, random", "Ratio", "Photos where heated > random"])
    groups = [("examples/", [r for r in rows if "(" not in r["name"] and (ROOT / "examples" / f"{r['name']}.jpg").exists()]),
              ("scikit-image photos", [r for r in rows if "(" not in r["name"]
                                       and not (ROOT / "examples" / f"{r['name']}.jpg").exists()]),
              ("variations", [r for r in rows if "(" in r["name"]]),
              ("all", rows)]
    for label, group in groups:
        if not group:
            continue
        words = [d for r in group for d in r["deletions"]]
        heat, rand = _mean(d.heat_drop for d in words), _mean(d.random_drop for d in words)
        passed = sum(_mean(d.heat_drop for d in r["deletions"]) > _mean(d.random_drop for d in r["deletions"])
                     for r in group)
        deletion.rows.append([f"{label} ({len(group)})", len(words), heat, rand,
                              heat / rand if rand > 0 else float("nan"), f"{passed} of {len(group)}"])
    deletion.notes.append("Fall: the word's probability on the intact photo less its probability on the changed "
                          "one, averaged over the words; random: the mean of 3 draws.")
    randomisation = Table("Randomisation test: Spearman rank correlation of the maps",
                          ["Photos", "Words", "Trained vs itself (faint noise)", "Trained vs random last block",
                           "Words where random < self"])
    for label, group in groups:
        if not group:
            continue
        pairs = [(s, r) for row in group for s, r in zip(row["self"], row["random"])]
        lower = sum(1 for s, r in pairs if not np.isnan(s) and not np.isnan(r) and r < s)
        randomisation.rows.append([f"{label} ({len(group)})", len(pairs), _mean(s for s, _ in pairs),
                                   _mean(r for _, r in pairs), f"{lower} of {len(pairs)}"])
    randomisation.notes.append("Over the pixels the model sees; a map that is all zero (no positive evidence) "
                               "has no ranks and is left out.")
    return [deletion, randomisation]


def draw_grid(rows: list[dict], path: Path, height: int = 120, per_row: int = 4) -> None:
    """Each example photo, then up to ``per_row`` of its words' maps, then the randomised model's map of
    its last content word; labelled with the word and its probability."""
    chosen = [r for r in rows if "(" not in r["name"] and (ROOT / "examples" / f"{r['name']}.jpg").exists()]
    tiles_rows = []
    for row in chosen:
        explanation = row["explanation"]
        image = explanation.image
        width = max(1, round(image.width * height / image.height))
        content = [i for i, w in enumerate(explanation.words) if w.word not in STOP_WORDS][:per_row] or [0]
        tiles = [(image.resize((width, height)), "photo")]
        for i in content:
            word = explanation.words[i]
            tiles.append((overlay(image, word.heatmap).resize((width, height)), f"{word.word} {word.probability:.0%}"))
        last = content[-1]
        tiles.append((overlay(image, row["random_maps"].words[last].heatmap).resize((width, height)),
                      f"{explanation.words[last].word}: random block"))
        tiles_rows.append(tiles)
    label = 16
    grid_width = max(sum(t.width for t, _ in tiles) + 4 * len(tiles) for tiles in tiles_rows)
    grid = Image.new("RGB", (grid_width, len(tiles_rows) * (height + label + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for r, tiles in enumerate(tiles_rows):
        x, y = 0, r * (height + label + 4)
        for tile, text in tiles:
            grid.paste(tile, (x, y + label))
            draw.text((x + 2, y + 2), text, fill="black")
            x += tile.width + 4
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory or owner/name (default: the bundled model)")
    parser.add_argument("--quick", action="store_true", help="examples/ only, no variations")
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG grid of example words and maps here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = measure(args.model, args.quick, args.seed)
    for table in tables(result["rows"]):
        print(table.markdown() + "\n")
    if args.grid:
        draw_grid(result["rows"], args.grid)
        print(f"wrote {args.grid}", file=sys.stderr)


if __name__ == "__main__":
    main()
