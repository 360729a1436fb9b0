"""The Show-and-Tell model: a CNN encoder and an LSTM decoder (greedy and beam search: ``search``).

As in the classic tutorial, the image embedding is the LSTM's first input and the decoder
then predicts ``<start> w1 ... wn <end>``; generation takes no shortcut around that first
step, so an imported tutorial checkpoint decodes exactly as the tutorial's own code does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from captioner.core.model.config import ModelConfig
from captioner.core.model.encoders import build_backbone, optimize_for_inference, output_size
from captioner.core.model.search import DecoderSteps

_BACKBONE_LOCK = threading.Lock()


class Encoder(nn.Module):
    """Backbone (frozen unless ``train_backbone``) -> Linear -> BatchNorm1d, the tutorial's EncoderCNN.

    ``load_backbone``: the backbone is left out (``backbone`` is None) until ``require_backbone`` first
    needs it and builds it with this loader: a model whose backbone runs elsewhere (the ONNX Runtime
    backend, from an exported graph) then never builds or reads it unless it is asked for (explanations).
    """

    def __init__(self, config: ModelConfig, *, load_backbone: Callable[[], nn.Module] | None = None):
        super().__init__()
        self._load_backbone = load_backbone
        self.backbone: nn.Module | None = build_backbone(config.backbone, config.encoder_output) \
            if load_backbone is None else None
        self.linear = nn.Linear(output_size(config.backbone, config.encoder_output), config.embed_size)
        self.bn = nn.BatchNorm1d(config.embed_size, momentum=0.01)
        self.train_backbone = False

    def require_backbone(self) -> nn.Module:
        """The backbone, built now by the loader when the model was made without it."""
        if self.backbone is not None:
            return self.backbone
        with _BACKBONE_LOCK:  # module-wide: a lock attribute would stop the model from being copied
            if self.backbone is None:
                self.backbone = self._load_backbone()
                self._load_backbone = None
            return self.backbone

    def optimize_for_inference(self) -> None:
        """Make the eval-mode backbone faster for inference (``encoders.optimize_for_inference``): same
        outputs up to float rounding, but it cannot be trained and its ``state_dict`` is no longer the
        model file's."""
        self.backbone = optimize_for_inference(self.require_backbone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.backbone_features(images))

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            return self.require_backbone()(images)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(features))


class Decoder(nn.Module):
    """Embedding -> LSTM -> Linear, the tutorial's DecoderRNN."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.embed_size)
        self.lstm = nn.LSTM(config.embed_size, config.hidden_size, config.num_layers, batch_first=True)
        self.linear = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, embeddings: torch.Tensor, captions: torch.Tensor, lengths: list[int], *,
                dropout: float = 0.0) -> torch.Tensor:
        """Teacher forcing: logits for the packed targets ``pack_padded_sequence(captions, lengths)``.

        ``dropout`` (training only) zeroes that share of the LSTM's inputs and outputs."""
        inputs = torch.cat((embeddings.unsqueeze(1), self.embed(captions)), 1)
        inputs = nn.functional.dropout(inputs, dropout, self.training)
        packed = pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        hiddens, _ = self.lstm(packed)
        return self.linear(nn.functional.dropout(hiddens.data, dropout, self.training))

    def step(self, inputs: torch.Tensor, state=None):
        """One time step for a batch: inputs ``(B, E)`` -> log-probabilities ``(B, V)`` and the new state.

        Runs the LSTM's own weights through ``torch.lstm_cell`` layer by layer: the same
        arithmetic as ``self.lstm``, whose CPU (oneDNN) path costs several times more per call
        than the step itself when called for one time step at a time.
        """
        if state is None:
            zeros = inputs.new_zeros(self.lstm.num_layers, inputs.size(0), self.lstm.hidden_size)
            state = (zeros, zeros)
        hiddens, cells = [], []
        for layer, weights in enumerate(self.lstm.all_weights):
            hidden, cell = torch.lstm_cell(inputs, (state[0][layer], state[1][layer]), *weights)
            hiddens.append(hidden)
            cells.append(cell)
            inputs = hidden
        return torch.log_softmax(self.linear(inputs), dim=1), (torch.stack(hiddens), torch.stack(cells))


def packed_targets(captions: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """The targets that line up with ``Decoder.forward``'s output."""
    return pack_padded_sequence(captions, lengths, batch_first=True, enforce_sorted=False).data


class ShowAndTell(nn.Module):
    """The encoder and the decoder; ``load_backbone``: see ``Encoder``."""

    def __init__(self, config: ModelConfig, *, load_backbone: Callable[[], nn.Module] | None = None):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, load_backbone=load_backbone)
        self.decoder = Decoder(config)

    def forward(self, images: torch.Tensor, captions: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        return self.decoder(self.encoder(images), captions, lengths)

    @property
    def steps(self) -> DecoderSteps:
        """The torch decoder's step and embeddings, for ``search``."""
        return DecoderSteps(self.decoder.step, self.decoder.embed)
