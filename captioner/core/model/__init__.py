"""The model: vocabulary, config, pretrained encoders, the encoder + decoder network, greedy and beam search."""
