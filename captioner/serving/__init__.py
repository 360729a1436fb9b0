"""Scaling out and deploying: caption collections with Ray Data, serve with Ray Serve (which mounts
``web``), deploy the app as a Hugging Face Space. Imports ``core`` and ``web``."""
