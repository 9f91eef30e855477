"""Next-pixel modelling: the long, causal task where MambaOut expects an SSM to pay off.

Each 28×28 Fashion-MNIST image is read as a 784-token sequence in row-major order. A causal 1-D model
(``seq_*`` bodies with a causal order) predicts every pixel's quantised intensity from the pixels
before it, with the body's own head turned into a categorical head per token (``num_classes=levels``,
``global_pool=""``) and the loss on every token. The metric is the negative log-likelihood of held-out
test images in **bits per pixel**.

Quantisation: an 8-bit intensity ``v`` becomes level ``floor(v * levels / 256)`` (16 levels: 0-15,
each 16 intensity steps wide). The model reads the sequence shifted right by one: token ``t`` holds
level ``q[t-1] / (levels - 1)`` (in [0, 1]) and token 0 holds the start value -1, so the output at
token ``t`` has seen only pixels ``< t`` and predicts ``q[t]``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
import yaml
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

import visbench.backbones  # noqa: F401  (registers the seq_* models with timm)
from visbench.backbones.naming import describe

START_VALUE = -1.0
DEFAULT_LEVELS = 16

__all__ = [
    "DEFAULT_LEVELS",
    "bits_per_pixel",
    "NextPixelConfig",
    "build_next_pixel_model",
    "evaluate_bits_per_pixel",
    "next_pixel_logits",
    "quantize",
    "shifted_inputs",
    "test_batches",
    "train_batches",
    "train_next_pixel",
    "run_next_pixel",
]


def quantize(images: np.ndarray | torch.Tensor, levels: int = DEFAULT_LEVELS) -> torch.Tensor:
    """uint8 images (N, H, W) -> levels (N, H*W) int64 in ``[0, levels)``, row-major."""
    if not 2 <= levels <= 256:
        raise ValueError(f"levels must be in [2, 256], got {levels}")
    # A copy: the loaded arrays are read-only, which torch warns about when sharing them.
    tensor = torch.as_tensor(np.array(images, copy=True) if isinstance(images, np.ndarray) else images)
    if tensor.dtype != torch.uint8 or tensor.dim() != 3:
        raise ValueError(f"expected uint8 images (N, H, W), got {tensor.dtype} {tuple(tensor.shape)}")
    return (tensor.flatten(1).long() * levels) // 256


def shifted_inputs(targets: torch.Tensor, levels: int, image_size: tuple[int, int]) -> torch.Tensor:
    """Levels (B, L) -> input (B, 1, H, W): token t holds level t-1 scaled to [0, 1], token 0 the start."""
    values = targets.float() / (levels - 1)
    start = torch.full_like(values[:, :1], START_VALUE)
    shifted = torch.cat([start, values[:, :-1]], dim=1)
    return shifted.view(-1, 1, *image_size)


def build_next_pixel_model(name: str, levels: int = DEFAULT_LEVELS, **kwargs) -> nn.Module:
    """A registered causal 1-D body with a categorical head per token.

    ``ValueError`` for a non-causal or non-sequence model: it would see the pixel it predicts.
    """
    info = describe(name)
    if info.body != "sequence" or info.order != "causal":
        raise ValueError(
            f"model {name!r} ({info.body}, order {info.order}): next-pixel modelling needs a causal "
            "sequence body (seq_*_causal or seq_gated_cnn)"
        )
    return timm.create_model(name, num_classes=levels, global_pool="", **kwargs)


def next_pixel_logits(model: nn.Module, targets: torch.Tensor, levels: int) -> torch.Tensor:
    """Logits (B, L, levels) for every pixel, each from the pixels before it."""
    side = math.isqrt(targets.shape[1])
    if side * side != targets.shape[1]:
        raise ValueError(f"expected square images as (B, H*W) levels, got {tuple(targets.shape)}")
    return model(shifted_inputs(targets, levels, (side, side)))


def bits_per_pixel(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over all pixels, in bits (natural-log cross-entropy / ln 2)."""
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return nats / math.log(2.0)


def train_batches(targets: torch.Tensor, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` batches drawn by a seeded permutation per pass: the same order for every model of a seed."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(targets), generator=generator)])
        batch, order = order[:batch_size], order[batch_size:]
        yield targets[batch]


def test_batches(targets: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """The held-out set in order, in batches."""
    for start in range(0, len(targets), batch_size):
        yield targets[start : start + batch_size]


@dataclass
class NextPixelConfig:
    """One next-pixel run: the recipe is the same for every model of a comparison, only ``model`` varies."""

    model: str = "seq_ssm_causal_tiny"
    levels: int = DEFAULT_LEVELS
    steps: int = 150
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10
    seed: int = 0
    eval_batch_size: int = 250
    test_images: int | None = None  # the first N test images (None: all 10k)
    model_kwargs: dict = field(default_factory=dict)


@torch.no_grad()
def evaluate_bits_per_pixel(model: nn.Module, targets: torch.Tensor, levels: int, batch_size: int) -> float:
    """Bits per pixel of the whole held-out set (each image weighted alike)."""
    model.eval()
    total, count = 0.0, 0
    for batch in test_batches(targets, batch_size):
        total += float(bits_per_pixel(next_pixel_logits(model, batch, levels), batch)) * len(batch)
        count += len(batch)
    return total / count


def train_next_pixel(cfg: NextPixelConfig, train_images: np.ndarray, test_images: np.ndarray) -> dict:
    """Train ``cfg.model`` on ``train_images`` (uint8 N×28×28) and score ``test_images``.

    Returns ``{"bits_per_pixel", "train_bits_per_pixel" (mean of the last 10 steps), "train_seconds",
    "model"}``; the model is seeded with ``cfg.seed`` and sees batches in the seed's order.
    """
    torch.manual_seed(cfg.seed)
    model = build_next_pixel_model(cfg.model, cfg.levels, **cfg.model_kwargs)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=cfg.steps,
        warmup_t=cfg.warmup_steps,
        warmup_lr_init=cfg.lr * 0.01,
        t_in_epochs=False,
    )
    train_targets = quantize(train_images, cfg.levels)
    recent: list[float] = []
    start = time.perf_counter()
    model.train()
    for step, batch in enumerate(train_batches(train_targets, cfg.batch_size, cfg.steps, cfg.seed)):
        loss = bits_per_pixel(next_pixel_logits(model, batch, cfg.levels), batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{cfg.model}: non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step_update(step + 1)
        recent = (recent + [loss.item()])[-10:]
    train_seconds = time.perf_counter() - start
    test_bpp = evaluate_bits_per_pixel(
        model, quantize(test_images, cfg.levels), cfg.levels, cfg.eval_batch_size
    )
    return {
        "model": model,
        "bits_per_pixel": test_bpp,
        "train_bits_per_pixel": sum(recent) / len(recent),
        "train_seconds": train_seconds,
    }


def run_next_pixel(cfg: NextPixelConfig, run_dir: Path, root: str | Path | None = None) -> Path:
    """Train and score ``cfg`` on Fashion-MNIST (``root``), writing ``run_dir/result.json`` (task next_pixel).

    The result carries params, MACs (one forward of one image), ``tokens`` = 784 and
    ``extra.train_wall_s``; ``config.yaml`` beside it holds the recipe. A finished run (result present)
    is kept: runs are short, so a killed one restarts from its first step.
    """
    from visbench.atomic import atomic_write_text
    from visbench.backbones.complexity import count_macs
    from visbench.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist
    from visbench.results import make_result, now_iso, write_result

    run_dir = Path(run_dir)
    done = run_dir / "result.json"
    if done.is_file():
        return done
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(asdict(cfg), sort_keys=False))
    start = now_iso()
    train_images, _ = load_fashion_mnist(root or DEFAULT_ROOT, "train")
    test_images, _ = load_fashion_mnist(root or DEFAULT_ROOT, "test")
    if cfg.test_images is not None:
        test_images = test_images[: cfg.test_images]
    out = train_next_pixel(cfg, train_images, test_images)
    model = out["model"]
    height, width = train_images.shape[1:]
    result = make_result(
        model=cfg.model,
        task="next_pixel",
        dataset="fashion_mnist",
        input_size=[height, width],
        params=sum(p.numel() for p in model.parameters()),
        macs=count_macs(model, (1, 1, height, width)),
        metrics={
            "bits_per_pixel": round(out["bits_per_pixel"], 6),
            "train_bits_per_pixel": round(out["train_bits_per_pixel"], 6),
        },
        start_time=start,
        seed=cfg.seed,
        tokens=height * width,
        config_path=config_path,
        extra={
            "train_wall_s": round(out["train_seconds"], 2),
            "levels": cfg.levels,
            "steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "train_images": len(train_images),
            "test_images": len(test_images),
            "model_kwargs": dict(cfg.model_kwargs),
        },
    )
    return write_result(run_dir, result)
