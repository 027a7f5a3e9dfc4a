"""VGG-16 convolutions with max-pool switches, and loading pretrained weights into them.

The module layout is torchvision's `vgg16().features` / `vgg16_bn().features` exactly, so
at width 1 the state-dict keys `features.N.weight` of torchvision (and of the ImageNet
file in ../shared/weights) load one to one. The only difference is that the max pools
return their indices: the segmenter unpools with the classifier's own switches.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline.errors import UserError

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
ARCHS = ("vgg16", "vgg16_bn")
_SHOWN_KEYS = 4  # how many offending keys an error message names


def scaled(channels: int, width: float) -> int:
    """Channels of a layer at a width multiplier; every layer keeps at least one."""
    return max(1, round(channels * width))


class VGGEncoder(nn.Module):
    """The 13 convolutions and 5 max pools of VGG-16, optionally with batch norm."""

    def __init__(self, width: float = 1.0, batch_norm: bool = False) -> None:
        super().__init__()
        if width <= 0:
            raise UserError(f"width must be positive, got {width}")
        self.width = float(width)
        self.batch_norm = batch_norm
        layers: list[nn.Module] = []
        in_channels = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, return_indices=True))
                continue
            out_channels = scaled(v, width)
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.out_channels: int = in_channels
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation, so `--weights none` trains like torchvision's.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[torch.Size]]:
        """pool5, the switches of pool1..pool5, and the spatial (H, W) before each pool.

        Sizes are spatial only so that they stay valid when rows are repeated (K+1 seeds
        of one image); unpooling to them makes inputs that are not multiples of 32 work.
        """
        switches: list[Tensor] = []
        sizes: list[torch.Size] = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                sizes.append(x.shape[-2:])
                x, indices = layer(x)
                switches.append(indices)
            else:
                x = layer(x)
        return x, switches, sizes


class VGGNet(nn.Module):
    """What the classifier and the DeconvNet baseline share: C classes, a square input
    and a VGG-16 encoder chosen by (arch, width), checked once and saved as the config
    that rebuilds the network (`from_config`)."""

    CONFIG_KEYS = ("num_classes", "arch", "width", "input_size")

    def __init__(self, num_classes: int, arch: str, width: float, input_size: int) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise UserError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
        if num_classes < 1:
            raise UserError(f"num_classes must be at least 1, got {num_classes}")
        if input_size < 32:
            raise UserError(f"input size must be at least 32 (five 2x2 pools), got {input_size}")
        self.num_classes, self.arch = num_classes, arch
        self.width, self.input_size = float(width), input_size
        self.encoder = VGGEncoder(width, batch_norm=arch == "vgg16_bn")

    def config(self) -> dict:
        """The keys `from_config` reads back."""
        return {k: getattr(self, k) for k in self.CONFIG_KEYS}

    @classmethod
    def from_config(cls, config: dict, what: str):
        """The network from a run's config.json; `what` names it in the error."""
        missing = [k for k in cls.CONFIG_KEYS if k not in config]
        if missing:
            raise UserError(f"{what} config lacks {', '.join(missing)}")
        return cls(
            num_classes=int(config["num_classes"]),
            arch=str(config["arch"]),
            width=float(config["width"]),
            input_size=int(config["input_size"]),
        )


# ---------------------------------------------------------------- pretrained weights


def load_vgg_weights(
    encoder: VGGEncoder, weights: str, arch: str, head: nn.Module | None = None
) -> None:
    """Load 'imagenet' (torchvision's weights API), a .pth state dict, or nothing ('none').

    A path holds torchvision vgg16/vgg16_bn keys: `features.*` only (as in
    ../shared/weights/vgg16_imagenet_features.pth) or the full model. The encoder must
    match exactly; a mismatch is a one-line UserError naming the offending keys.
    With `head` (the classifier's fc6/fc7/score Sequential), a full model's
    `classifier.0` / `classifier.3` linear layers become the fc6 (k x k) / fc7 (1 x 1)
    convolutions, as the reference converted ImageNet's fc layers, when the shapes fit
    (fc6 needs a 7x7 kernel, i.e. pool5 of at least 7x7); otherwise they are skipped with
    a warning. Other `classifier.*` keys (the 1000-way layer) are ignored.
    """
    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    if weights == "none":
        return
    if weights == "imagenet":
        if encoder.width != 1.0:
            raise UserError(
                f"--weights imagenet needs --width 1 (got {encoder.width:g}); use --weights "
                "none or a state dict saved at the same width"
            )
        state = _imagenet_state_dict(arch)
        source = f"torchvision {arch} ImageNet weights"
    else:
        state = _read_state_dict(Path(weights))
        source = str(weights)
    _load_features(encoder, state, source, arch)
    if head is not None:
        _convert_fc_layers(head, state, source)


def _imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """torchvision's IMAGENET1K_V1 weights (downloaded once into the torch hub cache)."""
    from torchvision.models import VGG16_BN_Weights, VGG16_Weights

    enum = VGG16_BN_Weights if arch == "vgg16_bn" else VGG16_Weights
    try:
        return enum.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as e:  # no network, proxy, corrupt cache: all the user's to fix
        raise UserError(
            f"could not get torchvision's {arch} ImageNet weights ({_first_line(e)}); "
            "download them where the internet is reachable and pass --weights PATH, or "
            "--weights none (random init)"
        ) from e


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    hint = "expected 'imagenet', 'none' or a .pth state dict"
    if not path.is_file():
        raise UserError(f"{path}: weights file not found ({hint})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # torch's long weights_only advice: not for our users
        raise UserError(
            f"{path}: not a weights-only PyTorch state dict (not a torch.save file, or it "
            f"holds Python objects besides tensors; {hint})"
        ) from e
    except Exception as e:  # a truncated zip, an unreadable file
        raise UserError(f"{path}: not a weights-only PyTorch state dict ({_first_line(e)})") from e
    if not isinstance(state, Mapping) or not state:
        raise UserError(f"{path}: not a state dict (holds a {type(state).__name__}; {hint})")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise UserError(
            f"{path}: not a state dict (entries that are not tensors: {_names(map(str, bad))})"
        )
    return state


def _load_features(encoder: VGGEncoder, state: Mapping[str, Tensor], source: str, arch: str):
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    expected = encoder.state_dict()
    # Files saved by older torch lack BN's step counter; BatchNorm fills it in itself.
    missing = [k for k in expected if k not in features and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not k.startswith("classifier.")]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in features.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source}: does not fit a {arch} encoder at width {encoder.width:g}"]
        if missing:
            parts.append(f"missing {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_names(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch (file vs model) {_names(mismatched)}")
        has_bn = any(k.endswith("running_mean") for k in features)
        if features and has_bn != encoder.batch_norm:
            parts.append(f"the file looks like {'vgg16_bn' if has_bn else 'vgg16'}: check --arch")
        raise UserError("; ".join(parts))
    encoder.load_state_dict(features, strict=True)


def _convert_fc_layers(head: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    if "classifier.0.weight" not in state:
        return
    pairs = [("fc6", "classifier.0"), ("fc7", "classifier.3")]
    convs: list[nn.Conv2d] = [getattr(head, name) for name, _ in pairs]
    fits = all(
        f"{key}.weight" in state
        and f"{key}.bias" in state
        and state[f"{key}.weight"].shape == (conv.out_channels, conv.weight[0].numel())
        and state[f"{key}.bias"].shape == conv.bias.shape
        for conv, (_, key) in zip(convs, pairs, strict=True)
    )
    if not fits:
        warnings.warn(
            f"{source}: classifier.0/classifier.3 do not fit fc6 "
            f"{tuple(convs[0].weight.shape)} / fc7 {tuple(convs[1].weight.shape)} "
            "(fc6 needs a 7x7 kernel: input size >= 224); fc6/fc7 keep their new init",
            stacklevel=3,
        )
        return
    with torch.no_grad():
        for conv, (_, key) in zip(convs, pairs, strict=True):
            # torchvision flattens pool5 as (C, H, W): the linear weight's columns are
            # exactly a (C, k, k) conv kernel.
            conv.weight.copy_(state[f"{key}.weight"].reshape(conv.weight.shape))
            conv.bias.copy_(state[f"{key}.bias"])


def _names(keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else shown


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."
