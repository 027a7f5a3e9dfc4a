"""Loading trained run directories into modules for inference.

A finished run holds ``model.pt`` (`ddn.train.run_files.save_model`): ``{"model": state_dict,
"config": {...}}``. A classifier's config (``trainer: train-cls``) has what
`build_classifier` reads (num_classes, arch, width, input_size) and ``classes`` (the C
object classes, or C+1 with background first); a segmenter's (``trainer: train-seg``)
``model`` is a `DecoupledSegmenter` state dict and its config records ``width``,
``pool5_size`` (or ``input_size``) and the classifier run it was trained with
(``cls_run``). A DeconvNet baseline's (``trainer: train-deconvnet``, ``kind:
deconvnet``) holds a whole `DeconvNet` and needs no classifier. Files without
``trainer`` are recognised by an optional ``kind`` key or their state-dict keys.
Anything missing is a one-line `UserError` naming file and key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddn.model_file import MODEL, load_model, state_dict_mismatch
from ddn.models import Classifier, DecoupledSegmenter, build_classifier
from ddn.models.deconvnet import CONFIG_KEYS, DeconvNet, build_deconvnet
from pipeline.errors import UserError
from pipeline.shards import sha256_file

TRAINERS = {"classifier": "train-cls", "segmenter": "train-seg", "deconvnet": "train-deconvnet"}
# Wrappers that prefix state-dict keys: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# A state-dict key that only this kind of model has, for files that do not say.
# DeconvNet before the classifier: both have encoder keys, only DeconvNet has fc.*.
_KEY_OF_KIND = {"deconvnet": "fc.", "classifier": "encoder.", "segmenter": "bridge."}


@dataclass
class Models:
    """A classifier and the segmenter trained on it, ready for `ddn.inference.segment`."""

    classifier: Classifier
    segmenter: DecoupledSegmenter
    classes: list[str]  # C+1 names, background first
    cls_config: dict[str, Any]
    seg_config: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def model_path(run: str | Path) -> Path:
    """``RUN/model.pt``, or RUN itself when it names the file."""
    run = Path(run)
    return run if run.is_file() else run / MODEL


def read_run(run: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """(state dict, config, file) of a finished run, checked to hold a `kind` model."""
    path = model_path(run)
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: run directory not found")
    blob = load_model(path)
    if not isinstance(blob["model"], dict) or not isinstance(blob["config"], dict):
        raise UserError(f"{path}: not a ddn model file (model and config must be dicts)")
    state = {_strip_prefix(k): v for k, v in blob["model"].items()}
    config = dict(blob["config"])
    found = _kind_of(blob, config, state)
    if found != kind:
        raise UserError(f"{path}: holds a {found or 'unknown'} model, expected a {kind}")
    return state, config, path


def _kind_of(blob: dict, config: dict, state: dict) -> str | None:
    if "kind" in blob:
        return str(blob["kind"])
    if "kind" in config:
        return str(config["kind"])
    for kind, trainer in TRAINERS.items():
        if config.get("trainer") == trainer:
            return kind
    for kind, prefix in _KEY_OF_KIND.items():
        if any(k.startswith(prefix) for k in state):
            return kind
    return None


def _strip_prefix(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _require(config: dict[str, Any], key: str, path: Path) -> Any:
    if key not in config:
        raise UserError(f"{path}: config lacks {key!r}")
    return config[key]


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = state_dict_mismatch(e)
        raise UserError(f"{path}: weights do not fit the configured model ({detail})") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
    if problems:
        shown = "; ".join(problems)
        raise UserError(f"{path}: weights do not match the configured model ({shown})")


def run_classes(config: dict[str, Any], num_classes: int, path: Path) -> list[str]:
    """The C+1 class names of a classifier run; generic names when none were recorded."""
    classes = config.get("classes")
    if classes is None:
        print(f"warning: {path}: no class names recorded; using class1..", file=sys.stderr)
        return ["background", *(f"class{k}" for k in range(1, num_classes + 1))]
    classes = [str(c) for c in classes]
    if len(classes) == num_classes:  # object classes only
        classes = ["background", *classes]
    if len(classes) != num_classes + 1:
        raise UserError(
            f"{path}: config lists {len(classes)} classes for a {num_classes}-class classifier"
        )
    return classes


def load_classifier(
    run: str | Path, device: torch.device | str = "cpu"
) -> tuple[Classifier, list[str], dict[str, Any]]:
    """A trained classifier in eval mode on `device`, its C+1 class names and config."""
    state, config, path = read_run(run, "classifier")
    for key in ("num_classes", "arch", "width", "input_size"):
        _require(config, key, path)
    classifier = build_classifier(config)
    _load_state(classifier, state, path)
    classes = run_classes(config, classifier.num_classes, path)
    return classifier.to(device).eval(), classes, config


def load_segmenter(
    run: str | Path, classifier: Classifier, device: torch.device | str = "cpu"
) -> tuple[DecoupledSegmenter, dict[str, Any]]:
    """Bridge + segmenter of a segmenter run, built to sit on `classifier`."""
    state, config, path = read_run(run, "segmenter")
    width = float(_require(config, "width", path))
    if "pool5_size" in config:
        pool5 = int(config["pool5_size"])
    elif "input_size" in config:
        pool5 = int(config["input_size"]) // 32
    else:
        raise UserError(f"{path}: config lacks 'pool5_size' (or 'input_size')")
    if pool5 != classifier.pool5_size:
        raise UserError(
            f"{path}: segmenter was trained for a {pool5}x{pool5} pool5, the classifier gives "
            f"{classifier.pool5_size}x{classifier.pool5_size} (input {classifier.input_size}); "
            "use the classifier run it was trained with"
        )
    segmenter = DecoupledSegmenter(classifier.encoder.out_channels, width, pool5)
    _load_state(segmenter, state, path)
    return segmenter.to(device).eval(), config


@dataclass
class BaselineModels:
    """A DeconvNet baseline run, ready for `ddn.inference.segment_deconvnet`."""

    model: DeconvNet
    classes: list[str]  # C+1 names, background first
    config: dict[str, Any]


def run_kind(run: str | Path) -> str | None:
    """'classifier', 'segmenter', 'deconvnet' or None: what a finished run holds."""
    path = model_path(run)
    blob = load_model(path)
    state = blob["model"] if isinstance(blob["model"], dict) else {}
    config = blob["config"] if isinstance(blob["config"], dict) else {}
    return _kind_of(blob, config, {_strip_prefix(k): v for k, v in state.items()})


def load_deconvnet(run: str | Path, device: torch.device | str = "cpu") -> BaselineModels:
    """A trained DeconvNet baseline (``train-seg --baseline deconvnet``) in eval mode."""
    state, config, path = read_run(run, "deconvnet")
    for key in CONFIG_KEYS:
        _require(config, key, path)
    model = build_deconvnet(config)
    _load_state(model, state, path)
    classes = run_classes(config, model.num_classes, path)
    return BaselineModels(model.to(device).eval(), classes, config)


def load_for_inference(
    cls_run: str | Path | None, seg_run: str | Path, device: torch.device | str = "cpu"
) -> Models | BaselineModels:
    """What `ddn eval` and `ddn predict` take: a DeconvNet baseline run alone (a classifier
    run is not needed and is refused), or a segmenter run with its classifier run."""
    if run_kind(seg_run) == "deconvnet":
        if cls_run is not None:
            raise UserError(f"{seg_run}: a DeconvNet baseline run takes no --cls (drop it)")
        return load_deconvnet(seg_run, device)
    if cls_run is None:
        raise UserError(f"{seg_run}: a DecoupledNet segmenter run needs --cls CLASSIFIER_RUN")
    return load_models(cls_run, seg_run, device)


def load_models(
    cls_run: str | Path, seg_run: str | Path, device: torch.device | str = "cpu"
) -> Models:
    """Classifier and segmenter runs, checked to belong together."""
    classifier, classes, cls_config = load_classifier(cls_run, device)
    segmenter, seg_config = load_segmenter(seg_run, classifier, device)
    seg_file, cls_file = model_path(seg_run), model_path(cls_run)
    seg_classes = seg_config.get("classes")
    if seg_classes is not None and list(seg_classes) not in (classes, classes[1:]):
        raise UserError(
            f"{seg_file}: trained for classes {list(seg_classes)}, the classifier "
            f"{cls_file} has {classes[1:]}"
        )
    _check_pairing(seg_config, seg_file, cls_file)
    return Models(classifier, segmenter, classes, cls_config, seg_config)


def _check_pairing(seg_config: dict[str, Any], seg_file: Path, cls_file: Path) -> None:
    """Warn when the segmenter was trained on another classifier than the one given.

    train-seg records the classifier's model.pt checksum (``classifier.sha256``) and
    run path; the checksum survives moving runs between machines, a path does not.
    A mismatch is only warned about: pairing them may be a deliberate experiment.
    """
    info = seg_config.get("classifier")
    recorded_sha = info.get("sha256") if isinstance(info, dict) else None
    if recorded_sha:
        if sha256_file(cls_file) != recorded_sha:
            print(
                f"warning: {seg_file}: trained on a different classifier than {cls_file} "
                "(checksums differ); results may be meaningless",
                file=sys.stderr,
            )
        return
    recorded = seg_config.get("cls_run") or seg_config.get("cls")
    if recorded and _resolved(recorded) != _resolved(cls_file.parent):
        print(
            f"warning: {seg_file}: trained on classifier {recorded}, used with {cls_file.parent}",
            file=sys.stderr,
        )


def _resolved(path: str | Path) -> Path:
    p = Path(path)
    return (p.parent if p.is_file() else p).resolve()
