"""Shared fixtures: small random models in the real format, example photos."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
EXAMPLES = ROOT / "examples"

from captioner.core.config import ModelConfig  # noqa: E402
from captioner.core.model import ShowAndTell  # noqa: E402
from captioner.core.repository import save_model  # noqa: E402
from captioner.core.vocabulary import SPECIAL_TOKENS, Vocabulary  # noqa: E402

WORDS = "a an the cat dog cup of espresso on table red blue green small big bird sits next to".split()


def make_tiny_model(seed: int = 0, backbone: str = "efficientnet-lite0", encoder_output: str = "features",
                    end_bias: float = 0.5) -> tuple[ShowAndTell, Vocabulary]:
    """A random model whose decoder reaches ``<end>`` now and then, so captions have varied lengths."""
    torch.manual_seed(seed)
    vocab = Vocabulary([*SPECIAL_TOKENS, *WORDS])
    config = ModelConfig(backbone=backbone, vocab_size=len(vocab), encoder_output=encoder_output,
                         embed_size=32, hidden_size=48, max_length=12)
    model = ShowAndTell(config)
    with torch.no_grad():
        model.decoder.linear.bias[2] += end_bias
        model.encoder.bn.running_var.fill_(0.5)
    return model.eval(), vocab


@pytest.fixture(scope="session", autouse=True)
def captioner_cache(tmp_path_factory) -> Path:
    """Exports and features that tests (and the apps and commands they start) cache go to a folder of
    the session, never to the user's cache."""
    folder = tmp_path_factory.mktemp("captioner-cache")
    os.environ["CAPTIONER_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """For tests of tiny models: one thread runs them about as fast as two, and on a machine busy
    with other work (CI, parallel jobs) many times faster than threads that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    model, vocab = make_tiny_model()
    return save_model(model, vocab, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def tiny_model_copy(tiny_model_dir, tmp_path) -> Path:
    """A copy that a test may damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture(scope="session")
def app_model(tmp_path_factory) -> Path:
    """The small model the app tests show (see ``app_fixtures.make_app_model``)."""
    from app_fixtures import make_app_model

    return make_app_model(tmp_path_factory.getbasetemp() / "app-model")


@pytest.fixture(scope="session")
def example_photos() -> dict[str, Path]:
    photos = {p.stem: p for p in sorted(EXAMPLES.glob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    assert photos, "examples/ holds no photos"
    return photos
