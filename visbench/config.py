"""Training configs: a typed schema, YAML loading with ``_base_`` inheritance, validation and overrides.

A config file is YAML with the sections of :class:`TrainConfig` (``model``, ``data``, ``aug``, ``optim``,
``sched``, ``train``). Every key is checked against the schema: an unknown or misspelt key is a
:class:`ConfigError` that names it and the closest valid key. ``_base_: other.yaml`` (a path relative to
the file, or a list of them) merges the base first, as mmdetection's configs do. Overrides are
``section.key=value`` strings whose value is parsed as YAML and then type-checked like the file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from visbench.resources import resolve_config


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key (and file) at fault."""


@dataclass
class ModelConfig:
    name: str = "gated_cnn_tiny"
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0
    # Extra keyword arguments for timm.create_model (e.g. dims / depths to shrink a body).
    kwargs: dict = field(default_factory=dict)
    pretrained_file: Union[str, None] = None


@dataclass
class DataConfig:
    # "imagefolder" (ImageNet layout: <root>/train/<class>/*, <root>/val/<class>/*) or "fashion_mnist".
    dataset: str = "imagefolder"
    root: str = "/data/imagenet"
    train_split: str = "train"
    val_split: str = "val"
    input_size: list = field(default_factory=lambda: [224, 224])
    in_chans: int = 3
    num_classes: int = 1000
    # Use the first N (class-balanced for Fashion-MNIST) images of each split; null = all.
    train_subset: Union[int, None] = None
    val_subset: Union[int, None] = None
    workers: int = 8
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    mean: Union[list, None] = None
    std: Union[list, None] = None
    pin_memory: bool = True


@dataclass
class AugConfig:
    auto_augment: Union[str, None] = "rand-m9-mstd0.5-inc1"
    hflip: float = 0.5
    color_jitter: float = 0.4
    scale: list = field(default_factory=lambda: [0.08, 1.0])
    reprob: float = 0.25
    remode: str = "pixel"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    # Simple train transform (resize + flip + normalize) instead of random-resized-crop: small images.
    simple: bool = False


@dataclass
class OptimConfig:
    opt: str = "adamw"
    # lr = base_lr * (global batch) / base_batch_size unless lr is given explicitly.
    base_lr: float = 4e-3
    base_batch_size: int = 4096
    lr: Union[float, None] = None
    weight_decay: float = 0.05
    momentum: float = 0.9
    betas: Union[list, None] = None
    eps: Union[float, None] = None
    clip_grad: Union[float, None] = None


@dataclass
class SchedConfig:
    sched: str = "cosine"
    epochs: int = 300
    warmup_epochs: float = 20
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5


@dataclass
class TrainLoopConfig:
    batch_size: int = 128  # per process
    grad_accum_steps: int = 1
    amp: str = "auto"  # auto | bf16 | fp16 | none
    channels_last: bool = True
    ema: bool = True
    ema_decay: float = 0.9999
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False
    # Stop each epoch after this many optimizer steps (quick tests / smoke runs); null = full epoch.
    max_steps_per_epoch: Union[int, None] = None
    log_interval: int = 50
    eval_interval: int = 1  # epochs
    output_dir: str = "runs/train"
    keep_checkpoints: int = 1
    progress: bool = True
    threads: Union[int, None] = None  # torch.set_num_threads on CPU


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- checking


def closest_key_hint(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean '{match[0]}'?" if match else ""


def _allowed_types(annotation: Any) -> tuple[type, ...]:
    """The runtime types a dataclass annotation allows (None included for Optional)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        out: tuple[type, ...] = ()
        for arg in typing.get_args(annotation):
            out += _allowed_types(arg)
        return out
    if annotation is type(None):
        return (type(None),)
    return (origin or annotation,)


def _check_value(where: str, value: Any, annotation: Any) -> Any:
    allowed = _allowed_types(annotation)
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{where}: expected {_type_names(allowed)}, got boolean {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed and int not in allowed:
        return float(value)
    if isinstance(value, str) and float in allowed and str not in allowed:
        # YAML 1.1 reads "4e-3" (no dot) as a string; accept it for float keys.
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, tuple) and list in allowed:
        return list(value)
    if not isinstance(value, allowed):
        raise ConfigError(f"{where}: expected {_type_names(allowed)}, got {type(value).__name__} {value!r}")
    return value


def _type_names(types_: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types_)


def build_dataclass(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(
                f"unknown config key '{path}'{closest_key_hint(str(key), names)} (valid: {', '.join(names)})"
            )
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = build_dataclass(annotation, value, path)
        else:
            kwargs[key] = _check_value(path, value, annotation)
    return cls(**kwargs)


def _validate_semantics(cfg: TrainConfig) -> None:
    """Checks that need more than one key or a value range."""
    if cfg.data.dataset not in ("imagefolder", "fashion_mnist"):
        raise ConfigError(
            f"data.dataset: expected 'imagefolder' or 'fashion_mnist', got {cfg.data.dataset!r}"
        )
    size = cfg.data.input_size
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ConfigError(f"data.input_size: expected [height, width] of positive integers, got {size!r}")
    if cfg.train.amp not in ("auto", "bf16", "fp16", "none"):
        raise ConfigError(f"train.amp: expected one of auto, bf16, fp16, none; got {cfg.train.amp!r}")
    for path, value in (
        ("train.batch_size", cfg.train.batch_size),
        ("train.grad_accum_steps", cfg.train.grad_accum_steps),
        ("sched.epochs", cfg.sched.epochs),
        ("data.num_classes", cfg.data.num_classes),
        ("data.in_chans", cfg.data.in_chans),
    ):
        if value < 1:
            raise ConfigError(f"{path}: expected a positive integer, got {value}")
    if cfg.train.max_steps_per_epoch is not None and cfg.train.max_steps_per_epoch < 1:
        raise ConfigError(
            f"train.max_steps_per_epoch: expected null or >= 1, got {cfg.train.max_steps_per_epoch}"
        )


# --------------------------------------------------------------------------------------------- loading


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml_with_bases(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping, merging the files named by its ``_base_`` key first.

    A top-level ``configs/...`` path that is not in the working directory is read from the packaged
    configs (:func:`visbench.resources.resolve_config`).
    """
    if not _seen:
        try:
            path = resolve_config(path)
        except FileNotFoundError as err:
            raise ConfigError(f"config file not found: {path}") from err
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(str(p) for p in _seen)}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at top level, got {type(raw).__name__}")
    bases = raw.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = deep_merge(merged, load_yaml_with_bases(path.parent / base, (*_seen, path.resolve())))
    return deep_merge(merged, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 0.001); the value is parsed as YAML (typed)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {err}") from err
    return key.strip().split("."), parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: '{key}' is not a section")
        node[keys[-1]] = value
    return out


def config_from_dict(raw: dict, source: str = "config") -> TrainConfig:
    try:
        cfg = build_dataclass(TrainConfig, raw, "")
        _validate_semantics(cfg)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Load and validate a config file (or the defaults when ``path`` is None) with overrides applied."""
    raw = load_yaml_with_bases(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path) if path is not None else "config")


def dump_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
