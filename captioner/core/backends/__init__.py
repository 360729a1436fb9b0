"""What runs the model: torch, or the ONNX Runtime export of its backbone and decoder step on the CPU."""
