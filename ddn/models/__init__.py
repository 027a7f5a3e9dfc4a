"""The networks of DecoupledNet: classifier, saliency, bridge and segmenter."""

from __future__ import annotations

import torch
from torch import Tensor

from ddn.models.classifier import Classifier, ClassifierOutput, build_classifier
from ddn.models.saliency import saliency, seed_subsets
from ddn.models.segmenter import Bridge, DecoupledSegmenter, Segmenter
from ddn.models.vgg import ARCHS, VGG16_CFG, VGGEncoder, load_vgg_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

__all__ = [
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16_CFG",
    "Bridge",
    "Classifier",
    "ClassifierOutput",
    "DecoupledSegmenter",
    "Segmenter",
    "VGGEncoder",
    "build_classifier",
    "load_vgg_weights",
    "normalize",
    "saliency",
    "seed_subsets",
]


def normalize(x_uint8: Tensor) -> Tensor:
    """0..255 images (..., 3, H, W) -> float32, ImageNet mean/std (torchvision's scale).

    Keeps the device and the memory format (channels_last in, channels_last out).
    """
    if x_uint8.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(x_uint8.shape)}")
    kw = {"device": x_uint8.device, "dtype": torch.float32}
    mean = torch.tensor(IMAGENET_MEAN, **kw).mul_(255).view(3, 1, 1)
    inv_std = torch.tensor(IMAGENET_STD, **kw).mul_(255).reciprocal_().view(3, 1, 1)
    return (x_uint8.to(torch.float32) - mean) * inv_std
