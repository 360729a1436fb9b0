"""Images: safe decoding of untrusted input, the decode memory budget, and preprocessing for the model."""
