"""``caption`` (images and folders of them, as text or JSON lines, with word heatmaps on request) and
``score`` (the probability of each word of a given caption)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from captioner.cli.arguments import CANDIDATES, DECODING, MODEL, POSITIVE, command, load_settings
from captioner.core.files import IMAGE_SUFFIXES, image_files


def add_caption(sub) -> None:
    p = command(sub, "caption", run_caption, check=check_caption, parents=[MODEL, DECODING, CANDIDATES],
                help="caption images, or the images in folders",
                description="Caption each IMAGE, and the images in each folder given (by file suffix: "
                            f"{' '.join(IMAGE_SUFFIXES)}), in sorted order; -r looks in subfolders too.")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("-r", "--recursive", action="store_true", help="caption the images in subfolders of a folder too")
    p.add_argument("--batch-size", type=POSITIVE, default=8, help="images per forward pass (default 8)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--explain", metavar="DIR", default=None,
                   help="write each word's heatmap over the photo to DIR/NAME.NN-WORD.png (listed in --json); "
                        "DIR is made when missing")


def check_caption(args: argparse.Namespace) -> None:
    """Folders become the images in them; an ``--explain`` that names a file is refused."""
    images: list[str] = []
    for given in args.images:
        path = Path(given)
        if not path.is_dir():
            images.append(given)
            continue
        found = image_files(path, recursive=args.recursive)
        if not found:
            raise ValueError(f"the folder {given} holds no images ({' '.join(IMAGE_SUFFIXES)})"
                             + ("" if args.recursive else "; -r looks in its subfolders too"))
        images += [str(image) for image in found]
    args.images = images
    if args.explain is not None and Path(args.explain).exists() and not Path(args.explain).is_dir():
        raise ValueError(f"--explain {args.explain} is a file: name a folder for the heatmaps "
                         "(one that is missing is made)")


def run_caption(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from captioner.core.inference import load_captioner

    captioner = load_captioner(args.model, **load_settings(args))
    with tqdm(total=len(args.images), desc="captioning", unit="img", file=sys.stderr,
              disable=len(args.images) <= args.batch_size) as bar:
        results = captioner(args.images, args.decoding, errors="return", batch_size=args.batch_size,
                            progress=lambda done, total: bar.update(done - bar.n))
    show_names = len(args.images) > 1
    overlays = _explain_results(captioner, results, args) if args.explain else {}
    for index, result in enumerate(results):
        if args.json:
            print(json.dumps({**result.to_dict(), **overlays.get(index, {})}, ensure_ascii=False))
        elif result.error is None:
            print(f"{result.image}: {result.caption}" if show_names else result.caption)
        if result.error is not None:
            print(f"error: {result.image}: {result.error}", file=sys.stderr)
    return 1 if any(result.error is not None for result in results) else 0


def _explain_results(captioner, results, args: argparse.Namespace) -> dict[int, dict]:
    """Write the word heatmaps of every captioned image into ``args.explain``; per result index, the
    ``overlays`` entry ([{word, probability, path}]) its JSON line gets."""
    from tqdm import tqdm

    from captioner.core.explain.overlays import write_overlays

    done, stems = {}, set()
    captioned = [(i, r) for i, r in enumerate(results) if r.error is None]
    for index, result in tqdm(captioned, desc="explaining", unit="img", file=sys.stderr, disable=len(captioned) < 2):
        if not result.caption.split():  # an empty caption has no words to explain
            done[index] = {"overlays": []}
            continue
        explanation = captioner.explain(args.images[index], result.caption)
        stem = Path(args.images[index]).stem
        stem = stem if stem not in stems else f"{stem}-{index + 1}"  # two photos with one name
        stems.add(stem)
        paths = write_overlays(explanation, args.explain, stem)
        entries = [{"word": w.word, "probability": w.probability, "path": str(p)}
                   for w, p in zip(explanation.words, paths)]
        done[index] = {"overlays": entries}
    return done


def add_score(sub) -> None:
    p = command(sub, "score", run_score, parents=[MODEL],
                help="the probability the model gives each word of a caption for an image")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("caption", metavar="CAPTION", help='the caption to score, e.g. "a cat on a sofa"')
    p.add_argument("--json", action="store_true", help="one JSON object: words with probabilities, log_probability")


def run_score(args: argparse.Namespace) -> int:
    from captioner.core.inference import load_captioner

    captioner = load_captioner(args.model, **load_settings(args))
    scores = captioner.score(args.image, args.caption)
    log_probability = sum(math.log(max(s.probability, 1e-300)) for s in scores)
    if args.json:
        print(json.dumps({"image": args.image, "caption": " ".join(s.word for s in scores[:-1]),
                          "words": [s.to_dict() for s in scores], "log_probability": log_probability,
                          "model": captioner.loaded.source}, ensure_ascii=False))
        return 0
    for s in scores:
        print(f"{s.word}\t{s.probability:.4f}" + ("" if s.known else "\t(not in the vocabulary: scored as <unk>)"))
    print(f"log-probability {log_probability:.4f} (mean per token {log_probability / len(scores):.4f})")
    return 0
