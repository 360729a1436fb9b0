"""What ``no_repeat_ngram`` does to a model's captions: repeated n-grams and caption scores.

    python benchmarks/no_repeat_ngram.py                 # the bundled model
    python benchmarks/no_repeat_ngram.py --model DIR     # any model

Captions the photos in ``examples/`` and the 17 photos of the test caption set
(``tests/data``: the examples plus scikit-image's photos, all three captions of each as the
references) with greedy and beam-3 decoding, blocking nothing (0) or any repeated 2- or 3-gram.
Prints, per setting, how many captions and beam candidates repeat a bigram, the scores
without Java, and the example photos' captions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.core.captions import caption_features  # noqa: E402
from captioner.core.inference import load_captioner
from captioner.core.options import DecodeOptions  # noqa: E402
from captioner.training.evaluation import score_captions  # noqa: E402


def repeats(caption: str, n: int = 2) -> bool:
    words = caption.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)


def test_set() -> tuple[list[Path], dict[str, list[str]]]:
    import skimage

    folders = {"examples": ROOT / "examples", "skimage": Path(os.path.dirname(skimage.__file__)) / "data"}
    train = json.loads((ROOT / "tests/data/captions_train.json").read_text())
    val = json.loads((ROOT / "tests/data/captions_val.json").read_text())
    paths, references = [], {}
    for image in train["images"]:
        folder, name = image["file_name"].split("/", 1)
        paths.append(folders[folder] / name)
        references[str(len(paths) - 1)] = [a["caption"] for a in train["annotations"] + val["annotations"]
                                           if a["image_id"] == image["id"]]
    return paths, references


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    captioner = load_captioner(args.model, "cpu")
    examples = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix == ".jpg")
    paths, references = test_set()
    features = {}
    for name, files in (("examples", examples), ("test set", paths)):
        pixels = torch.stack([captioner.pipeline.prepare(p) for p in files])
        features[name] = captioner.pipeline.features(pixels)
    print(f"model: {captioner.loaded.source}\n")
    print("| decoding | no_repeat_ngram | example captions repeating a bigram | beam candidates repeating a "
          "bigram | test-set BLEU-4 | test-set CIDEr |")
    print("|---|---|---|---|---|---|")
    shown = {}
    for beam in (1, 3):
        for n in (0, 2, 3):
            options = DecodeOptions(beam_size=beam, no_repeat_ngram=n, top_classes=0)
            results = caption_features(captioner.model, captioner.vocab, features["examples"], options)
            tested = caption_features(captioner.model, captioner.vocab, features["test set"], options)
            candidates = [c.caption for r in results + tested for c in r.candidates]
            scores = score_captions(references, {str(i): r.caption for i, r in enumerate(tested)}, use_java=False)
            print(f"| {'greedy' if beam == 1 else f'beam-{beam}'} | {n} | "
                  f"{sum(repeats(r.caption) for r in results)} of {len(results)} | "
                  f"{sum(map(repeats, candidates))} of {len(candidates)} | {scores['BLEU-4']:.4f} | "
                  f"{scores['CIDEr']:.4f} |")
            shown[(beam, n)] = [r.caption for r in results]
    print()
    for (beam, n), captions in shown.items():
        print(f"## {'greedy' if beam == 1 else f'beam-{beam}'}, no_repeat_ngram={n}")
        for path, caption in zip(examples, captions):
            print(f"- {path.name}: {caption}")


if __name__ == "__main__":
    main()
