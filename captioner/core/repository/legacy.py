"""Import the classic PyTorch tutorial's checkpoints (``encoder-5-3000.pkl``, ``decoder-5-3000.pkl``,
``vocab.pkl``) into a model repository, without ever running code from those files.

The state dicts are read with ``torch.load(weights_only=True)``. ``vocab.pkl`` is a pickled
``Vocabulary`` object, so it is read by an unpickler that knows exactly one class, a
data-only stand-in for it, and refuses every other global: a pickle that would call a
function fails before anything runs.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import torch

from captioner.core.errors import LegacyImportError
from captioner.core.model.config import ModelConfig
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import SPECIAL_TOKENS, Vocabulary
from captioner.core.repository.modelcard import build_card
from captioner.core.repository.storage import save_model

MAX_VOCAB_PICKLE_BYTES = 64 * 1024 * 1024
TUTORIAL_MAX_LENGTH = 20  # DecoderRNN's max_seq_length in the tutorial


class _PickledVocabulary:
    """Takes the place of the tutorial's ``build_vocab.Vocabulary``: holds its attributes, runs nothing."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("Vocabulary state is not a plain dictionary")
        self.__dict__.update(state)


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` as pickle protocols 0 and 1 use it, restricted to the stand-in."""
    if cls is not _PickledVocabulary or base is not object or state is not None:
        raise pickle.UnpicklingError("refused: the pickle builds something other than a Vocabulary")
    return _PickledVocabulary.__new__(_PickledVocabulary)


class _VocabularyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("build_vocab", "Vocabulary"): _PickledVocabulary,
        ("__main__", "Vocabulary"): _PickledVocabulary,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("copy_reg", "_reconstructor"): _reconstructor,
        ("builtins", "object"): object,
        ("__builtin__", "object"): object,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}") from None


def read_legacy_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """The tutorial's ``vocab.pkl`` as a ``Vocabulary`` (same ids), read without running its code."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_VOCAB_PICKLE_BYTES:
            raise LegacyImportError(f"{path} is larger than {MAX_VOCAB_PICKLE_BYTES // 2**20} MiB")
        data = path.read_bytes()
    except OSError as error:
        raise LegacyImportError(f"cannot read vocabulary {path}: {error.strerror or error}") from None
    try:
        vocab = _VocabularyUnpickler(io.BytesIO(data)).load()
    except Exception as error:  # any malformed or hostile pickle ends here, unexecuted
        raise LegacyImportError(f"{path} is not a tutorial vocabulary pickle ({error})") from None
    if not isinstance(vocab, _PickledVocabulary):
        raise LegacyImportError(f"{path} holds a {type(vocab).__name__}, not a tutorial Vocabulary")
    idx2word = getattr(vocab, "idx2word", None)
    word2idx = getattr(vocab, "word2idx", None)
    if not isinstance(idx2word, dict) or not isinstance(word2idx, dict):
        raise LegacyImportError(f"{path}: the Vocabulary lacks its word2idx/idx2word dictionaries")
    n = len(idx2word)
    if (sorted(idx2word) != list(range(n)) or not all(isinstance(w, str) for w in idx2word.values())
            or {w: i for i, w in idx2word.items()} != word2idx):
        raise LegacyImportError(f"{path}: word2idx and idx2word do not describe the same ids 0..{n - 1}")
    tokens = [idx2word[i] for i in range(n)]
    if tuple(tokens[:4]) != SPECIAL_TOKENS:
        raise LegacyImportError(f"{path}: expected the special tokens {list(SPECIAL_TOKENS)} first, got {tokens[:4]}")
    return Vocabulary(tokens)


def _load_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LegacyImportError(f"{what} checkpoint not found: {path}") from None
    except Exception as error:  # weights_only refuses pickles that need anything but tensors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LegacyImportError(f"{what} checkpoint {path} could not be loaded safely: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LegacyImportError(f"{what} checkpoint {path} is not a state_dict of tensors")
    return state


def legacy_state_to_model(encoder: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor],
                          vocab: Vocabulary) -> ShowAndTell:
    """Build our model from the tutorial's ``EncoderCNN`` and ``DecoderRNN`` state dicts."""
    try:
        embed_size, feature_size = encoder["linear.weight"].shape
        vocab_size, decoder_embed = decoder["embed.weight"].shape
        hidden_size = decoder["lstm.weight_hh_l0"].shape[1]
    except (KeyError, ValueError):
        raise LegacyImportError("the checkpoints lack the tutorial's linear/embed/lstm weights") from None
    num_layers = sum(1 for k in decoder if re.fullmatch(r"lstm\.weight_ih_l\d+", k))
    if feature_size != 2048 or "resnet.7.2.conv3.weight" not in encoder or "resnet.6.35.conv1.weight" not in encoder:
        raise LegacyImportError("the encoder checkpoint is not the tutorial's ResNet-152 EncoderCNN")
    if decoder_embed != embed_size:
        raise LegacyImportError(f"encoder embeds to {embed_size} but the decoder expects {decoder_embed}")
    if vocab_size != len(vocab):
        raise LegacyImportError(f"the decoder has {vocab_size} words but vocab.pkl has {len(vocab)}")
    config = ModelConfig(backbone="resnet152", vocab_size=vocab_size, embed_size=int(embed_size),
                         hidden_size=int(hidden_size), num_layers=num_layers, max_length=TUTORIAL_MAX_LENGTH,
                         **TUTORIAL_PREPROCESSING)
    model = ShowAndTell(config)
    state = {re.sub(r"^resnet\.", "encoder.backbone.", re.sub(r"^(linear|bn)\.", r"encoder.\1.", k)): v
             for k, v in encoder.items()}
    state.update({f"decoder.{k}": v for k, v in decoder.items()})
    for name, value in model.state_dict().items():  # checkpoints from before PyTorch 0.4.1 lack these
        if name.endswith("num_batches_tracked"):
            state.setdefault(name, torch.zeros_like(value))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise LegacyImportError(f"the checkpoints do not fit the tutorial's architecture: {error}") from None
    return model.eval()


# sample.py: ``image.resize([224, 224], Image.LANCZOS)``, then ToTensor and ImageNet's mean/std.
TUTORIAL_PREPROCESSING = {"resize_mode": "squash", "resample": "lanczos", "image_size": 224, "resize": 224}

LEGACY_CARD = """# Show-and-Tell captioner imported from the PyTorch tutorial

ResNet-152 encoder (pooled features) and an LSTM decoder, converted from the PyTorch tutorial's
checkpoints (`{encoder}`, `{decoder}`, `{vocab}`) into the captioner format. When these are the
tutorial's published files, the model was trained on MS-COCO 2014 captions (5 epochs) and writes
COCO-style scene sentences; it inherits that data's biases (e.g. about people and gender) and
often names objects that are typical of a scene rather than present in the image.

Preprocessing: as the tutorial's `sample.py`, the whole image resized to 224 x 224 with the LANCZOS
filter, then ImageNet mean/std. Vocabulary: {vocab_size} tokens.
"""


def import_legacy(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike,
                  vocab_path: str | os.PathLike, out_dir: str | os.PathLike, card_note: str = "") -> Path:
    """Convert the tutorial's three files into a model repository at ``out_dir``."""
    vocab = read_legacy_vocabulary(vocab_path)
    model = legacy_state_to_model(_load_state_dict(encoder_path, "encoder"),
                                  _load_state_dict(decoder_path, "decoder"), vocab)
    body = LEGACY_CARD.format(encoder=Path(encoder_path).name, decoder=Path(decoder_path).name,
                              vocab=Path(vocab_path).name, vocab_size=len(vocab)) + (card_note and f"\n{card_note}")
    card = build_card(body, license="mit", datasets=["coco"])
    return save_model(model, vocab, out_dir, card=card)

