"""CPU speed-ups for the encoder that keep its outputs: what each gains, what it costs, what it changes.

    python benchmarks/encoder_speedups.py                 # EfficientNet-Lite0 and ResNet-152
    python benchmarks/encoder_speedups.py --quick         # fewer runs, no ResNet-152
    python benchmarks/encoder_speedups.py --compile       # also torch.compile (slow: it compiles C++)

Every variant is timed alternately with the baseline (eager fp32 under ``torch.no_grad``, default
threads), so that a busy machine slows both alike and the ratio stays meaningful. Each variant's
class log-probabilities on the example photos are compared with the baseline's: the largest
absolute difference, and whether every photo keeps the same top-5 classes in the same order.
"Setup" is what the variant costs once per process (tracing, freezing, compiling, first call),
which a one-shot command line call pays in full.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.core.model.encoders import BACKBONES, build_backbone, load_pretrained_weights  # noqa: E402
from captioner.core.images.preprocess import build_preprocessor  # noqa: E402
from captioner.core.images.decode import load_image
from tables import add_clock_options, chosen_clock  # noqa: E402

Runner = Callable[[torch.Tensor], torch.Tensor]
# Wall time by default; ``--clock cpu`` (process CPU time) keeps single-threaded (``--threads 1``)
# ratios steady on a machine that other work keeps busy.
clock = time.perf_counter


# ---------------------------------------------------------------- variants
# Each takes the eval-mode backbone (a private copy) and an example batch and returns a function
# from a batch to class log-probabilities.


def baseline(model: nn.Module, example: torch.Tensor) -> Runner:
    def run(x):
        with torch.no_grad():
            return model(x)
    return run


def inference_mode(model, example):
    def run(x):
        with torch.inference_mode():
            return model(x)
    return run


def channels_last(model, example):
    model = model.to(memory_format=torch.channels_last)

    def run(x):
        with torch.inference_mode():
            return model(x.contiguous(memory_format=torch.channels_last))
    return run


def threads(n: int):
    def variant(model, example):
        def run(x):
            before = torch.get_num_threads()
            torch.set_num_threads(n)
            try:
                with torch.inference_mode():
                    return model(x)
            finally:
                torch.set_num_threads(before)
        return run
    return variant


def _traced(model, example):
    with torch.no_grad():
        return torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))


def _fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold each BatchNorm2d into the convolution registered just before it (the call order in
    both backbones), with ``torch.nn.utils.fuse_conv_bn_eval``."""
    for module in list(model.modules()):
        names = list(module._modules)
        for conv_name, bn_name in zip(names, names[1:]):
            conv, bn = module._modules[conv_name], module._modules[bn_name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[conv_name] = torch.nn.utils.fuse_conv_bn_eval(conv, bn)
                module._modules[bn_name] = nn.Identity()
    return model


def fold_batch_norms(model, example):
    return inference_mode(_fold_batch_norms(model), example)


def fold_batch_norms_channels_last(model, example):
    return channels_last(_fold_batch_norms(model), example)


def jit_freeze(model, example):
    traced = _traced(model, example)

    def run(x):
        with torch.no_grad():
            return traced(x)
    return run


def jit_optimize_for_inference(model, example):
    with torch.no_grad():
        traced = torch.jit.optimize_for_inference(torch.jit.trace(model, example, check_trace=False))

    def run(x):
        with torch.no_grad():
            return traced(x)
    return run


def jit_freeze_channels_last(model, example):
    model = model.to(memory_format=torch.channels_last)
    traced = _traced(model, example.contiguous(memory_format=torch.channels_last))

    def run(x):
        with torch.no_grad():
            return traced(x.contiguous(memory_format=torch.channels_last))
    return run


def compiled(model, example):
    compiled_model = torch.compile(model, dynamic=False)

    def run(x):
        with torch.inference_mode():
            return compiled_model(x)
    return run


def exported(model, example):
    with torch.no_grad():
        module = torch.export.export(model, (example,)).module()

    def run(x):
        with torch.inference_mode():
            return module(x)
    return run


def fold_symmetric_padding(model, example):
    """EfficientNet-Lite's TensorFlow-style 'same' padding is a separate ZeroPad2d before each
    convolution; where it is symmetric, the convolution can pad by itself instead."""
    for module in model.modules():
        pad = getattr(module, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                module.padding = (top, left)
                module.static_padding = nn.Identity()
    return inference_mode(model, example)


def plain_swish(model, example):
    """``set_swish(memory_efficient=False)``: the package's export-friendly activation switch."""
    model.net.set_swish(memory_efficient=False)
    return inference_mode(model, example)


def mkldnn_off(model, example):
    """oneDNN disabled (plain ATen kernels), for reference."""
    def run(x):
        with torch.backends.mkldnn.flags(enabled=False), torch.inference_mode():
            return model(x)
    return run


def adopted(model, example):
    """What ``Captioner`` does on CPU: ``encoders.optimize_for_inference``, input as it comes."""
    from captioner.core.model.encoders import optimize_for_inference

    return inference_mode(optimize_for_inference(model), example)


COMMON = [
    ("`torch.inference_mode()` instead of `no_grad()`", inference_mode),
    ("channels_last (model and input)", channels_last),
    ("`torch.set_num_threads(1)`", threads(1)),
    ("`torch.set_num_threads(2)`", threads(2)),
    ("BatchNorm folded into the convolutions (eager, `fuse_conv_bn_eval`)", fold_batch_norms),
    ("BatchNorm folded + channels_last (eager)", fold_batch_norms_channels_last),
    ("`jit.trace` + `jit.freeze`", jit_freeze),
    ("`jit.trace` + `jit.optimize_for_inference` (freeze + oneDNN)", jit_optimize_for_inference),
    ("`jit.trace` + `jit.freeze`, channels_last", jit_freeze_channels_last),
    ("`torch.export` -> `.module()`", exported),
    ("`torch.backends.mkldnn` disabled", mkldnn_off),
]
EFFICIENTNET_ONLY = [
    ("symmetric static 'same' padding folded into the convolutions", fold_symmetric_padding),
    ("`set_swish(memory_efficient=False)` (puts swish where Lite has ReLU6)", plain_swish),
]
COMPILE = [("`torch.compile` (inductor)", compiled)]
ADOPTED = [("adopted in the library: `encoders.optimize_for_inference`", adopted)]


# ---------------------------------------------------------------- measuring


def photos_batch(name: str) -> torch.Tensor:
    spec = BACKBONES[name]
    preprocess = build_preprocessor(spec.resize, spec.image_size, spec.mean, spec.std)
    paths = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return torch.stack([preprocess(load_image(p)) for p in paths])


def build(name: str, photos: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = build_backbone(name, "class_log_probs")
    if name != "resnet152":
        load_pretrained_weights(model, name)
        return model.eval()
    # ResNet-152's ImageNet weights are not installed: random ones, with BatchNorm statistics
    # measured on the photos so that activations keep a sane scale (as trained weights have).
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        model.train()(photos)
    return model.eval()


def alternate(base: Runner, other: Runner, x: torch.Tensor, runs: int) -> tuple[float, float]:
    """Median seconds of ``base`` and ``other``, called in turn ``runs`` times each."""
    base(x), other(x)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(runs):
        for j, runner in ((0, base), (1, other)) if i % 2 == 0 else ((1, other), (0, base)):
            start = clock()
            runner(x)
            times[j].append(clock() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def compare(base: Runner, other: Runner, photos: torch.Tensor) -> tuple[float, bool]:
    """Largest |difference| of log-probs over the photos (one at a time) and whether the top-5 hold."""
    worst, same = 0.0, True
    for image in photos:
        ref, out = base(image[None]).float(), other(image[None]).float()
        worst = max(worst, (ref - out).abs().max().item())
        same &= torch.equal(ref.topk(5, dim=1).indices, out.topk(5, dim=1).indices)
    return worst, same


def measure(name: str, variants: list[tuple[str, Callable]], batch_sizes: list[int], runs: int) -> list[list]:
    photos = photos_batch(name)
    original = build(name, photos)
    base_run = baseline(copy.deepcopy(original), photos[:1])
    rows = []
    for label, variant in [("baseline: eager fp32, `torch.no_grad()`", baseline), *variants]:
        row, worst, same = [name, label], 0.0, True
        try:
            for size in batch_sizes:
                x = photos[torch.arange(size) % len(photos)].contiguous()
                model = copy.deepcopy(original)
                start = clock()
                runner = variant(model, x)
                runner(x)
                setup = clock() - start
                base_time, time_ = alternate(base_run, runner, x, runs)
                if size == 1:
                    worst_photos, same_photos = compare(base_run, runner, photos)
                    worst, same = max(worst, worst_photos), same and same_photos
                else:
                    out, ref = runner(x).float(), base_run(x).float()
                    worst = max(worst, (out - ref).abs().max().item())
                    same = same and torch.equal(out.topk(5, dim=1).indices, ref.topk(5, dim=1).indices)
                row += [round(time_ * 1000, 1), round(base_time / time_, 2), round(setup, 2)]
            row += [f"{worst:.1e}", "yes" if same else "**no**"]
        except Exception as error:  # report a variant that does not work here, keep going
            row += [f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"]
        rows.append(row)
        print(" | ".join(map(str, row)), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Lite0 only, fewer runs")
    parser.add_argument("--runs", type=int, default=None, help="timed calls per variant and batch size")
    parser.add_argument("--compile", action="store_true",
                        help="also try torch.compile (minutes of compiling per backbone and batch size)")
    parser.add_argument("--no-resnet", action="store_true")
    parser.add_argument("--only", metavar="TEXT", help="only the variants whose name contains TEXT (and the baseline)")
    add_clock_options(parser, "wall time, or process CPU time (steadier with --threads 1 on a busy machine)",
                      "torch.set_num_threads for the baseline and every variant (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    clock = chosen_clock(args)
    load_start, started = os.getloadavg(), time.perf_counter()
    batch_sizes = [1, 8]
    extra = COMPILE if args.compile else []

    def pick(variants):  # --only chooses among all variants, torch.compile included
        if args.only is None:
            return variants
        return [v for v in dict.fromkeys([*variants, *COMPILE]) if args.only.lower() in v[0].lower()]

    rows = measure("efficientnet-lite0", pick([*COMMON, *EFFICIENTNET_ONLY, *extra, *ADOPTED]), batch_sizes,
                   args.runs or (5 if args.quick else 10))
    if not (args.quick or args.no_resnet):
        rows += measure("resnet152", pick([*COMMON, *extra, *ADOPTED]), batch_sizes, args.runs or 4)
    load_end = os.getloadavg()
    headers = ["backbone", "variant"]
    for size in batch_sizes:
        headers += [f"batch {size} ms", f"batch {size} speed-up", f"batch {size} setup s"]
    headers += ["max abs diff (log-probs)", "top-5 unchanged"]
    print(f"### Encoder CPU speed-ups ({os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads by default, {args.clock} clock; load average {load_start[0]:.1f} -> {load_end[0]:.1f}; "
          f"{time.perf_counter() - started:.0f} s)\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    print("\nSpeed-up: baseline time / variant time, each pair timed alternately in this run. "
          "Setup: one-time cost in the process (tracing, compiling, first call). ResNet-152 has random "
          "weights here (its ImageNet weights are not installed; BatchNorm statistics taken from the photos), "
          "so its top-5 check only shows that the variant computes the same function."
          + (" With the CPU clock, a multi-threaded row counts every thread's CPU time (spin-waiting "
             "included): it is work, not latency." if args.clock == "cpu" else ""))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
