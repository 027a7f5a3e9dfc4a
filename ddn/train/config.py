"""The trainers' settings: `ClsConfig` (train-cls), `SegConfig` (train-seg) and
`DeconvConfig` (train-seg --baseline deconvnet).

The one place their defaults and help live: the click options of ``ddn train-cls`` /
``train-seg`` take both from these fields (`pipeline.settings.setting`;
tests/test_defaults.py checks it). A module of its own, without torch, so the command line
can read them without loading the trainers.

What every trainer shares is `TrainerConfig`; what the two trainers on the strong crops
share is `StrongConfig`. Keyword-only: a subclass's required field (SegConfig.cls) may
follow the base's defaults, and nobody builds a config by position. A run's config.json
lists the fields in this order (base first); resuming compares settings by name
(`ddn.train.run_files.changed_settings`), so runs saved in the older order still resume.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.lock import wait_help
from pipeline.settings import setting


@dataclass(kw_only=True)
class TrainerConfig:
    """What a run reads and writes, and how it runs rather than what it learns."""

    data: str = setting(help="A directory made by `ddn prepare`.")
    out: str = setting(help="The run directory.")
    device: str = setting("auto", help="auto: cuda when available.")
    workers: int = setting(4, help="DataLoader worker processes.")
    seed: int = setting(0, help="Seeds the init, the data order and the augmentation.")
    resume: bool = setting(False, help="Continue from the latest checkpoint in --out.")
    compile: bool = setting(False, help="torch.compile the model.")
    amp: bool = setting(True, help="CUDA: bf16 autocast (off: float32).")
    channels_last: bool = setting(True, help="CUDA: channels_last memory format.")
    log_every: int = setting(20, help="Steps between metrics.csv rows.")
    tensorboard: bool = setting(
        True,
        help="TensorBoard event files beside metrics.csv (when TensorBoard is installed: "
        "pip install 'ddn[tensorboard]').",
    )
    ckpt_every: int = setting(500, help="Steps between checkpoints.")
    wait: bool = setting(False, help=wait_help("--out"))


@dataclass(kw_only=True)
class ClsConfig(TrainerConfig):
    arch: str = setting(
        "vgg16", help="vgg16 reproduces the paper; vgg16_bn trains small models from scratch."
    )
    width: float = setting(1.0, help="Channel fraction (1.0 = VGG-16).")
    input_size: int = setting(320, help="Network input side (a multiple of 32).")
    batch: int = setting(32, help="Images per step per process.")
    iters: int | None = setting(None, help="Optimizer steps (overrides --epochs).")
    epochs: float = setting(20.0, help="Passes over the weak set (when --iters is not given).")
    optimizer: str = setting(
        "sgd",
        help="sgd (momentum) as the reference; adamw for small models from scratch. Not adamw "
        "for pretrained VGG-16 without BN at --lr 1e-3: it diverges to a constant output.",
    )
    lr: float = setting(1e-3, help="Backbone learning rate.")
    head_lr_mult: float = setting(10.0, help="fc6/fc7/score learn this many times faster.")
    momentum: float = setting(0.9, help="SGD only.")
    weight_decay: float = setting(5e-4, help="SGD: L2 penalty; adamw: decoupled decay.")
    warmup: int | None = setting(None, help="Linear warm-up steps [default: min(500, iters/10)].")
    decay: str = setting(
        "cosine",
        help="After warm-up: cosine to 0, x0.1 at 2/3 of the run (step), or constant "
        "then linear to 0 over the last 20% (wsd).",
    )
    pos_weight: str = setting(
        "auto",
        help="BCE weight of each class's positive images: 'auto' sets it from the class's "
        "share f of the training images as sqrt((1-f)/f), in [1, 10]; 1 is the reference's "
        "plain loss.",
    )
    pad_square: bool = setting(
        True,
        help="Random crops of the image zero-padded to a square, the view the classifier gets "
        "at inference (off: crops of the image itself).",
    )
    weights: str = setting(
        "imagenet",
        help="Encoder init: imagenet (torchvision download), a .pth state dict, or none.",
    )
    # 10 is ddn.train.cls.MAX_VALIDATIONS, not imported: that module loads torch.
    val_every: int | None = setting(
        None, help="Steps between validations [default: an epoch, at most 10 times a run]."
    )


@dataclass(kw_only=True)
class StrongConfig(TrainerConfig):
    """The settings `ddn.train.strong.train_on_strong_crops` reads: train-seg's, with or
    without --baseline."""

    # The shared settings in the words of a trainer that cuts crops (defaults unchanged).
    workers: int = setting(
        TrainerConfig.workers, help="DataLoader worker processes (cpu crop path)."
    )
    seed: int = setting(TrainerConfig.seed, help="Seeds the init, the data order and the crops.")
    compile: bool = setting(TrainerConfig.compile, help="torch.compile the networks.")

    batch: int = setting(16, help="Crops per micro-batch per process.")
    accum: int | None = setting(
        None, help="Micro-batches per step [default: 64 / (batch x processes)]."
    )
    iters: int | None = setting(
        None,
        help="Steps [default: the reference's for the strong split: 5/class 5,500, "
        "10: 7,500, 25: 15,000, full: 17,500]; the decay step scales with it.",
    )
    decay_step: int | None = setting(
        None, help="Step of the x0.1 decay [default: the reference's, scaled]."
    )
    optimizer: str = setting(
        "sgd",
        help="sgd with momentum (the reference) or adamw (tiny models from scratch, e.g. the "
        "demo's, learn faster with it; pass a smaller --lr, e.g. 1e-3).",
    )
    lr: float = setting(0.01, help="Learning rate.")
    momentum: float = setting(0.9, help="SGD only.")
    weight_decay: float = setting(5e-4, help="SGD: L2 penalty; adamw: decoupled decay.")
    fg_weight: str = setting(
        "auto",
        help="Loss weight of foreground pixels (--baseline: of every object class): 'auto' "
        "sets it from the training crops' foreground share f as sqrt((1-f)/f), in [1, 10]; "
        "1 is the reference's plain cross-entropy.",
    )
    bn_batches: int = setting(
        100, help="Batches for the final BN statistics re-estimation (0: skip)."
    )
    crop_path: str = setting(
        "auto", help="gpu: crops cut on the device (auto on CUDA); cpu: DataLoader workers."
    )
    device_crops_budget: float = setting(
        0.25,
        help="--crop-path auto: the strong set's sources go on the device only while they "
        "take at most this fraction of its free memory (0 < f <= 1); beyond it, DataLoader "
        "workers cut the crops.",
    )


# The help of SegConfig's and DeconvConfig's own fields is in pieces: train-seg's one
# option for both tells each trainer's value (cli/train_seg.py).


@dataclass(kw_only=True)
class SegConfig(StrongConfig):
    cls: str = setting(help="A finished `ddn train-cls` run.")
    input_size: int | None = setting(
        None,  # None: the classifier's
        help="DecoupledNet crops at the classifier's input size (any other is refused). "
        "Boxes are warped to 350/320 of it.",
    )
    width: float | None = setting(
        None,  # None: the classifier's
        help="must equal the classifier's (the segmenter unpools with its switches)",
    )
    weights: str = setting(
        "none", help="Init of bridge + segmenter: none, or a train-seg run / model.pt"
    )


@dataclass(kw_only=True)
class DeconvConfig(StrongConfig):
    arch: str = setting("vgg16", help="encoder layout, as train-cls")
    input_size: int = setting(320, help="crop side")
    width: float = setting(1.0, help="encoder/decoder channel fraction")
    weights: str = setting("imagenet", help="encoder init, as train-cls: imagenet, none or a .pth")
