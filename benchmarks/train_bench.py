"""Training throughput on this machine: feature extraction images/s and decoder training captions/s.

    python benchmarks/train_bench.py             # about 1-2 minutes on 2 CPU cores
    python benchmarks/train_bench.py --quick     # fewer images and captions
    python benchmarks/train_bench.py --device cuda
    python benchmarks/train_bench.py --threads 1  # on a machine busy with other work

Feature extraction runs ``features.extract_features`` end to end (read, hash, decode, resize,
backbone forward, cache write) on rendered 320 x 240 JPEG photos-to-be, into a fresh cache,
after one warm-up batch. EfficientNet-Lite0 has its packaged ImageNet weights; ResNet-152 (the
tutorial's encoder) has random weights: the cost is the same, the features are not.

Decoder training runs ``training.fit_decoder`` for one epoch on random backbone outputs and
random captions of COCO-like length (8-16 words), without the per-epoch metric; two sizes:
the tutorial's (ResNet-152 features, 256/512, a COCO-sized vocabulary) and the bundled model's
shape (1000 class values). Epoch estimates for COCO (414k captions, 123k images) and Flickr8k
(30k captions, 8k images) follow from the rates. Compare rows of one run: the machine's load
moves every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captioner.core.model.encoders import load_pretrained_weights  # noqa: E402
from captioner.training.features import extract_features  # noqa: E402
from captioner.core.model.network import ShowAndTell  # noqa: E402
from captioner.training.config import (FINE_TUNING, FROM_SCRATCH, NO_REGULARISATION,  # noqa: E402
                                       Regularisation, TrainConfig)
from captioner.training.fit import fit_decoder  # noqa: E402
from captioner.training.job import build_config  # noqa: E402
from captioner.core.model.vocabulary import SPECIAL_TOKENS, Vocabulary  # noqa: E402

COCO_CAPTIONS, COCO_IMAGES = 414_113, 123_287
FLICKR_CAPTIONS, FLICKR_IMAGES = 30_000, 8_000


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        pixels = (pixels // 64 * 64).astype(np.uint8)  # blocky, so JPEG decoding costs like a photo's
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def extraction_rate(backbone: str, batch_size: int, paths: list[Path], device: torch.device) -> float:
    model = ShowAndTell(build_config(10, backbone))
    if backbone != "resnet152":
        load_pretrained_weights(model.encoder.backbone, backbone)
    model.to(device).eval()
    with tempfile.TemporaryDirectory() as cache:
        extract_features(model, paths[:batch_size], cache, batch_size=batch_size, progress=False)  # warm-up
        began = time.perf_counter()
        result = extract_features(model, paths[batch_size:], cache, batch_size=batch_size, progress=False)
        seconds = time.perf_counter() - began
    return result.computed / seconds


def training_rate(feature_size: int, vocab_size: int, pairs: int, device: torch.device,
                  batch_size: int = 128, regularisation: Regularisation = NO_REGULARISATION) -> float:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(vocab_size - len(SPECIAL_TOKENS))]
    vocab = Vocabulary([*SPECIAL_TOKENS, *words])
    zipf = 1 / np.arange(1, len(words) + 1)
    zipf /= zipf.sum()
    captions = [[" ".join(rng.choice(words, size=rng.integers(8, 17), p=zipf))] for _ in range(pairs)]
    features = torch.from_numpy(rng.standard_normal((pairs, feature_size), dtype=np.float32))
    config = build_config(vocab_size, "resnet152" if feature_size == 2048 else "efficientnet-lite0",
                          "features" if feature_size != 1000 else "class_log_probs")
    torch.manual_seed(0)
    model = ShowAndTell(config)
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(epochs=1, batch_size=batch_size, lr_schedule="constant", device=str(device), metric=None,
                             progress=False, regularisation=regularisation)
        result = fit_decoder(model, vocab, features, captions, features[:256], captions[:256], Path(out) / "m", config)
    return result.history[0].captions_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs{load}")

    runs = [("efficientnet-lite0", 8), ("efficientnet-lite0", 32), ("resnet152", 8), ("resnet152", 16)]
    if device.type == "cuda":
        runs = [("efficientnet-lite0", 32), ("efficientnet-lite0", 128), ("resnet152", 32), ("resnet152", 128)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        images = make_images(Path(folder), 160 if device.type == "cuda" else (48 if args.quick else 72))
        for backbone, batch_size in runs:
            count = batch_size + max(2 * batch_size, 16 if args.quick else 32)
            if backbone == "resnet152" and device.type == "cpu":
                count = 2 * batch_size
            rows.append((backbone, batch_size, extraction_rate(backbone, batch_size, images[:count], device)))
    base = rows[0][2]
    print("\n## Feature extraction (extract_features end to end, fresh cache)\n")
    print("| backbone | batch | images/s | vs lite0 batch " f"{rows[0][1]} | COCO (123k images) | Flickr8k (8k) |")
    print("|---|---|---|---|---|---|")
    for backbone, batch_size, rate in rows:
        print(f"| {backbone} | {batch_size} | {rate:.1f} | {rate / base:.2f} | {COCO_IMAGES / rate / 3600:.1f} h | "
              f"{FLICKR_IMAGES / rate / 60:.0f} min |")

    pairs = 8192 if device.type == "cuda" else (768 if args.quick else 2048)
    shapes = [("tutorial: ResNet-152 features", 2048, 10_000), ("bundled: 1000 class values", 1000, 2_000)]
    results = [(name, training_rate(size, vocab, pairs, device)) for name, size, vocab in shapes]
    print(f"\n## Decoder training (fit_decoder, 1 epoch of {pairs} captions, batch 128, embed 256, hidden 512)\n")
    print("| model | vocabulary | captions/s | COCO epoch (414k captions) | Flickr8k epoch (30k) |")
    print("|---|---|---|---|---|")
    for (name, _, vocab), (_, rate) in zip(shapes, results):
        print(f"| {name} | {vocab} | {rate:.0f} | {COCO_CAPTIONS / rate / 60:.0f} min | "
              f"{FLICKR_CAPTIONS / rate / 60:.1f} min |")

    # The regularisation defaults (dropout, label smoothing, weight decay) against none, alternating.
    kinds = [("none", NO_REGULARISATION), ("fine-tuning defaults", FINE_TUNING), ("from-scratch defaults", FROM_SCRATCH)]
    rates: dict[str, list[float]] = {name: [] for name, _ in kinds}
    for _ in range(2):
        for name, regularisation in kinds:
            rates[name].append(training_rate(1000, 2_000, pairs, device, regularisation=regularisation))
    print(f"\n## Regularisation's cost (bundled shape, 1 epoch of {pairs} captions, best of 2 alternating runs)\n")
    print("| regularisation | settings | captions/s | vs none |")
    print("|---|---|---|---|")
    for name, regularisation in kinds:
        print(f"| {name} | {regularisation} | {max(rates[name]):.0f} | {max(rates[name]) / max(rates['none']):.2f} |")


if __name__ == "__main__":
    main()
