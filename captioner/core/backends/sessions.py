"""ONNX Runtime sessions as every graph here runs them: the settings, in one place."""

from __future__ import annotations

from pathlib import Path

import torch

# The pool's threads spin between the operators of one run, but not after it: spinning on past a run
# takes the cores from the torch and Python work between runs (the decoding loop, the next image).
SESSION_CONFIG = {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"}
# The decoder step runs on the calling thread alone: its operators are too small to share, and waking a
# pool for each of a caption's steps cost more than the step (a whole greedy caption of the bundled model
# took 1.5x as long with 2 threads; benchmarks/onnx_threads.py).
STEP_THREADS = 1


def session_options(config: dict[str, str] | None = None, threads: int | None = None):
    """The ``SessionOptions`` every session here uses: all graph optimisations, sequential execution,
    ``threads`` intra-op threads (default: as many as torch uses now), and ``config`` entries (default
    ``SESSION_CONFIG``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    for key, value in (SESSION_CONFIG if config is None else config).items():
        options.add_session_config_entry(key, value)
    return options


def open_session(graph: Path | bytes, threads: int | None = None):
    """An ``InferenceSession`` on the CPU for a graph file or a graph's bytes."""
    import onnxruntime as ort

    source = graph if isinstance(graph, bytes) else str(graph)
    return ort.InferenceSession(source, session_options(threads=threads), providers=["CPUExecutionProvider"])
