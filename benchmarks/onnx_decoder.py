"""Would the decoder pay in ONNX Runtime too? One LSTM step and a whole greedy loop, torch vs ONNX Runtime.

    python benchmarks/onnx_decoder.py            # the bundled model
    python benchmarks/onnx_decoder.py --model DIR --rounds 300

The step (word embedding, LSTM layers, output layer, log-softmax) is exported as one ONNX graph
(opset 17, dynamic batch) and timed against the library's own torch step (``Decoder.step``) on
the same inputs, at batch 1 (greedy) and 3 (beam 3), alternating; then a greedy loop of 16 steps
driven from Python with each. Times include the numpy conversions a real loop would pay.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner.core.backends.onnx_export import DecoderStep  # noqa: E402
from captioner.core.repository.storage import load_model  # noqa: E402


class TokenStep(nn.Module):
    """tokens (B,), hidden and cell (L, B, H) -> the library's ``DecoderStep`` on the tokens' embeddings."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.embed, self.step = decoder.embed, DecoderStep(decoder)

    def forward(self, tokens, hidden, cell):
        return self.step(self.embed(tokens), hidden, cell)


def session_for(step: TokenStep, layers: int, hidden_size: int):
    import onnxruntime as ort

    buffer = io.BytesIO()
    state = torch.zeros(layers, 1, hidden_size)
    example = (torch.zeros(1, dtype=torch.long), state, state)
    torch.onnx.export(step, example, buffer, input_names=["tokens", "hidden", "cell"],
                      output_names=["log_probs", "hidden_out", "cell_out"], opset_version=17, dynamo=False,
                      dynamic_axes={"tokens": {0: "b"}, "hidden": {1: "b"}, "cell": {1: "b"}, "log_probs": {0: "b"},
                                    "hidden_out": {1: "b"}, "cell_out": {1: "b"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the bundled model)")
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    loaded = load_model(args.model, "cpu")
    decoder, config = loaded.model.decoder, loaded.config
    step = TokenStep(decoder).eval()
    session = session_for(step, config.num_layers, config.hidden_size)
    print(f"Decoder: embed {config.embed_size}, hidden {config.hidden_size}, {config.num_layers} layer(s), "
          f"vocabulary {config.vocab_size}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")
    print("| what | torch ms | ONNX Runtime ms | ONNX Runtime / torch | max abs diff |\n|---|---|---|---|---|")
    step_rows = {}
    for batch in (1, 3):
        tokens = torch.randint(4, config.vocab_size, (batch,))
        state = (torch.randn(config.num_layers, batch, config.hidden_size) * 0.5,) * 2

        def with_torch():
            with torch.inference_mode():
                return decoder.step(decoder.embed(tokens), state)[0]

        def with_onnx():
            feeds = {"tokens": tokens.numpy(), "hidden": state[0].numpy(), "cell": state[1].numpy()}
            return torch.from_numpy(session.run(None, feeds)[0])

        diff = (with_torch() - with_onnx()).abs().max().item()
        times = _alternate({"torch": with_torch, "onnx": with_onnx}, args.rounds)
        _row(f"one step, batch {batch}", times, f"{diff:.1e}")
        step_rows[batch] = times

    with torch.inference_mode():
        embedding = loaded.model.encoder.project(torch.randn(1, loaded.model.encoder.linear.in_features).softmax(1))

    def greedy_torch():
        with torch.inference_mode():
            inputs, state = embedding, None
            for _ in range(config.max_length):
                log_probs, state = decoder.step(inputs, state)
                inputs = decoder.embed(log_probs.argmax(1))

    def greedy_onnx():
        with torch.inference_mode():  # the first step reads the image embedding: torch either way
            log_probs, (hidden, cell) = decoder.step(embedding)
        hidden, cell = hidden.numpy(), cell.numpy()
        token = log_probs.argmax(1).numpy()
        for _ in range(config.max_length - 1):
            log_probs, hidden, cell = session.run(None, {"tokens": token, "hidden": hidden, "cell": cell})
            token = log_probs.argmax(1)

    _row(f"greedy loop, {config.max_length} steps, batch 1", _alternate({"torch": greedy_torch, "onnx": greedy_onnx},
                                                                       max(20, args.rounds // 10)), "")
    steps = steps_per_caption(loaded)
    step_times = step_rows
    print(f"\nOn the shipped examples a caption takes {steps[1]:.1f} decoder steps greedy (batch 1) and "
          f"{steps[3]:.1f} with beam 3 (batch 3): running the step in ONNX Runtime would save about "
          + " and ".join(f"{steps[b] * (step_times[b]['torch'] - step_times[b]['onnx']) * 1000:.2f} ms"
                         for b in (1, 3)) + " per caption respectively.")
    return 0


def steps_per_caption(loaded) -> dict[int, float]:
    """Mean decoder steps per caption on the shipped examples, greedy and beam 3."""
    from captioner.core.inference import Captioner

    captioner = Captioner(loaded, torch.device("cpu"), "torch")
    photos = sorted((ROOT / "examples").glob("*.jpg"))
    decoder, counted = captioner.model.decoder, {}
    step = decoder.step
    for beam in (1, 3):
        calls = []
        decoder.step = lambda *a, **k: (calls.append(1), step(*a, **k))[1]
        try:
            for photo in photos:
                captioner(photo, beam_size=beam)
        finally:
            del decoder.step
        counted[beam] = len(calls) / len(photos)
    return counted


def _alternate(functions, rounds):
    times = {name: [] for name in functions}
    for r in range(rounds + 5):
        for name in (list(functions) if r % 2 else list(functions)[::-1]):
            start = time.perf_counter()
            functions[name]()
            if r >= 5:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _row(what, times, diff):
    print(f"| {what} | {times['torch'] * 1000:.3f} | {times['onnx'] * 1000:.3f} | "
          f"{times['onnx'] / times['torch']:.2f} | {diff} |")


if __name__ == "__main__":
    sys.exit(main())
