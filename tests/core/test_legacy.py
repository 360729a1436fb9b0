"""Importing the classic tutorial's checkpoints: exact outputs, and no code run from pickles."""

import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from captioner.core.errors import LegacyImportError
from captioner.core.model import search
from captioner.core.repository.legacy import import_legacy, read_legacy_vocabulary
from captioner.core.repository.storage import load_model

# The tutorial's own code (yunjey/pytorch-tutorial, MIT), kept in benchmarks/ as the reference.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from build_vocab import Vocabulary  # noqa: E402
from tutorial_reference import DecoderRNN, EncoderCNN, build_transform  # noqa: E402
from tutorial_reference import load_image as tutorial_load_image  # noqa: E402


def pickle_vocabulary(words, module_name, protocol=pickle.DEFAULT_PROTOCOL) -> bytes:
    """Pickle a Vocabulary exactly as the tutorial's script does, from module ``module_name``."""
    module = types.ModuleType(module_name)
    cls = type("Vocabulary", (Vocabulary,), {"__module__": module_name, "__qualname__": "Vocabulary"})
    module.Vocabulary = cls
    saved = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        vocab = cls()
        for word in ["<pad>", "<start>", "<end>", "<unk>", *words]:
            vocab.add_word(word)
        return pickle.dumps(vocab, protocol=protocol)
    finally:
        if saved is None:
            del sys.modules[module_name]
        else:
            sys.modules[module_name] = saved


WORDS = [f"word{i}" for i in range(9956 - 4)]


@pytest.fixture(scope="module")
def tutorial_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tutorial")
    torch.manual_seed(0)
    encoder, decoder = EncoderCNN(256), DecoderRNN(256, 512, 9956, 1)
    with torch.no_grad():  # give the BatchNorm layers real statistics, as trained weights have
        encoder.bn.running_mean.normal_(0, 0.1)
        encoder.bn.running_var.uniform_(0.5, 1.5)
    torch.save(encoder.state_dict(), root / "encoder-5-3000.pkl")
    torch.save(decoder.state_dict(), root / "decoder-5-3000.pkl")
    (root / "vocab.pkl").write_bytes(pickle_vocabulary(WORDS, "build_vocab"))
    return root, encoder.eval(), decoder.eval()


@pytest.mark.slow
def test_import_gives_token_for_token_equal_greedy_output(tutorial_files, tmp_path):
    root, encoder, decoder = tutorial_files
    out = import_legacy(root / "encoder-5-3000.pkl", root / "decoder-5-3000.pkl", root / "vocab.pkl", tmp_path / "m")
    loaded = load_model(out)
    assert loaded.config.backbone == "resnet152" and loaded.config.vocab_size == 9956
    assert loaded.vocab.tokens[4] == "word0" and len(loaded.vocab) == 9956
    torch.manual_seed(1)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        reference = decoder.sample(encoder(images)).tolist()
    ours = search.greedy(loaded.model.steps, loaded.model.encoder(images), max_length=20, constrained=False)
    for ref, hyp in zip(reference, ours):
        cut = ref.index(2) + 1 if 2 in ref else len(ref)  # sample.py stops reading at <end>
        assert hyp.tokens == ref[:cut]


@pytest.mark.slow
def test_a_photo_file_gets_the_tutorials_caption_token_for_token(tutorial_files, tmp_path, example_photos):
    """sample.py's own steps (its load_image: squash to 224 x 224 with LANCZOS; its transform; its
    models and greedy sample) against the library's image-file path and greedy decoding. The
    library's captions also follow the decoding rules every caption gets (``<start>`` first, no
    ``<unk>``/``<pad>``/``<start>`` after it); this model's random weights break those rules at
    once, so its unconstrained greedy output is what is compared."""
    from captioner.core.inference import load_captioner

    root, encoder, decoder = tutorial_files
    out = import_legacy(root / "encoder-5-3000.pkl", root / "decoder-5-3000.pkl", root / "vocab.pkl", tmp_path / "m")
    captioner = load_captioner(out, "cpu")
    assert (captioner.config.resize_mode, captioner.config.resample) == ("squash", "lanczos")
    transform = build_transform()
    from PIL import Image

    large = tmp_path / "large-photo.jpg"  # a camera-sized file: 3000 x 3516, decoded at full size too
    Image.open(example_photos["grace-hopper"]).resize((3000, 3516), Image.Resampling.BICUBIC).save(large, quality=90)
    for path in (example_photos["coffee"], example_photos["chelsea-the-cat"], example_photos["grace-hopper"], large):
        pixels = tutorial_load_image(path, transform)
        ours = captioner.pipeline.prepare(path)
        assert torch.allclose(ours, pixels[0], atol=1e-6)  # the same input tensor from the same file
        with torch.no_grad():
            reference = decoder.sample(encoder(pixels))[0].tolist()
        [hypothesis] = search.greedy(captioner.model.steps, captioner.model.encoder(ours[None]), 20, constrained=False)
        cut = reference.index(2) + 1 if 2 in reference else len(reference)  # sample.py stops at <end>
        assert hypothesis.tokens == reference[:cut]


@pytest.mark.parametrize("module_name", ["build_vocab", "__main__"])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_vocabulary_from_either_module_and_any_protocol(tmp_path, module_name, protocol):
    path = tmp_path / "vocab.pkl"
    path.write_bytes(pickle_vocabulary(["a", "cat"], module_name, protocol))
    assert read_legacy_vocabulary(path).tokens == ["<pad>", "<start>", "<end>", "<unk>", "a", "cat"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file if it ran


def test_malicious_vocabulary_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (_Payload(marker), {"word2idx": _Payload(marker)}):
        (tmp_path / "vocab.pkl").write_bytes(pickle.dumps(payload))
        with pytest.raises(LegacyImportError, match="refused to load global"):
            read_legacy_vocabulary(tmp_path / "vocab.pkl")
    assert not marker.exists()


def test_malicious_checkpoint_is_refused_without_running(tutorial_files, tmp_path):
    root, _, _ = tutorial_files
    marker = tmp_path / "pwned"
    torch.save({"linear.weight": _Payload(marker)}, tmp_path / "evil.pkl")
    with pytest.raises(LegacyImportError, match="could not be loaded safely"):
        import_legacy(tmp_path / "evil.pkl", root / "decoder-5-3000.pkl", root / "vocab.pkl", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_vocabulary_size_mismatch_is_refused(tutorial_files, tmp_path):
    root, _, _ = tutorial_files
    (tmp_path / "vocab.pkl").write_bytes(pickle_vocabulary(["a", "cat"], "build_vocab"))
    with pytest.raises(LegacyImportError, match="9956 words but vocab.pkl has 6"):
        import_legacy(root / "encoder-5-3000.pkl", root / "decoder-5-3000.pkl", tmp_path / "vocab.pkl", tmp_path / "o")


def test_swapped_files_are_refused(tutorial_files, tmp_path):
    root, _, _ = tutorial_files
    with pytest.raises(LegacyImportError):
        import_legacy(root / "decoder-5-3000.pkl", root / "encoder-5-3000.pkl", root / "vocab.pkl", tmp_path / "o")
    with pytest.raises(LegacyImportError, match="not a tutorial vocabulary"):
        read_legacy_vocabulary(root / "decoder-5-3000.pkl")


# --- import-legacy --download, against a local HTTP server with stand-in zips ---
import http.server  # noqa: E402
import os  # noqa: E402
import threading  # noqa: E402
import zipfile  # noqa: E402
from functools import partial  # noqa: E402

from tests.helpers.cli import run


@pytest.fixture(scope="module")
def zip_server(tutorial_files, tmp_path_factory):
    root, _, _ = tutorial_files
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(site / "pretrained_model.zip", "w", zipfile.ZIP_STORED) as zf:
        for name in ("encoder-5-3000.pkl", "decoder-5-3000.pkl"):
            zf.write(root / name, f"models/{name}")
    with zipfile.ZipFile(site / "vocap.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(root / "vocab.pkl", "vocab.pkl")
    (site / "corrupt.zip").write_bytes(os.urandom(4096))
    with zipfile.ZipFile(site / "empty.zip", "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _download(base, out, model="pretrained_model.zip", vocab="vocap.zip"):
    return run("import-legacy", "--download", "--out", out, "--model-zip-url", f"{base}/{model}",
               "--vocab-zip-url", f"{base}/{vocab}")


@pytest.mark.slow
def test_download_converts_and_caches(zip_server, tutorial_files, tmp_path):
    proc = _download(zip_server, tmp_path / "coco")
    assert proc.returncode == 0, proc.stderr
    loaded = load_model(tmp_path / "coco")
    assert loaded.config.backbone == "resnet152" and len(loaded.vocab) == 9956
    assert "pretrained_model.zip" in loaded.card
    # second time: the cached conversion is used, nothing is fetched (the URLs are now dead)
    proc = _download("http://127.0.0.1:9", tmp_path / "coco")
    assert proc.returncode == 0 and "wrote" in proc.stdout


@pytest.mark.parametrize("model, vocab, message", [
    ("missing.zip", "vocap.zip", "could not download"),
    ("corrupt.zip", "vocap.zip", "not a valid zip archive"),
    ("pretrained_model.zip", "empty.zip", "lacks vocab.pkl"),
])
def test_download_faults_give_one_clear_error(zip_server, tmp_path, model, vocab, message):
    proc = _download(zip_server, tmp_path / "coco", model, vocab)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "coco").exists()


def test_download_unreachable_host(tmp_path):
    proc = _download("http://127.0.0.1:9", tmp_path / "coco")
    assert proc.returncode == 1 and "could not download http://127.0.0.1:9/" in proc.stderr
