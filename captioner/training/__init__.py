"""Training and evaluation: caption data-set readers, the feature cache, the training loop, metrics.
Imports ``captioner.core`` only; the metrics need the ``train`` extra (pycocoevalcap)."""
