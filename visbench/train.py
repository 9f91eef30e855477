"""`visbench train CONFIG [section.key=value ...]`: train a classifier, resumable, single process or DDP.

Run folder (``train.output_dir`` or ``--output``): ``config.yaml`` (the resolved config),
``metrics.jsonl`` (one JSON object per log step / epoch / evaluation), ``checkpoints/`` (see
:mod:`visbench.checkpoint`), ``result.json`` at the end, ``tb/`` when TensorBoard is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from visbench import checkpoint as ckpt
from visbench.classification.engine import (
    EvalResult,
    NonFiniteLossError,
    autocast,
    build_mixup,
    build_model,
    build_train_loss,
    count_params_and_macs,
    evaluate,
    resolve_amp,
    to_device,
)
from visbench.config import ConfigError, TrainConfig, dump_config, load_config
from visbench.data.classification import (
    DatasetNotFoundError,
    build_dataset,
    build_transform,
    collate_skipping,
)
from visbench.distributed import (
    DistInfo,
    ResumableDistributedSampler,
    ShardSampler,
    all_reduce_sum,
    any_rank,
    barrier,
    cleanup_distributed,
    init_distributed,
    resolve_device,
)


@dataclass
class TrainOutcome:
    """What :func:`train` returns: ``status`` is ``finished``, ``interrupted`` or ``diverged``."""

    status: str
    run_dir: Path
    result: dict[str, Any] | None = None
    model: nn.Module | None = None
    epoch_losses: list[float] = field(default_factory=list)
    message: str = ""

    @property
    def exit_code(self) -> int:
        return {"finished": 0, "interrupted": 130, "diverged": 3}[self.status]


@dataclass
class _Counters:
    epoch: int = 0  # next epoch to run
    step_in_epoch: int = 0  # optimizer updates already done in that epoch
    global_step: int = 0
    skipped: int = 0  # unreadable images skipped so far (all ranks)
    epoch_losses: list[float] = field(default_factory=list)
    # Loss sum / count of the epoch in progress over all ranks, kept across a mid-epoch resume.
    partial_loss: tuple[float, float] = (0.0, 0.0)


class _StopRequest:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the next step boundary and stops."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _MetricsLog:
    """JSON lines (and TensorBoard scalars when installed), written by rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self._file: TextIO | None = open(run_dir / "metrics.jsonl", "a") if enabled else None  # noqa: SIM115
        self._tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # TensorBoard is optional
                self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled or self._file is None:
            return
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record.get("global_step", 0)
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("time", "global_step", "epoch", "step"):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def effective_lr(cfg: TrainConfig, world_size: int) -> float:
    """``optim.lr`` if set, else ``base_lr`` scaled linearly from ``base_batch_size`` to the global batch."""
    if cfg.optim.lr is not None:
        return cfg.optim.lr
    global_batch = cfg.train.batch_size * cfg.train.grad_accum_steps * world_size
    return cfg.optim.base_lr * global_batch / cfg.optim.base_batch_size


def tokens_for(model_name: str, input_size: list[int]) -> int | None:
    """Sequence length the first token mixer sees, from the body named by the model name."""
    from visbench.backbones.naming import describe

    try:
        body = describe(model_name).body
    except ValueError:
        return None
    h, w = input_size
    return {"hierarchical": (h // 4) * (w // 4), "isotropic": (h // 16) * (w // 16), "sequence": h * w}.get(
        body
    )


def _loader(cfg: TrainConfig, dataset, sampler, batch_size: int, drop_last: bool) -> DataLoader:
    # Its own generator: creating an iterator draws the worker base seed from it, not from the global RNG
    # (a draw there would shift every augmentation after a mid-epoch resume). Reseeded per epoch.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.data.workers,
        pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
        drop_last=drop_last,
        collate_fn=collate_skipping,
        persistent_workers=False,
        generator=torch.Generator(),
    )


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train(
    cfg: TrainConfig,
    *,
    config_path: str | Path | None = None,
    resume: str | Path | None = None,
    log: Any = print,
) -> TrainOutcome:
    """Train (or resume) the run described by ``cfg``; see the module docstring for the run folder."""
    t = cfg.train
    device = resolve_device(t.device)
    info = init_distributed(device)
    if t.threads is not None and device.type == "cpu":
        torch.set_num_threads(t.threads)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    run_dir = Path(t.output_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
    barrier(info)
    say = log if info.is_main else (lambda *a, **k: None)
    start_time = _now()

    # Same seed on every rank for the model init (DDP also broadcasts rank 0's weights); then per rank.
    seed_everything(t.seed)
    model = build_model(cfg).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    seed_everything(t.seed + info.rank)

    train_set = build_dataset(cfg.data, "train", build_transform(cfg.data, cfg.aug, is_training=True))
    val_set = build_dataset(cfg.data, "val", build_transform(cfg.data, cfg.aug, is_training=False))
    sampler = ResumableDistributedSampler(train_set, info, shuffle=True, seed=t.seed, drop_last=False)
    train_loader = _loader(cfg, train_set, sampler, t.batch_size, drop_last=True)
    val_loader = _loader(cfg, val_set, ShardSampler(val_set, info), t.batch_size, drop_last=False)
    batches_per_epoch = len(sampler) // t.batch_size
    if batches_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is larger than this rank's share of the training set "
            f"({len(sampler)} images); lower it or use more data"
        )
    updates_per_epoch = math.ceil(batches_per_epoch / t.grad_accum_steps)
    if t.max_steps_per_epoch is not None:
        updates_per_epoch = min(updates_per_epoch, t.max_steps_per_epoch)

    lr = effective_lr(cfg, info.world_size)
    opt_kwargs: dict[str, Any] = {}
    if cfg.optim.betas is not None:
        opt_kwargs["betas"] = tuple(cfg.optim.betas)
    if cfg.optim.eps is not None:
        opt_kwargs["eps"] = cfg.optim.eps
    optimizer = create_optimizer_v2(
        model,
        opt=cfg.optim.opt,
        lr=lr,
        weight_decay=cfg.optim.weight_decay,
        momentum=cfg.optim.momentum,
        **opt_kwargs,
    )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched.sched,
        num_epochs=cfg.sched.epochs,
        warmup_epochs=cfg.sched.warmup_epochs,
        warmup_lr=cfg.sched.warmup_lr,
        min_lr=cfg.sched.min_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    amp_dtype = resolve_amp(t.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    ema = ModelEmaV3(model, decay=t.ema_decay) if t.ema else None
    mixup = build_mixup(cfg)
    criterion = build_train_loss(cfg, mixup)
    counters = _Counters()

    # ----- resume
    ckpt_root = run_dir / "checkpoints"
    if resume is not None:
        source = ckpt.find_latest(run_dir) if str(resume) == "auto" else ckpt.resolve_checkpoint(resume)
        if source is not None:
            _restore(source, cfg, model, ema, optimizer, scheduler, scaler, counters)
            say(
                f"resumed from {source} (epoch {counters.epoch}, update {counters.step_in_epoch}, "
                f"global step {counters.global_step})"
            )
    net: nn.Module = model
    if info.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    metrics = _MetricsLog(run_dir, info.is_main)
    say(
        f"training {cfg.model.name} on {cfg.data.dataset} "
        f"({len(train_set)} train / {len(val_set)} val images) "
        f"for {cfg.sched.epochs} epochs x {updates_per_epoch} updates; lr {lr:.3g}, global batch "
        f"{t.batch_size * t.grad_accum_steps * info.world_size}, device {device}, "
        f"world size {info.world_size}"
    )
    last_eval: EvalResult | None = None
    outcome_status, message = "finished", ""
    try:
        with _StopRequest() as stop:
            while counters.epoch < cfg.sched.epochs:
                epoch = counters.epoch
                status, epoch_loss = _train_epoch(
                    cfg,
                    net,
                    model,
                    ema,
                    optimizer,
                    scheduler,
                    scaler,
                    criterion,
                    mixup,
                    train_loader,
                    sampler,
                    counters,
                    updates_per_epoch,
                    device,
                    amp_dtype,
                    info,
                    metrics,
                    stop,
                )
                if status == "interrupted":
                    path = _save(ckpt_root, cfg, model, ema, optimizer, scheduler, scaler, counters, info)
                    message = (
                        f"stopped by signal {stop.signum}; checkpoint saved to {path}; rerun with --resume"
                    )
                    say(message)
                    outcome_status = "interrupted"
                    break
                counters.epoch, counters.step_in_epoch = epoch + 1, 0
                counters.epoch_losses.append(epoch_loss)
                if (epoch + 1) % t.eval_interval == 0 or epoch + 1 == cfg.sched.epochs:
                    last_eval = _evaluate_and_log(
                        cfg, model, ema, val_loader, device, amp_dtype, info, metrics, counters
                    )
                    say(
                        f"epoch {epoch + 1}/{cfg.sched.epochs}: train loss {epoch_loss:.4f}, "
                        f"val top-1 {last_eval.top1:.2f}%, top-5 {last_eval.top5:.2f}%"
                    )
                _save(ckpt_root, cfg, model, ema, optimizer, scheduler, scaler, counters, info)
    except NonFiniteLossError as err:
        latest = ckpt.find_latest(run_dir)
        message = (
            f"{err}; stopping. Last good checkpoint kept: {latest if latest else 'none (no epoch finished)'}"
        )
        say(message)
        outcome_status = "diverged"
    result = None
    try:
        if outcome_status == "finished":
            if last_eval is None:  # resumed a finished run: evaluate the restored weights
                last_eval = _evaluate_and_log(
                    cfg, model, ema, val_loader, device, amp_dtype, info, metrics, counters
                )
            if info.is_main:
                result = _write_result(
                    cfg,
                    model,
                    last_eval,
                    ema,
                    val_loader,
                    device,
                    amp_dtype,
                    info,
                    counters,
                    run_dir,
                    start_time,
                    config_path,
                )
                say(f"wrote {run_dir / 'result.json'}: top-1 {last_eval.top1:.2f}%")
    finally:
        metrics.close()
    barrier(info)
    return TrainOutcome(outcome_status, run_dir, result, model, list(counters.epoch_losses), message)


def _now() -> str:
    from visbench.results import now_iso

    return now_iso()


def _train_epoch(
    cfg,
    net,
    model,
    ema,
    optimizer,
    scheduler,
    scaler,
    criterion,
    mixup,
    loader,
    sampler,
    counters,
    updates_per_epoch,
    device,
    amp_dtype,
    info,
    metrics,
    stop,
) -> tuple[str, float]:
    """One epoch (from ``counters.step_in_epoch``); returns (``done``/``interrupted``, mean train loss)."""
    t = cfg.train
    accum = t.grad_accum_steps
    epoch = counters.epoch
    sampler.set_epoch(epoch)
    sampler.set_start(counters.step_in_epoch * accum * t.batch_size)
    loader.generator.manual_seed(t.seed * 100_003 + epoch * 1_009 + sampler.rank)
    net.train()
    remaining = updates_per_epoch - counters.step_in_epoch
    if remaining <= 0:
        return "done", float("nan")
    total_batches = len(loader)
    progress = _progress(t.progress and info.is_main, remaining, f"epoch {epoch + 1}/{cfg.sched.epochs}")
    batches = iter(loader) if progress is None else progress(iter(loader))
    loss_sum, loss_count = counters.partial_loss if info.is_main else (0.0, 0.0)
    counters.partial_loss = (0.0, 0.0)
    log_loss = log_count = 0.0
    log_images, log_start = 0, time.perf_counter()
    micro = pending_skipped = 0
    optimizer.zero_grad(set_to_none=True)
    for batch_index, (images, targets, skipped) in enumerate(batches):
        pending_skipped += skipped
        if mixup is not None and len(targets) % 2:  # Mixup pairs samples; a skipped image can make it odd
            images, targets = images[:-1], targets[:-1]
        last_of_group = (micro + 1) % accum == 0 or batch_index == total_batches - 1
        if len(targets) > 0:
            images, targets = to_device(images, device, t.channels_last), targets.to(device)
            if mixup is not None:
                images, targets = mixup(images, targets)
            sync = contextlib.nullcontext() if last_of_group or not info.enabled else net.no_sync()
            with sync:
                with autocast(device, amp_dtype):
                    loss = criterion(net(images), targets)
                loss_value = loss.item()
                if any_rank(not math.isfinite(loss_value), info, device):
                    raise NonFiniteLossError(
                        f"training loss is {loss_value} at epoch {epoch + 1}, "
                        f"update {counters.step_in_epoch + 1}"
                    )
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            loss_sum += loss_value
            loss_count += 1
            log_loss += loss_value
            log_count += 1
            log_images += len(targets)
        micro += 1
        if not last_of_group:
            continue
        if cfg.optim.clip_grad is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        counters.global_step += 1
        counters.step_in_epoch += 1
        scheduler.step_update(num_updates=counters.global_step)
        if ema is not None:
            ema.update(model, step=counters.global_step)
        done = counters.step_in_epoch >= updates_per_epoch
        if counters.global_step % t.log_interval == 0 or done:
            total_loss, total_count, total_images, new_skipped = all_reduce_sum(
                [log_loss, log_count, log_images, pending_skipped], info, device
            )
            counters.skipped += int(new_skipped)
            pending_skipped = 0
            elapsed = time.perf_counter() - log_start
            metrics.write(
                {
                    "kind": "train",
                    "epoch": epoch + 1,
                    "step": counters.step_in_epoch,
                    "global_step": counters.global_step,
                    "loss": total_loss / max(total_count, 1),
                    "lr": optimizer.param_groups[0]["lr"],
                    "img_per_s": total_images / elapsed if elapsed > 0 else None,
                    "skipped_images": counters.skipped,
                }
            )
            log_loss = log_count = 0.0
            log_images, log_start = 0, time.perf_counter()
        if done:
            break
        if any_rank(stop.signum is not None, info, device):
            total_loss, total_count = all_reduce_sum([loss_sum, loss_count], info, device)
            counters.partial_loss = (total_loss, total_count)
            return "interrupted", float("nan")
    total_loss, total_count = all_reduce_sum([loss_sum, loss_count], info, device)
    mean_loss = total_loss / max(total_count, 1)
    metrics.write(
        {
            "kind": "epoch",
            "epoch": epoch + 1,
            "global_step": counters.global_step,
            "train_loss": mean_loss,
            "skipped_images": counters.skipped,
        }
    )
    if any_rank(stop.signum is not None, info, device):
        # Finish the epoch's bookkeeping first so the checkpoint resumes at the next epoch.
        counters.epoch_losses.append(mean_loss)
        counters.epoch, counters.step_in_epoch = epoch + 1, 0
        return "interrupted", mean_loss
    return "done", mean_loss


def _evaluate_and_log(cfg, model, ema, loader, device, amp_dtype, info, metrics, counters) -> EvalResult:
    t = cfg.train
    result = evaluate(model, loader, device, amp_dtype, t.channels_last, info)
    record: dict[str, Any] = {
        "kind": "eval",
        "epoch": counters.epoch,
        "global_step": counters.global_step,
        **result.as_dict(),
        "skipped_images": counters.skipped + result.skipped,
    }
    if ema is not None:
        ema_result = evaluate(ema.module, loader, device, amp_dtype, t.channels_last, info)
        record.update(ema_result.as_dict("ema_"))
        result.ema = ema_result  # type: ignore[attr-defined]
    metrics.write(record)
    return result


def _train_state(optimizer, scheduler, scaler, counters: _Counters) -> dict[str, Any]:
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "counters": {
            "epoch": counters.epoch,
            "step_in_epoch": counters.step_in_epoch,
            "global_step": counters.global_step,
            "skipped": counters.skipped,
            "epoch_losses": list(counters.epoch_losses),
            "partial_loss": list(counters.partial_loss),
        },
        "rng": ckpt.rng_state(),
    }


def _save(root, cfg, model, ema, optimizer, scheduler, scaler, counters, info: DistInfo) -> Path | None:
    path = None
    if info.is_main:
        path = ckpt.save_checkpoint(
            root,
            model_name=cfg.model.name,
            model_state=model.state_dict(),
            ema_state=ema.module.state_dict() if ema is not None else None,
            train_state=_train_state(optimizer, scheduler, scaler, counters),
            epoch=counters.epoch,
            step=counters.global_step,
            keep=cfg.train.keep_checkpoints,
        )
    barrier(info)
    return path


def _restore(source: Path, cfg, model, ema, optimizer, scheduler, scaler, counters: _Counters) -> None:
    weights, _ = ckpt.load_weights(source / "model.safetensors", cfg.model.name)
    state = ckpt.load_state(source / "state.pt", cfg.model.name)
    ckpt.load_into(model, weights, source / "model.safetensors")
    if ema is not None:
        ema_path = source / "ema.safetensors"
        ema_weights = ckpt.load_weights(ema_path, cfg.model.name)[0] if ema_path.exists() else weights
        ckpt.load_into(ema.module, ema_weights, ema_path)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError) as err:
        raise ckpt.CheckpointError(
            f"{source / 'state.pt'}: optimizer/scheduler state does not fit ({err})"
        ) from None
    c = state["counters"]
    counters.epoch, counters.step_in_epoch = int(c["epoch"]), int(c["step_in_epoch"])
    counters.global_step, counters.skipped = int(c["global_step"]), int(c["skipped"])
    counters.epoch_losses = [float(x) for x in c.get("epoch_losses", [])]
    counters.partial_loss = tuple(float(x) for x in c.get("partial_loss", (0.0, 0.0)))  # type: ignore[assignment]
    ckpt.set_rng_state(state["rng"])


def _write_result(
    cfg,
    model,
    last_eval,
    ema,
    val_loader,
    device,
    amp_dtype,
    info,
    counters,
    run_dir,
    start_time,
    config_path,
) -> dict[str, Any]:
    from visbench.results import make_result, write_result

    input_size = (cfg.data.in_chans, *cfg.data.input_size)
    params, macs = count_params_and_macs(model, input_size)
    metrics: dict[str, Any] = {
        "top1": round(last_eval.top1, 4),
        "top5": round(last_eval.top5, 4),
        "loss": round(last_eval.loss, 6),
    }
    ema_eval = getattr(last_eval, "ema", None)
    if ema_eval is not None:
        metrics.update(ema_top1=round(ema_eval.top1, 4), ema_top5=round(ema_eval.top5, 4))
    throughput = None
    if last_eval.img_per_s:
        throughput = {
            "img_per_s": round(last_eval.img_per_s, 2),
            "batch_size": cfg.train.batch_size,
            "device": str(device),
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
            "channels_last": cfg.train.channels_last,
        }
    result = make_result(
        model=cfg.model.name,
        task="classification",
        dataset=cfg.data.dataset,
        input_size=cfg.data.input_size,
        params=params,
        macs=macs,
        metrics=metrics,
        start_time=start_time,
        seed=cfg.train.seed,
        tokens=tokens_for(cfg.model.name, cfg.data.input_size),
        throughput=throughput,
        config_path=run_dir / "config.yaml",
        device=str(device),
        amp=str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        extra={
            "epochs": cfg.sched.epochs,
            "global_steps": counters.global_step,
            "epoch_train_loss": [round(x, 6) for x in counters.epoch_losses],
            "skipped_images": counters.skipped + last_eval.skipped,
            "val_images": last_eval.count,
            "world_size": info.world_size,
            "source_config": str(config_path) if config_path else None,
            "model_kwargs": cfg.model.kwargs,
            "throughput_method": "timed forward passes of the final evaluation (first batch excluded)",
        },
    )
    write_result(run_dir, result)
    return result


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", help="YAML config (configs/imagenet/*.yaml, configs/fashion_mnist/*.yaml)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-3 sched.epochs=10"
    )
    parser.add_argument(
        "--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="an override"
    )
    parser.add_argument("--output", help="run folder (same as train.output_dir=...)")
    parser.add_argument(
        "--resume", help="checkpoint folder, run folder, or 'auto' (latest in the run folder, if any)"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str | None]:
    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path and not os.path.exists(config_path):
        config_path, overrides = None, [args.config, *overrides]
    overrides += list(args.set_)
    if getattr(args, "output", None):
        overrides.append(f"train.output_dir={args.output}")
    return load_config(config_path, overrides), config_path


def run(args: argparse.Namespace) -> int:
    try:
        cfg, config_path = config_from_args(args)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            return 0
        outcome = train(cfg, config_path=config_path, resume=args.resume)
    except (ConfigError, DatasetNotFoundError, ckpt.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed()
    if outcome.status != "finished":
        print(outcome.message, file=sys.stderr)
    return outcome.exit_code
