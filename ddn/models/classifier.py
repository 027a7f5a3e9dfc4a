"""The classification network: VGG-16 convolutions and a convolutional fc6/fc7/score head.

As in the reference, fc6 is a k x k convolution (k = 7, or pool5's size when that is
smaller), fc7 and score are 1 x 1, there is no dropout, and the score map is pooled two
ways: by average (sigmoid -> class probabilities) and by max (the saliency's target).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddn.models.vgg import VGGNet, load_vgg_weights, scaled

MAX_FC6_KERNEL = 7  # ImageNet's fc6 sees a 7x7 pool5


@dataclass
class ClassifierOutput:
    pool5: Tensor
    switches: list[Tensor]  # max-pool indices of pool1..pool5
    sizes: list[torch.Size]  # spatial (H, W) before pool1..pool5
    scores: Tensor  # (B, C, h, w) score map
    logits: Tensor  # (B, C) average-pooled scores (sigmoid -> probabilities)
    max_scores: Tensor  # (B, C) max-pooled scores (for saliency)

    def repeat_interleave(self, repeats: int) -> ClassifierOutput:
        """Each row `repeats` times in a row: the K+1 seeds of one image as one batch."""

        def rep(t: Tensor) -> Tensor:
            return t.repeat_interleave(repeats, dim=0)

        return replace(
            self,
            pool5=rep(self.pool5),
            switches=[rep(s) for s in self.switches],
            scores=rep(self.scores),
            logits=rep(self.logits),
            max_scores=rep(self.max_scores),
        )


class Classifier(VGGNet):
    """Multi-label classifier of DecoupledNet (paper section 3.1)."""

    def __init__(
        self, num_classes: int, arch: str = "vgg16", width: float = 1.0, input_size: int = 320
    ) -> None:
        super().__init__(num_classes, arch, width, input_size)
        self.pool5_size = input_size // 32
        c5 = self.encoder.out_channels
        c6 = scaled(4096, width)
        k = min(MAX_FC6_KERNEL, self.pool5_size)
        self.head = nn.Sequential(
            OrderedDict(
                fc6=nn.Conv2d(c5, c6, kernel_size=k),
                relu6=nn.ReLU(inplace=True),
                fc7=nn.Conv2d(c6, c6, kernel_size=1),
                relu7=nn.ReLU(inplace=True),
                score=nn.Conv2d(c6, num_classes, kernel_size=1),
            )
        )
        self._init_head()

    def _init_head(self) -> None:
        # The reference's only new layer is score, N(0, 0.01). fc6/fc7 came from ImageNet
        # there; here they may be new too, so they get He init: at width 1 that is
        # N(0, 0.0089) for fc6 (about the reference's 0.01), and unlike a fixed 0.01 it
        # keeps activations O(1) for the tiny widths used in tests.
        for conv in (self.head.fc6, self.head.fc7):
            nn.init.normal_(conv.weight, std=math.sqrt(2.0 / conv.weight[0].numel()))
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.head.score.weight, std=0.01)
        nn.init.zeros_(self.head.score.bias)

    @property
    def fc6_kernel(self) -> int:
        return self.head.fc6.kernel_size[0]

    def load_pretrained(self, weights: str) -> None:
        """`load_vgg_weights` for the encoder, plus fc6/fc7 from a full vgg16 state dict."""
        load_vgg_weights(self.encoder, weights, self.arch, head=self.head)

    def forward(self, x: Tensor) -> ClassifierOutput:
        pool5, switches, sizes = self.encoder(x)
        scores = self.head_scores(pool5)
        return ClassifierOutput(
            pool5=pool5,
            switches=switches,
            sizes=sizes,
            scores=scores,
            logits=scores.mean(dim=(2, 3)),
            max_scores=scores.amax(dim=(2, 3)),
        )

    def head_scores(self, pool5: Tensor) -> Tensor:
        """Score map (B, C, h, w) from pool5; h = pool5's height - fc6 kernel + 1."""
        k = self.fc6_kernel
        if pool5.shape[-1] < k or pool5.shape[-2] < k:
            raise ValueError(
                f"pool5 {tuple(pool5.shape[-2:])} is smaller than the fc6 kernel {k}: "
                f"inputs must be at least {32 * k} px for this classifier"
            )
        return self.head(pool5)

    def window_scores(self, windows: Tensor) -> Tensor:
        """Scores (U, C) of fc6-kernel-sized pool5 windows (U, C5, k, k).

        The head at a single position: head_scores(windows)[..., 0, 0], computed as the
        three matrix products it amounts to (on CPU a conv with a 1x1 output runs several
        times slower than the same GEMM). Saliency evaluates the head this way.
        """
        head = self.head
        x = F.relu(F.linear(windows.flatten(1), head.fc6.weight.flatten(1), head.fc6.bias))
        x = F.relu(F.linear(x, head.fc7.weight.flatten(1), head.fc7.bias))
        return F.linear(x, head.score.weight.flatten(1), head.score.bias)

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Backbone at `lr`, the head at `lr * head_lr_mult` (the reference's 10x).

        `lr_mult` is kept in each group so that a schedule can rescale both together.
        """
        return [
            {"params": list(self.encoder.parameters()), "lr": lr, "lr_mult": 1.0,
             "name": "backbone"},
            {"params": list(self.head.parameters()), "lr": lr * head_lr_mult,
             "lr_mult": head_lr_mult, "name": "head"},
        ]  # fmt: skip


def build_classifier(config: dict) -> Classifier:
    """A Classifier from a run's config.json (keys num_classes, arch, width, input_size)."""
    return Classifier.from_config(config, "classifier")
