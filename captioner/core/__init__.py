"""The runtime: vocabulary, images, encoders, the model, model sources and format, and the one
inference path every front end calls. Needs only requirements.txt; imports nothing outside ``core``."""
