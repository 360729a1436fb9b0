"""The runtime, in parts: ``model``, ``repository`` (model files and the Hub), ``images``, ``backends``,
``explain``, and the one inference path every front end calls (``inference``). Needs only
requirements.txt; imports nothing outside ``core``."""
