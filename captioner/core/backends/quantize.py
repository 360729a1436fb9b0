"""An fp32 backbone graph made int8: ONNX Runtime's static quantisation, calibrated on real photos.

QDQ format with per-channel int8 weights and uint8 activations, which ONNX Runtime runs as integer
convolutions. What follows the last convolution (the pooling, the classifier and its softmax) stays
in float: those are a sliver of the time, and their outputs are what the decoder reads, so rounding
them would change captions for nothing. The activation ranges come from ``METHOD`` over the
calibration photos (``benchmarks/int8_calibration.py`` compares the methods by caption agreement).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from captioner.core.backends.onnx_export import EXPORTER_HINT, INPUT_NAME, ExporterMissing

METHOD = "MinMax"
PERCENTILE = 99.999
METHODS = ("MinMax", "Entropy", "Percentile")
COLLECT_EVERY = 4  # photos whose intermediate outputs are held at once during calibration (memory)


def head_nodes(graph) -> list[str]:
    """The names of the nodes after the graph's last convolution (pooling, classifier, softmax)."""
    last_conv = max((i for i, node in enumerate(graph.node) if node.op_type == "Conv"), default=-1)
    return [node.name for node in graph.node[last_conv + 1:]]


class _Photos:
    """ONNX Runtime's calibration data reader over preprocessed photos, one photo per run; ``set_range``
    lets the calibrator collect ``COLLECT_EVERY`` photos at a time."""

    def __init__(self, pixels: Sequence[np.ndarray]):
        self.pixels, self.index, self.end = list(pixels), 0, len(pixels)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= min(self.end, len(self.pixels)):
            return None
        self.index += 1
        return {INPUT_NAME: self.pixels[self.index - 1][None]}

    def __len__(self) -> int:
        return len(self.pixels)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.index, self.end = start_index, end_index


def quantize_graph(fp32: bytes, calibration: Sequence[torch.Tensor], method: str = METHOD,
                   percentile: float = PERCENTILE) -> bytes:
    """The int8 version of the fp32 backbone graph ``fp32`` (bytes), calibrated on the preprocessed
    photos in ``calibration`` (batches ``(B, 3, S, S)``) with ``method`` (MinMax, Entropy or
    Percentile). Raises ``ExporterMissing`` without the onnx package."""
    try:
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ExporterMissing(EXPORTER_HINT) from None
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}: use one of {', '.join(METHODS)}")
    photos = [photo.numpy() for batch in calibration for photo in batch.detach().to(torch.float32)]
    if not photos:
        raise ValueError("no calibration photos")
    reader = _Photos(photos)
    stride = max(d for d in range(1, COLLECT_EVERY + 1) if len(photos) % d == 0)  # must divide the count
    with tempfile.TemporaryDirectory(prefix="captioner-int8-") as folder:
        source, prepared, quantized = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(fp32)
        quant_pre_process(str(source), str(prepared))  # folds constants, infers shapes
        graph = onnx.load(str(prepared))
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints a line per collection
            quantize_static(str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=getattr(CalibrationMethod, method),
                            nodes_to_exclude=head_nodes(graph.graph),
                            extra_options={"CalibStridedMinMax": stride, "CalibPercentile": percentile})
        result = onnx.load(str(quantized))
    del result.metadata_props[:]
    for prop in onnx.load_model_from_string(fp32).metadata_props:
        result.metadata_props.add(key=prop.key, value=prop.value)
    return result.SerializeToString()
