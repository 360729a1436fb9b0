"""Which calibration makes the int8 encoder agree best with fp32? A table from one run.

    python benchmarks/int8_calibration.py                      # the bundled model, the real-photo set
    python benchmarks/int8_calibration.py --photos DIR --model DIR

Photos: ``--photos DIR``, else the real-photo set (``python -m captioner.build.photos``, built into a
temporary folder; it needs Debian's gcompris-qt-data), split in two by content hash as
``export-onnx --int8`` splits them (``calibration.split_photos``): one half calibrates, the other
checks. Each calibration method (and a calibration on only 6 photos) quantises the fp32 encoder as
the library does (``quantize.quantize_graph``); every check photo is then captioned from the fp32 and
the int8 encoder's outputs, greedily and with beam 3 (``agreement.measure``), and the encoder's
outputs are compared (top class, largest probability difference). Encoder times: median of
interleaved single-photo runs at one thread, in this process.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from captioner.core.backends import quantize  # noqa: E402
from captioner.core.backends.agreement import NEEDED, measure  # noqa: E402
from captioner.core.backends.calibration import photos_in, pixels_of, split_photos  # noqa: E402
from captioner.core.backends.onnx_export import INPUT_NAME, OUTPUT_NAME, export_backbone  # noqa: E402
from captioner.core.backends.sessions import open_session  # noqa: E402
from captioner.core.images.preprocess import preprocessor_for  # noqa: E402
from captioner.core.repository.storage import load_model  # noqa: E402
from tables import Table  # noqa: E402

SETTINGS = {  # name: (method, percentile, calibration photos; None: all of the calibration half)
    "MinMax": ("MinMax", quantize.PERCENTILE, None),
    "Entropy": ("Entropy", quantize.PERCENTILE, None),
    "Percentile 99.99": ("Percentile", 99.99, None),
    "Percentile 99.999": ("Percentile", 99.999, None),
    "MinMax, 6 photos": ("MinMax", quantize.PERCENTILE, 6),
}


def real_photo_set(folder: Path) -> Path:
    """Build the real-photo set into ``folder``; returns its photos' folder."""
    subprocess.run([sys.executable, "-m", "captioner.build.photos", str(folder)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return folder / "photos"


def runner(graph: bytes):
    session = open_session(graph, threads=1)

    def run(pixels: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: pixels.contiguous().numpy()})[0])
    return run


def encoder_ms(runners: dict[str, object], photo: torch.Tensor, rounds: int = 40) -> dict[str, float]:
    """Median milliseconds of one photo through each graph, the graphs taking turns."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(rounds + 1):
        for name, run in runners.items():
            time.sleep(0.01)
            start = time.perf_counter()
            run(photo)
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="a folder of photos (default: the real-photo set, built now)")
    parser.add_argument("--model", help="model directory (default: the bundled model)")
    parser.add_argument("--settings", nargs="*", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="captioner-int8-bench-") as tmp:
        folder = args.photos or real_photo_set(Path(tmp) / "photos")
        calibration, check = split_photos(photos_in(folder))
        loaded = load_model(args.model, "cpu")
        preprocess = preprocessor_for(loaded.config)
        calibration_pixels, check_pixels = pixels_of(calibration, preprocess), pixels_of(check, preprocess)
        fp32 = export_backbone(loaded.model.encoder.backbone, loaded.config)
        reference = runner(fp32)
        expected = torch.cat([reference(batch) for batch in check_pixels])
        table = Table(f"int8 encoder against fp32, {loaded.config.backbone} ({args.model or 'bundled model'}): "
                      f"calibrated on {sum(map(len, calibration_pixels))} photos, checked on "
                      f"{sum(map(len, check_pixels))} others",
                      ["calibration", "photos", "build s", "same top class", "largest prob. difference",
                       "identical greedy", "identical beam 3", f"passes ({NEEDED:.0%})", "ms int8 / fp32"])
        graphs = {"fp32": reference}
        for name in args.settings:
            method, percentile, count = SETTINGS[name]
            used = calibration_pixels if count is None else [torch.cat(calibration_pixels)[:count]]
            started = time.perf_counter()
            graph = quantize.quantize_graph(fp32, used, method, percentile)
            built = time.perf_counter() - started
            graphs[name] = run = runner(graph)
            found = torch.cat([run(batch) for batch in check_pixels])
            agreement = measure(loaded.model, loaded.vocab, reference, run, check_pixels)
            table.rows.append([name, sum(map(len, used)), round(built, 1),
                               f"{(found.argmax(1) == expected.argmax(1)).float().mean().item():.1%}",
                               round((found - expected).abs().max().item(), 3),
                               f"{agreement.greedy}/{agreement.photos} ({agreement.rate(agreement.greedy):.1%})",
                               f"{agreement.beam}/{agreement.photos} ({agreement.rate(agreement.beam):.1%})",
                               agreement.passed, ""])
            print(f"{name}: {agreement.line()}", file=sys.stderr, flush=True)
        times = encoder_ms(graphs, check_pixels[0][:1])
        for row in table.rows:
            row[-1] = round(times[row[0]] / times["fp32"], 2)
        table.notes.append(f"encoder, one photo, one thread: fp32 {times['fp32']:.2f} ms; "
                           + ", ".join(f"{name} {ms:.2f} ms" for name, ms in times.items() if name != "fp32"))
        print(table.markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
