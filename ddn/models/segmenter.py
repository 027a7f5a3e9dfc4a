"""Bridge and segmentation networks of DecoupledNet (paper sections 3.2-3.3).

Bridge: BN(pool5) and BN(saliency), concatenated -> k x k conv 2048 -> BN -> ReLU ->
1x1 conv 2048 -> BN -> ReLU -> k x k transposed conv back to pool5's channels and size
-> BN -> ReLU, with k = 7 (or pool5's size when smaller), as the classifier's fc6.

Segmenter: the mirror of the 13 VGG convolutions, each stage opened by unpooling with
the classifier's own switches; every "deconvolution" followed by BN + ReLU; a final
1x1 conv to 2 channels (0 = background, 1 = foreground) at input resolution.

The reference's 3x3 deconvolutions (stride 1, pad 1) are written as Conv2d: a
ConvTranspose2d with stride 1 and padding 1 is a Conv2d with the kernel flipped and its
in/out channels swapped, i.e. the same family of functions, and Conv2d gets the faster
kernels (cuDNN, channels_last). Convolutions that feed a BN have no bias (BN's shift
replaces it). New weights are N(0, 0.01) as in the reference; BN after every layer
makes that scale harmless (a 13-layer stack still trains: tests/test_models.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddn.models.classifier import MAX_FC6_KERNEL, ClassifierOutput
from ddn.models.vgg import scaled

# Output channels of the mirrored 3x3 convolutions, stage 5 first (paper Fig. 2).
DECODER_CFG = [(512, 512, 512), (512, 512, 256), (256, 256, 128), (128, 64), (64, 64)]
NEW_WEIGHT_STD = 0.01
SALIENCY_BN_EPS = 1e-9


def init_new_weights(module: nn.Module, std: float = NEW_WEIGHT_STD) -> None:
    """The reference's init for new layers: N(0, std) weights, zero biases, BN 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def unpool(x: Tensor, switches: Tensor, size: torch.Size) -> Tensor:
    """Max-unpooling 2x2: each value goes back where its pool found the maximum.

    `size` is the pre-pool (H, W), so odd sizes (inputs not a multiple of 32) round-trip.
    """
    return F.max_unpool2d(x, switches, kernel_size=2, stride=2, output_size=size[-2:])


def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def fc_block(in_channels: int, out_channels: int, hidden: int, k: int) -> nn.Sequential:
    """k x k conv to `hidden` (pool5 -> 4x4) -> 1x1 conv -> k x k transposed conv back,
    each with BN + ReLU: the bridge's body, and DeconvNet's fc6 / fc7 / deconv-fc6."""
    return nn.Sequential(
        *_conv_bn_relu(nn.Conv2d(in_channels, hidden, k, bias=False), hidden),
        *_conv_bn_relu(nn.Conv2d(hidden, hidden, 1, bias=False), hidden),
        *_conv_bn_relu(nn.ConvTranspose2d(hidden, out_channels, k, bias=False), out_channels),
    )


class Bridge(nn.Module):
    """g^l = bridge(pool5, f_cls): the class-specific activation map (B, C5, h, w)."""

    def __init__(self, in_channels: int, width: float = 1.0, pool5_size: int = 10) -> None:
        super().__init__()
        k = min(MAX_FC6_KERNEL, pool5_size)
        hidden = scaled(2048, width)
        self.bn_pool5 = nn.BatchNorm2d(in_channels)
        # Saliency values are gradients, tiny: per-channel variance ~2e-6 at init for a
        # full-size head (measured), below BN's default eps of 1e-5, which would then set
        # the scale instead of the data. A small eps keeps BN(saliency) at unit variance.
        self.bn_saliency = nn.BatchNorm2d(in_channels, eps=SALIENCY_BN_EPS)
        self.body = fc_block(2 * in_channels, in_channels, hidden, k)
        init_new_weights(self)

    def forward(self, pool5: Tensor, sal: Tensor) -> Tensor:
        x = torch.cat([self.bn_pool5(pool5), self.bn_saliency(sal)], dim=1)
        return self.body(x)


class Segmenter(nn.Module):
    """Unpooling + mirrored 3x3 convolutions from g^l to logits (B, out_channels, H, W).

    2 channels (figure/ground) in DecoupledNet; C+1 in the DeconvNet baseline.
    """

    def __init__(self, width: float = 1.0, batch_norm: bool = True, out_channels: int = 2) -> None:
        super().__init__()
        in_channels = scaled(512, width)
        stages = []
        for outs in DECODER_CFG:
            layers: list[nn.Module] = []
            for out in (scaled(c, width) for c in outs):
                conv = nn.Conv2d(in_channels, out, 3, padding=1, bias=not batch_norm)
                layers += _conv_bn_relu(conv, out) if batch_norm else [conv, nn.ReLU(True)]
                in_channels = out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)  # stage 5 first
        self.classify = nn.Conv2d(in_channels, out_channels, 1)
        init_new_weights(self)

    def forward(self, g: Tensor, switches: list[Tensor], sizes: list[torch.Size]) -> Tensor:
        """`switches` / `sizes` of pool1..pool5, as VGGEncoder returns them."""
        x = g
        for stage, sw, size in zip(self.stages, reversed(switches), reversed(sizes), strict=True):
            x = stage(unpool(x, sw, size))
        return self.classify(x)


class DecoupledSegmenter(nn.Module):
    """What train-seg trains: bridge + segmenter, on a frozen classifier's outputs."""

    def __init__(self, in_channels: int, width: float = 1.0, pool5_size: int = 10) -> None:
        super().__init__()
        self.bridge = Bridge(in_channels, width, pool5_size)
        self.segmenter = Segmenter(width, batch_norm=True)

    def forward(self, cls_out: ClassifierOutput, sal: Tensor) -> Tensor:
        """(B, 2, H, W) logits; row b pairs cls_out's row b with saliency row b."""
        # The classifier is frozen: nothing flows back into it even if its outputs carry
        # a graph (the caller forgot no_grad).
        g = self.bridge(cls_out.pool5.detach(), sal.detach())
        return self.segmenter(g, cls_out.switches, cls_out.sizes)
