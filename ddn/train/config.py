"""The trainers' settings: `ClsConfig` (train-cls), `SegConfig` (train-seg) and
`DeconvConfig` (train-seg --baseline deconvnet).

The one place their defaults live: the click options of ``ddn train-cls`` / ``train-seg``
take theirs from these fields (tests/test_defaults.py checks it). A module of its own,
without torch, so the command line can read the defaults without loading the trainers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClsConfig:
    data: str
    out: str
    arch: str = "vgg16"
    width: float = 1.0
    input_size: int = 320
    batch: int = 32
    iters: int | None = None  # optimizer steps; None: from epochs
    epochs: float = 20.0
    lr: float = 1e-3
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # sgd (the reference) | adamw (tiny models from scratch)
    warmup: int | None = None  # steps; None: min(500, iters // 10)
    decay: str = "cosine"
    pos_weight: str = "auto"  # BCE weight of a class's positives; "1": the reference
    pad_square: bool = True  # random crops of the zero-padded square, as at inference
    weights: str = "imagenet"
    device: str = "auto"
    workers: int = 4
    seed: int = 0
    resume: bool = False
    compile: bool = False
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    log_every: int = 20
    tensorboard: bool = True  # event files beside metrics.csv, when installed
    ckpt_every: int = 500
    val_every: int | None = None  # steps; None: an epoch, at most MAX_VALIDATIONS a run
    wait: bool = False  # for the run directory's lock, if another command holds it


@dataclass
class SegConfig:
    data: str
    cls: str
    out: str
    input_size: int | None = None  # the classifier's; any other is refused
    width: float | None = None  # None: the classifier's
    batch: int = 16
    accum: int | None = None  # None: 64 / (batch x world size)
    iters: int | None = None  # None: the reference table for the strong split
    decay_step: int | None = None  # None: the table's, scaled with iters
    optimizer: str = "sgd"  # sgd (the reference) | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    fg_weight: str = "auto"  # "auto": from the crops' foreground share; "1": the reference
    bn_batches: int = 100
    weights: str = "none"
    device: str = "auto"
    workers: int = 4
    seed: int = 0
    resume: bool = False
    compile: bool = False
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    crop_path: str = "auto"
    log_every: int = 20
    tensorboard: bool = True  # event files beside metrics.csv, when installed
    ckpt_every: int = 500
    wait: bool = False  # for the run directory's lock, if another command holds it


@dataclass
class DeconvConfig:
    data: str
    out: str
    arch: str = "vgg16"
    width: float = 1.0
    input_size: int = 320
    batch: int = 16
    accum: int | None = None  # None: EFFECTIVE_BATCH / (batch x world size)
    iters: int | None = None  # None: the reference table for the strong split
    decay_step: int | None = None  # None: the table's, scaled with iters
    optimizer: str = "sgd"  # sgd (the reference) | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    fg_weight: str = "auto"  # every object class's loss weight; as train-seg's
    bn_batches: int = 100
    weights: str = "imagenet"  # encoder init, as train-cls: imagenet | none | a .pth
    device: str = "auto"
    workers: int = 4
    seed: int = 0
    resume: bool = False
    compile: bool = False
    amp: bool = True
    channels_last: bool = True
    crop_path: str = "auto"
    log_every: int = 20
    tensorboard: bool = True  # event files beside metrics.csv, when installed
    ckpt_every: int = 500
    wait: bool = False  # for the run directory's lock, if another command holds it
