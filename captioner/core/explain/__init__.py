"""Explanations: per-word probabilities of a caption, per-word Grad-CAM heatmaps, and overlays of them."""
