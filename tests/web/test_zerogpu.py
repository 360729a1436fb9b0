"""ZeroGPU: every model call of the app (captions, the batch tab, heatmaps) runs inside ``spaces.GPU``
on a ZeroGPU Space and nowhere else, with a stand-in ``spaces`` package that pickles like the real one."""

from __future__ import annotations

import functools
import pickle
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
from gradio_client import Client, handle_file

from captioner.core.options import DecodeOptions
from captioner.web import zerogpu
from captioner.web.batch import caption_inputs, collect_inputs
from tests.helpers.app import app, serve
from tests.helpers.paths import ROOT

EXAMPLES = ROOT / "examples"
PHOTOS = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


class StandInSpaces(types.ModuleType):
    """Records what the ``spaces`` package is asked to do. Like the real ``spaces.GPU`` on ZeroGPU,
    the decorated function's arguments and result must survive pickling (they cross to a worker process)."""

    def __init__(self) -> None:
        super().__init__("spaces")
        self.decorated: list[tuple[str, object]] = []  # (function name, duration)
        self.calls = 0
        self.requests: list[object] = []  # the Gradio request each call runs for (what ZeroGPU bills)
        self.inside = threading.local()
        self._lock = threading.Lock()

    def GPU(self, task=None, *, duration=None, size=None):
        if task is None:
            return functools.partial(self.GPU, duration=duration, size=size)
        self.decorated.append((task.__name__, duration))

        @functools.wraps(task)
        def on_gpu(*args, **kwargs):
            from gradio.context import LocalContext  # where spaces.GPU looks for the visitor's request

            with self._lock:
                self.calls += 1
                self.requests.append(LocalContext.request.get(None))
            args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
            self.inside.now = True
            try:
                return pickle.loads(pickle.dumps(task(*args, **kwargs)))
            finally:
                self.inside.now = False

        return on_gpu


@pytest.fixture
def stand_in_spaces(monkeypatch):
    module = StandInSpaces()
    monkeypatch.setitem(sys.modules, "spaces", module)
    return module


def record_model_runs(captioner, spaces: StandInSpaces) -> list[bool]:
    """For each run of the encoder's backbone: whether it ran inside the decorated function."""
    runs: list[bool] = []
    captioner.model.encoder.require_backbone().register_forward_pre_hook(
        lambda module, args: runs.append(getattr(spaces.inside, "now", False)))
    return runs


@pytest.mark.slow
def test_on_zerogpu_every_forward_pass_runs_inside_spaces_gpu(stand_in_spaces, monkeypatch, tiny_model_dir, one_thread):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.delenv("CAPTIONER_BACKEND", raising=False)
    built = app.build_app(tiny_model_dir, examples_dir=EXAMPLES, batch_size=4)
    state = built.state
    shared = state.shared
    assert state.captioner.backend == "torch"  # on ZeroGPU the GPU runs the model, through torch
    # every forward pass (the shared batcher's and the batch tab's) and heatmaps: each wrapped once, at start
    assert sorted(name for name, _ in stand_in_spaces.decorated) == ["_caption_pixels", "explain"]
    assert stand_in_spaces.calls == 0 and shared.forward_passes == 0  # examples are not pre-captioned on ZeroGPU
    runs = record_model_runs(shared.captioner, stand_in_spaces)
    with serve(built) as url:
        client = Client(url, verbose=False)
        photos = [EXAMPLES / photo for photo in PHOTOS[:4]] + [EXAMPLES / PHOTOS[0]]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda p: client.predict(handle_file(p), 2, 2, 8, api_name="/caption"), photos))
        assert all(answer["caption"] is not None for answer in answers)
        assert answers[0]["caption"] == answers[-1]["caption"]
    assert shared.forward_passes >= 1
    assert stand_in_spaces.calls == shared.forward_passes == len(runs)
    assert all(runs)
    assert all(request is not None for request in stand_in_spaces.requests)  # billed to a visitor's request

    # The batch tab's passes go through spaces.GPU too (its handler hands them the shared batcher's captioner).
    before = stand_in_spaces.calls
    rows = caption_inputs(shared.captioner, collect_inputs([EXAMPLES / photo for photo in PHOTOS]),
                          DecodeOptions(beam_size=2, num_candidates=1), batch_size=4)
    assert [row.error for row in rows] == [None] * len(PHOTOS) and [row.image for row in rows] == PHOTOS
    assert stand_in_spaces.calls - before == 2 and len(runs) == shared.forward_passes + 2 and all(runs)


@pytest.mark.slow
def test_off_zerogpu_spaces_gpu_is_never_used(stand_in_spaces, monkeypatch, tiny_model_dir, one_thread):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    built = app.build_app(tiny_model_dir, examples_dir=EXAMPLES, batch_size=4)
    shared = built.state.shared
    assert shared.forward_passes >= 1  # the examples were captioned ahead of time, as before
    runs = record_model_runs(shared.captioner, stand_in_spaces)
    with serve(built) as url:
        answer = Client(url, verbose=False).predict(handle_file(EXAMPLES / PHOTOS[0]), 2, 2, 8, api_name="/caption")
    assert answer["caption"] is not None
    assert zerogpu.gpu_wrapper() is zerogpu.identity
    assert shared.captioner is built.state.captioner  # not wrapped
    assert stand_in_spaces.decorated == [] and stand_in_spaces.calls == 0 and runs == [False] * len(runs)


def test_zerogpu_without_the_spaces_package_runs_unwrapped(monkeypatch, capsys):
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    assert zerogpu.gpu_wrapper() is zerogpu.identity
    assert "spaces package cannot be imported" in capsys.readouterr().err




def test_the_backend_is_torch_on_zerogpu_unless_one_is_asked_for(monkeypatch):
    monkeypatch.delenv("CAPTIONER_BACKEND", raising=False)
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert zerogpu.backend_for(None) is None and zerogpu.backend_for("onnx") == "onnx"
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert zerogpu.backend_for(None) == "torch" and zerogpu.backend_for("onnx") == "onnx"
    monkeypatch.setenv("CAPTIONER_BACKEND", "onnx")
    assert zerogpu.backend_for(None) is None  # load_captioner reads the variable
