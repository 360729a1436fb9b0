"""The backbones: real packaged ImageNet weights, frozen, both kinds of output."""

import pytest
import skimage.data
import torch

from captioner.core.model.config import ModelConfig
from captioner.core.model.encoders import BACKBONES, build_backbone, load_pretrained_weights, optimize_for_inference
from captioner.core.images.preprocess import build_preprocessor
from captioner.core.images.decode import load_image
from captioner.core.model.network import ShowAndTell

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


@pytest.fixture(scope="module")
def lite0():
    backbone = build_backbone("efficientnet-lite0", "class_log_probs")
    load_pretrained_weights(backbone, "efficientnet-lite0")
    return backbone.eval()


def _pixels(array, name="efficientnet-lite0"):
    spec = BACKBONES[name]
    return build_preprocessor(spec.resize, spec.image_size, spec.mean, spec.std)(load_image(array)).unsqueeze(0)


@pytest.mark.slow
def test_lite0_ranks_the_right_imagenet_class_first_on_real_photos(lite0):
    with torch.inference_mode():
        coffee = lite0(_pixels(skimage.data.coffee()))[0]
        chelsea = lite0(_pixels(skimage.data.chelsea()))[0]
    assert coffee.argmax().item() in (ESPRESSO, CUP)
    assert chelsea.argmax().item() in CAT_CLASSES
    assert torch.allclose(coffee.exp().sum(), torch.tensor(1.0), atol=1e-4)  # log-probabilities


def test_pooled_features_mode_shares_the_weights(lite0):
    features = build_backbone("efficientnet-lite0", "features")
    features.net.load_state_dict(lite0.net.state_dict())
    with torch.inference_mode():
        out = features.eval()(_pixels(skimage.data.coffee()))
    assert out.shape == (1, 1280) and out.abs().sum() > 0


@pytest.mark.slow
def test_encoder_backbone_is_frozen_unless_asked():
    model = ShowAndTell(ModelConfig(backbone="efficientnet-lite0", vocab_size=10, embed_size=8, hidden_size=8))
    images = torch.randn(2, 3, 224, 224)
    model.encoder(images).sum().backward()
    assert all(p.grad is None for p in model.encoder.backbone.parameters())
    assert model.encoder.linear.weight.grad is not None
    model.encoder.train_backbone = True
    model.encoder(images).sum().backward()
    assert any(p.grad is not None for p in model.encoder.backbone.parameters())


@pytest.mark.parametrize("name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_larger_lite_backbones_load_when_installed(name):
    pytest.importorskip(BACKBONES[name].weights_package)
    backbone = build_backbone(name, "class_log_probs")
    load_pretrained_weights(backbone, name)
    with torch.inference_mode():
        out = backbone.eval()(_pixels(skimage.data.chelsea(), name))
    assert out.argmax().item() in CAT_CLASSES


def test_optimized_for_inference_keeps_outputs_and_top5(lite0, example_photos):
    import copy

    fast = optimize_for_inference(copy.deepcopy(lite0))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    pixels = torch.cat([_pixels(path) for path in example_photos.values()])
    with torch.inference_mode():
        reference, out = lite0(pixels), fast(pixels)
    assert (reference - out).abs().max() < 1e-3
    assert torch.equal(reference.topk(5).indices, out.topk(5).indices)
    with pytest.raises(ValueError, match="eval mode"):
        optimize_for_inference(copy.deepcopy(lite0).train())


@pytest.mark.slow
def test_optimized_resnet_computes_the_same_function():
    torch.manual_seed(0)
    backbone = build_backbone("resnet152", "features").eval()
    for module in backbone.modules():  # trained-like statistics instead of the identity defaults
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(1.0, 4.0)
            module.running_mean.normal_(0, 0.1)
    images = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        reference = backbone(images)
        out = optimize_for_inference(backbone)(images)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert torch.allclose(out, reference, rtol=1e-3, atol=1e-4 * reference.abs().max().item())
