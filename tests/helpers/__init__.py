"""Helpers the tests share: small models, a local Hub server, running the app, data sets."""
