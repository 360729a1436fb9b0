"""Serving the core to people: the app's shared batcher, batch captioning of uploads and folders.
Imports ``captioner.core`` only."""
