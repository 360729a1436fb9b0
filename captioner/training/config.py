"""Every setting of a training run in one dataclass, shared by ``train``, the library and the benchmarks.

A setting left as None is chosen from the data or from the starting model when the run starts
(``plan.py``, ``start.py``) and reported. ``TrainConfig`` is plain data: the command line fills it
from its arguments, and ``dataclasses.replace`` makes a variant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUNDLED = "bundled"  # ``init_from`` naming the bundled model
NEW_WORDS = ("add", "report")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_METRIC = "CIDEr"
CHEAP_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr")  # per epoch, without Java
UNKNOWN_LICENSE = "unknown"


@dataclass(frozen=True)
class CardInfo:
    """What the model card says about the data; the rest comes from the training run."""

    data: str = "unspecified data"  # a sentence or two: what the images and captions are
    datasets: tuple[str, ...] = ()  # names for the card's YAML ``datasets`` field
    license: str = UNKNOWN_LICENSE  # the trained weights' licence: the data's terms decide it, so ask
    limits: str = ("It describes only what its training captions describe, in their words and with "
                   "their biases; expect confident, wrong captions on images unlike its training data.")


@dataclass(frozen=True)
class Regularisation:
    """What keeps a decoder trained on a few hundred captions from memorising them.

    ``dropout`` is applied to the decoder's inputs (image and word embeddings) and to the LSTM's
    outputs; ``freeze_projection`` keeps the encoder's Linear + BatchNorm as initialised. The
    defaults are the best measured by ``benchmarks/finetune.py`` on held-out real photos
    (``docs/training.md``): fine-tuning gained from dropout, light weight decay and label
    smoothing; a new model did best without them once about 50 validation photos choose its epoch.
    """

    dropout: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    freeze_projection: bool = False


NO_REGULARISATION = Regularisation()
FROM_SCRATCH = NO_REGULARISATION
FINE_TUNING = Regularisation(dropout=0.3, weight_decay=1e-4, label_smoothing=0.1)


@dataclass(frozen=True)
class TrainConfig:
    """The settings of ``train``: where to start, the architecture, the steps, validation, the machine."""

    # where to start: the bundled model unless ``init_from`` names another, or ``from_scratch``
    init_from: str | None = None  # a model folder, owner/name[@revision] or "bundled"; None: the bundled model
    from_scratch: bool = False
    new_words: str = "add"  # words of the captions the starting vocabulary lacks: "add" or "report"
    keep_better_start: bool = True  # keep the starting model when no epoch beats it on validation
    # the architecture of a new model (None: the starting model's, from scratch the defaults below)
    backbone: str | None = None  # efficientnet-lite0 from scratch
    encoder_output: str | None = None  # features from scratch
    image_size: int | None = None
    embed_size: int | None = None  # 256 from scratch
    hidden_size: int | None = None  # 512 from scratch
    num_layers: int | None = None  # 1 from scratch
    max_length: int | None = None  # 20 from scratch
    min_word_count: int | None = None  # None: chosen to keep 97% of the caption words
    train_backbone: bool = False
    # steps (None: chosen from the data, ``plan.plan_steps``)
    epochs: int | None = None  # exactly this many, without early stopping
    max_epochs: int | None = None  # with early stopping: the most epochs
    patience: int | None = None
    batch_size: int | None = None
    warmup_steps: int | None = None
    lr: float = 1e-3
    backbone_lr: float | None = None  # with ``train_backbone`` (None: lr / 10)
    lr_schedule: str = "plateau"
    clip: float = 5.0
    regularisation: Regularisation | None = None  # None: FINE_TUNING or FROM_SCRATCH
    seed: int = 0
    resume: bool = False
    # validation
    metric: str | None = DEFAULT_METRIC  # None: the validation loss chooses the best epoch
    metric_images: int = 500
    # the machine
    device: str | None = None
    precision: str = "auto"
    compile: bool = False
    workers: int | None = None  # DataLoader workers (None: 0 for cached features, up to 4 for images)
    cache_dir: str | None = None  # the feature cache (None: ``features.default_cache_dir()``)
    extraction_batch_size: int = 32
    progress: bool = True
    card: CardInfo = field(default_factory=CardInfo)
