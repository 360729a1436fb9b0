"""The names of the 1000 ImageNet-1k classes, in the classifiers' output order.

``imagenet_classes.json`` is torchvision's public list
(``torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]``, checked by the tests),
stored beside this module because importing torchvision costs seconds of start-up for one list.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

_NAMES_FILE = Path(__file__).with_name("imagenet_classes.json")


@functools.cache
def _names() -> tuple[str, ...]:
    return tuple(json.loads(_NAMES_FILE.read_text(encoding="utf-8")))


def imagenet_class_names() -> list[str]:
    """The 1000 human-readable class names in the classifiers' order."""
    return list(_names())
