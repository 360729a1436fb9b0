"""What the app's handlers share, made once per app: the model and its shared batcher, the model
calls as they run on this hardware, the folder for results, the per-client shares of the queue, and
the requests in flight."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from captioner.core.inference import Captioner
from captioner.core.options import DecodeOptions
from captioner.core.repository.storage import BUNDLED_MODEL_DIR
from captioner.web.batcher import ModelChoice, SharedCaptioner, choose_model
from captioner.web.cli import max_batch_size
from captioner.web.gallery import list_examples
from captioner.web.guards import InFlight, QueueShares
from captioner.web.outputs import OutputFolder
from captioner.web.zerogpu import backend_for, gpu_wrapper, is_zero_gpu, wrap_captioner


def _examples_dir() -> Path:
    """The example photos: inside the installed package (a wheel ships them as ``captioner/examples``),
    else ``examples/`` of the checkout this package runs from."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "examples"
    return installed if installed.is_dir() else package.parent / "examples"


EXAMPLES_DIR = _examples_dir()
DEFAULT_LENGTH = 20  # the length setting shown when no model is loaded


@dataclass
class AppState:
    """One app's shared parts. The shared batcher's captioner runs every forward pass inside the
    hardware's wrapper (``zerogpu.wrap_captioner``: ``spaces.GPU`` on ZeroGPU, else as is), and
    ``explain`` is the captioner's own, wrapped likewise."""

    choice: ModelChoice
    shared: SharedCaptioner | None
    explain: Callable | None
    batch_size: int
    examples: list[Path]
    outputs: OutputFolder = field(default_factory=OutputFolder)
    shares: QueueShares = field(default_factory=QueueShares)
    in_flight: InFlight = field(default_factory=InFlight)

    @property
    def captioner(self) -> Captioner | None:
        return self.choice.captioner

    @property
    def default_length(self) -> int:
        return self.captioner.config.max_length if self.captioner else DEFAULT_LENGTH

    def warm_examples(self, options: DecodeOptions) -> None:
        """Caption the example photos ahead of time with ``options`` (the page's defaults), so that
        clicking one answers at once; those that cannot be captioned leave the gallery. Not on
        ZeroGPU, where each pass asks for a GPU that is for visitors' requests."""
        if self.shared is None or not self.examples or is_zero_gpu():
            return
        problems = self.shared.warm(self.examples, options)
        for path, problem in zip(self.examples, problems):
            if problem:
                print(f"Example {path.name} left out of the gallery: {problem}", file=sys.stderr)
        self.examples = [path for path, problem in zip(self.examples, problems) if not problem]

    def close(self) -> None:
        """Stop the batcher's worker and remove the results folder."""
        if self.shared is not None:
            self.shared.close()
        self.outputs.close()


def load_state(source: str | os.PathLike | None = None, *, bundled: str | os.PathLike | None = BUNDLED_MODEL_DIR,
               examples_dir: str | os.PathLike = EXAMPLES_DIR, batch_size: int | None = None,
               backend: str | None = None, precision: str | None = None, fallback: bool = True) -> AppState:
    """The state of an app showing ``source`` (see ``choose_model``; ``backend`` as ``backend_for``
    decides it, ``precision`` as ``load_captioner`` reads it) with ``batch_size`` images per forward
    pass (see ``max_batch_size``)."""
    batch_size = max_batch_size(batch_size)
    choice = choose_model(source, bundled=bundled, backend=backend_for(backend), precision=precision,
                          fallback=fallback)
    captioner = choice.captioner
    if captioner is None:
        return AppState(choice, None, None, batch_size, list_examples(examples_dir))
    on_gpu = gpu_wrapper()  # on ZeroGPU every model call runs inside spaces.GPU (CUDA exists only there)
    shared = SharedCaptioner(wrap_captioner(captioner, on_gpu), max_batch_size=batch_size)
    return AppState(choice, shared, on_gpu(captioner.explain), batch_size, list_examples(examples_dir))
