"""Small random models in the real format."""

from __future__ import annotations

import torch

from captioner.core.model.config import ModelConfig
from captioner.core.model.network import ShowAndTell
from captioner.core.model.vocabulary import SPECIAL_TOKENS, Vocabulary

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
