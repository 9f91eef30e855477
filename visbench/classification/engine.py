"""The pieces of a classification run, from timm where timm has them: model, loss, mixing, AMP, evaluation."""

from __future__ import annotations

import contextlib
import difflib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import timm
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import DataLoader

import visbench.backbones  # noqa: F401  (importing the package registers every visbench model with timm)
from visbench.backbones.naming import tokens_per_stage
from visbench.config import TrainConfig
from visbench.distributed import DistInfo, all_reduce_sum


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class Runtime:
    """Where and how a run's tensors are computed: the same for training and evaluation."""

    device: torch.device
    amp: torch.dtype | None  # autocast dtype, None = full precision (:func:`resolve_amp`)
    channels_last: bool
    info: DistInfo


def build_model(cfg: TrainConfig) -> nn.Module:
    """``timm.create_model`` with the config's classes, channels, drop path, input size and extra kwargs."""
    m = cfg.model
    kwargs: dict = dict(
        num_classes=cfg.data.num_classes,
        in_chans=cfg.data.in_chans,
        drop_path_rate=m.drop_path_rate,
        drop_rate=m.drop_rate,
        **m.kwargs,
    )
    if m.pretrained_file:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=m.pretrained_file))
    if not timm.is_model(m.name):
        close = difflib.get_close_matches(m.name, timm.list_models(), n=3)
        raise ValueError(f"model.name: '{m.name}' is not a registered timm model (closest: {close})")
    try:
        return timm.create_model(m.name, img_size=tuple(cfg.data.input_size), **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        # Hierarchical convnets (timm's mambaout) take any input size and have no img_size argument.
        return timm.create_model(m.name, **kwargs)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on GPUs that support it, else fp16 on GPU; full precision on CPU."""
    if amp == "none":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("train.amp=fp16 is not supported on CPU; use bf16 or none")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_mixup(cfg: TrainConfig) -> Mixup | None:
    a = cfg.aug
    if a.mixup <= 0 and a.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=a.mixup,
        cutmix_alpha=a.cutmix,
        prob=a.mixup_prob,
        switch_prob=a.mixup_switch_prob,
        label_smoothing=a.smoothing,
        num_classes=cfg.data.num_classes,
    )


def build_train_loss(cfg: TrainConfig, mixup: Mixup | None) -> nn.Module:
    if mixup is not None:
        return SoftTargetCrossEntropy()  # Mixup already folds label smoothing into the soft targets
    if cfg.aug.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.aug.smoothing)
    return nn.CrossEntropyLoss()


def to_device(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    if channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int
    img_per_s: float | None
    skipped: int

    def as_dict(self, prefix: str = "") -> dict[str, float | int | None]:
        return {
            f"{prefix}top1": self.top1,
            f"{prefix}top5": self.top5,
            f"{prefix}loss": self.loss,
            f"{prefix}count": self.count,
            f"{prefix}img_per_s": self.img_per_s,
        }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    runtime: Runtime,
    progress: Callable[[Iterator], Iterator] | None = None,
) -> EvalResult:
    """Top-1 / top-5 (percent) and loss over the whole split, summed over ranks; timed forward passes."""
    device = runtime.device
    was_training = model.training
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    loss_sum = correct1 = correct5 = count = skipped = 0.0
    timed_images, timed_seconds = 0, 0.0
    batches = iter(loader) if progress is None else progress(iter(loader))
    for index, (images, targets, n_skipped) in enumerate(batches):
        skipped += n_skipped
        if len(targets) == 0:
            continue
        images, targets = to_device(images, device, runtime.channels_last), targets.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with autocast(device, runtime.amp):
            logits = model(images)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index > 0:  # the first batch pays one-off costs (allocation, kernel selection)
            timed_seconds += time.perf_counter() - start
            timed_images += len(targets)
        logits = logits.float()
        loss_sum += criterion(logits, targets).item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += len(targets)
    loss_sum, correct1, correct5, count, skipped = all_reduce_sum(
        [loss_sum, correct1, correct5, count, skipped], runtime.info, device
    )
    model.train(was_training)
    if count == 0:
        raise RuntimeError("evaluation saw no readable images (empty or fully corrupt validation split)")
    return EvalResult(
        top1=100.0 * correct1 / count,
        top5=100.0 * correct5 / count,
        loss=loss_sum / count,
        count=int(count),
        img_per_s=(timed_images / timed_seconds) if timed_seconds > 0 else None,
        skipped=int(skipped),
    )


def count_params_and_macs(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, int | None]:
    """``params``, ``macs`` (PyTorch's convention) and ``macs_fvcore`` (fvcore's: norms counted too).

    Batch 1, through ``visbench.backbones.complexity``; a counter failure gives None for that count
    rather than losing a finished run.
    """
    from visbench.backbones.complexity import count_macs, count_params

    counts: dict[str, int | None] = {"params": int(count_params(model))}
    for key, convention in (("macs", "torch"), ("macs_fvcore", "fvcore")):
        try:
            counts[key] = int(count_macs(model, input_size, convention=convention))
        except Exception:  # a MAC counter failure must not lose a finished training run
            counts[key] = None
    return counts


def mixer_tokens(
    model_name: str, input_size: list[int], model_kwargs: dict[str, Any] | None = None
) -> int | None:
    """Tokens the first token mixer sees (``naming.tokens_per_stage``); None for a plain timm model.

    ``model_kwargs`` are the ``create_model`` arguments: a ``patch_size`` there changes an isotropic
    body's token count.
    """
    try:
        return tokens_per_stage(model_name, input_size, (model_kwargs or {}).get("patch_size"))[0]
    except ValueError:  # a name naming does not know (e.g. timm's resnet50): result.json omits tokens
        return None
