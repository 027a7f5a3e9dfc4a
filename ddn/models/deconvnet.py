"""The DeconvNet baseline of the paper's Table 1: a (C+1)-class segmenter, no decoupling.

The same networks as DecoupledNet, joined end to end instead of through saliency:
VGG-16 convolutions (`VGGEncoder`, same ``arch`` / ``width`` / ``weights`` handling as the
classifier) -> fc6 / fc7 / deconv-fc6 (`fc_block`, the bridge's layers on pool5 alone)
-> the mirrored deconvolution network (`Segmenter`) with C+1 output channels, unpooling
with the encoder's own switches. Trained on the strong images only, every layer at
once (Noh et al., ICCV 2015, without their two-stage training or ensembling).
"""

from __future__ import annotations

from torch import Tensor

from ddn.models.classifier import MAX_FC6_KERNEL
from ddn.models.segmenter import Segmenter, fc_block, init_new_weights
from ddn.models.vgg import VGGNet, load_vgg_weights, scaled
from pipeline.errors import UserError

KIND = "deconvnet"
CONFIG_KEYS = VGGNet.CONFIG_KEYS


class DeconvNet(VGGNet):
    """(B, 3, S, S) normalised images -> (B, C+1, S, S) logits (0 = background)."""

    def __init__(
        self, num_classes: int, arch: str = "vgg16", width: float = 1.0, input_size: int = 320
    ) -> None:
        super().__init__(num_classes, arch, width, input_size)
        if input_size % 32:
            raise UserError(f"input size must be a positive multiple of 32, got {input_size}")
        c5 = self.encoder.out_channels
        k = min(MAX_FC6_KERNEL, input_size // 32)
        self.fc = fc_block(c5, c5, scaled(2048, width), k)
        init_new_weights(self.fc)
        self.segmenter = Segmenter(width, batch_norm=True, out_channels=num_classes + 1)

    def load_pretrained(self, weights: str) -> None:
        """Encoder init as the classifier's: 'imagenet', 'none' or a VGG state dict."""
        load_vgg_weights(self.encoder, weights, self.arch)

    def forward(self, x: Tensor) -> Tensor:
        pool5, switches, sizes = self.encoder(x)
        return self.segmenter(self.fc(pool5), switches, sizes)


def build_deconvnet(config: dict) -> DeconvNet:
    """A DeconvNet from a run's config (keys num_classes, arch, width, input_size)."""
    return DeconvNet.from_config(config, "deconvnet")
