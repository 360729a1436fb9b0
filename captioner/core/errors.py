"""Exception types raised by the captioner library.

Every error a user can cause (a bad image, a missing model, a malformed file) is a
``CaptionerError`` with a message meant to be shown as is: the CLI prints it, the app
wraps it in ``gr.Error``.
"""


class CaptionerError(Exception):
    """Base class for every error the library raises on purpose."""


class ImageError(CaptionerError, ValueError):
    """The input is not a usable image (not an image, empty, truncated, too large, a bomb)."""


class ModelSourceError(CaptionerError):
    """A model source (local directory, Hub repo, bundled model) could not be found or fetched."""


class ModelFormatError(CaptionerError):
    """A model directory's files are missing, malformed, inconsistent or unsafe."""


class LegacyImportError(CaptionerError):
    """A tutorial checkpoint could not be imported (wrong layout, unsafe pickle, ...)."""


class DatasetError(CaptionerError):
    """A caption data set could not be read."""
