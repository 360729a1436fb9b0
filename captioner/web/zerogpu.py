"""ZeroGPU support: on a ZeroGPU Space, CUDA exists only inside functions decorated with ``spaces.GPU``.

``gpu_wrapper()`` is what the app hands ``SharedCaptioner(run_forward=...)``: ``spaces.GPU`` (with a
duration fit for one batched forward pass) when the app runs on a ZeroGPU Space and the ``spaces``
package can be imported, and the identity everywhere else, so nothing changes off ZeroGPU. On ZeroGPU
``spaces.GPU`` runs the wrapped call in a worker process that holds the GPU for the call's length, so
its arguments and results travel by pickling (a CPU pixel batch in, plain caption results out).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

FORWARD_SECONDS = 30  # GPU time asked for per forward pass (a batch of up to 8 images takes well under 1 s)


def is_zero_gpu() -> bool:
    """True on a ZeroGPU Space: the Hub sets ``SPACES_ZERO_GPU=true`` there (Gradio's own test,
    ``gradio.utils.is_zero_gpu_space``)."""
    return os.environ.get("SPACES_ZERO_GPU", "").strip().lower() == "true"


def space_id() -> str | None:
    """``owner/name`` when running on a Hugging Face Space (Gradio's ``gradio.utils.get_space``), else None."""
    return os.environ.get("SPACE_ID") if os.environ.get("SYSTEM") == "spaces" else None


def identity(function: F) -> F:
    return function


def gpu_wrapper(duration: int = FORWARD_SECONDS) -> Callable[[F], F]:
    """``spaces.GPU(duration=...)`` on ZeroGPU (when ``spaces`` is importable), else ``identity``.

    ``spaces`` is imported only on ZeroGPU. Without it there, the app still runs (on the CPU), and
    a line on stderr says why the GPU is unused.
    """
    if not is_zero_gpu():
        return identity
    try:
        import spaces
    except ImportError as error:
        print(f"SPACES_ZERO_GPU is set but the spaces package cannot be imported ({error}); "
              "forward passes run without ZeroGPU.", file=sys.stderr)
        return identity

    def wrap(function: F) -> F:
        return spaces.GPU(function, duration=duration)

    return wrap


def wrap_captioner(captioner, wrap: Callable[[F], F]):
    """``captioner`` itself when ``wrap`` is the identity, else the captioner with every forward pass
    run inside ``wrap`` (``Captioner.with_forward``)."""
    return captioner if wrap is identity else captioner.with_forward(wrap)
