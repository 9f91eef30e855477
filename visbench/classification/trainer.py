"""`visbench train CONFIG [section.key=value ...]`: train a classifier, resumable, single process or DDP.

Run folder (``train.output_dir`` or ``--output``): ``config.yaml`` (the resolved config),
``metrics.jsonl`` (one JSON object per log step / epoch / evaluation), ``checkpoints/`` (see
:mod:`visbench.classification.checkpoints`), ``result.json`` at the end, ``tb/`` when TensorBoard is
installed.

The loop's state is one :class:`TrainState`, built by :func:`build_state`; every step below reads and
changes only that object. The pieces are timm's: ``create_optimizer_v2``, ``create_scheduler_v2``
(stepped per update), ``ModelEmaV3``, ``Mixup``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from visbench.classification import checkpoints as ckpt
from visbench.classification.cli import add_config_arguments, config_from_args
from visbench.classification.engine import (
    EvalResult,
    NonFiniteLossError,
    Runtime,
    autocast,
    build_mixup,
    build_model,
    build_train_loss,
    count_params_and_macs,
    evaluate,
    mixer_tokens,
    resolve_amp,
    to_device,
)
from visbench.config import ConfigError, TrainConfig, dump_config
from visbench.data.classification import build_dataset, build_transform, collate_skipping
from visbench.distributed import (
    ResumableDistributedSampler,
    ShardSampler,
    all_reduce_sum,
    any_rank,
    barrier,
    cleanup_distributed,
    init_distributed,
    resolve_device,
)

# ------------------------------------------------------------------------------------------------ state


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
class Counters:
    """Where the run is; saved in every checkpoint, so a resumed run continues at the same update."""

    epoch: int = 0  # next epoch to run
    step_in_epoch: int = 0  # optimizer updates already done in that epoch
    global_step: int = 0
    skipped: int = 0  # unreadable images skipped so far (all ranks)
    epoch_losses: list[float] = field(default_factory=list)
    # Loss sum / count of the epoch in progress over all ranks, kept across a mid-epoch resume.
    partial_loss: tuple[float, float] = (0.0, 0.0)
    # Seconds spent in training epochs (evaluation excluded), summed over resumes: result's train_wall_s.
    train_seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "skipped": self.skipped,
            "epoch_losses": list(self.epoch_losses),
            "partial_loss": list(self.partial_loss),
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step, self.skipped = int(state["global_step"]), int(state["skipped"])
        self.epoch_losses = [float(x) for x in state.get("epoch_losses", [])]
        loss_sum, loss_count = (float(x) for x in state.get("partial_loss", (0.0, 0.0)))
        self.partial_loss = (loss_sum, loss_count)
        self.train_seconds = float(state.get("train_seconds", 0.0))


class MetricsLog:
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


@dataclass
class TrainState:
    """Everything the train loop reads and changes. ``model`` is the bare module (checkpoints, EMA,
    evaluation); ``net`` is what the forward pass calls: ``model`` itself, or its DDP wrapper."""

    cfg: TrainConfig
    run_dir: Path
    runtime: Runtime  # device, AMP dtype, channels-last, rank / world size
    model: nn.Module
    ema: ModelEmaV3 | None
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    scaler: torch.amp.GradScaler | None
    mixup: Mixup | None
    criterion: nn.Module
    sampler: ResumableDistributedSampler
    train_loader: DataLoader
    val_loader: DataLoader
    updates_per_epoch: int
    lr: float
    start_time: str
    say: Callable[..., Any]  # the log function on rank 0, a no-op elsewhere
    net: nn.Module | None = None  # set by :func:`wrap_for_distributed`
    counters: Counters = field(default_factory=Counters)
    metrics: MetricsLog | None = None  # opened when the loop starts
    last_eval: EvalResult | None = None

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"


# -------------------------------------------------------------------------------------------- building


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


def _loader(cfg: TrainConfig, dataset, sampler, drop_last: bool) -> DataLoader:
    # Its own generator: creating an iterator draws the worker base seed from it, not from the global RNG
    # (a draw there would shift every augmentation after a mid-epoch resume). Reseeded per epoch.
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.data.workers,
        pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
        drop_last=drop_last,
        collate_fn=collate_skipping,
        persistent_workers=False,
        generator=torch.Generator(),
    )


def _start_process(cfg: TrainConfig) -> Runtime:
    """Device, process group, threads, determinism; rank 0 creates the run folder and its config.yaml."""
    t = cfg.train
    device = resolve_device(t.device)
    info = init_distributed(device)
    if t.threads is not None and device.type == "cpu":
        torch.set_num_threads(t.threads)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if info.is_main:
        Path(t.output_dir).mkdir(parents=True, exist_ok=True)
        dump_config(cfg, Path(t.output_dir) / "config.yaml")
    barrier(info)
    return Runtime(device, resolve_amp(t.amp, device), t.channels_last, info)


def _build_data(cfg: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    """Datasets, the resumable sampler, both loaders and the number of updates per epoch."""
    t = cfg.train
    train_set = build_dataset(cfg.data, "train", build_transform(cfg.data, cfg.aug, is_training=True))
    val_set = build_dataset(cfg.data, "val", build_transform(cfg.data, cfg.aug, is_training=False))
    sampler = ResumableDistributedSampler(train_set, runtime.info, shuffle=True, seed=t.seed, drop_last=False)
    batches_per_epoch = len(sampler) // t.batch_size
    if batches_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size={t.batch_size} is larger than this rank's share of the training set "
            f"({len(sampler)} images); lower it or use more data"
        )
    updates_per_epoch = math.ceil(batches_per_epoch / t.grad_accum_steps)
    if t.max_steps_per_epoch is not None:
        updates_per_epoch = min(updates_per_epoch, t.max_steps_per_epoch)
    return {
        "sampler": sampler,
        "train_loader": _loader(cfg, train_set, sampler, drop_last=True),
        "val_loader": _loader(cfg, val_set, ShardSampler(val_set, runtime.info), drop_last=False),
        "updates_per_epoch": updates_per_epoch,
    }


def _build_optimization(cfg: TrainConfig, model: nn.Module, world_size: int, updates_per_epoch: int):
    """timm's optimizer (parameter groups from the tags set where parameters are created) and scheduler."""
    lr = effective_lr(cfg, world_size)
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
    return optimizer, scheduler, lr


def build_state(cfg: TrainConfig, log: Callable[..., Any] = print) -> TrainState:
    """A fresh run's state; the order of the random draws here is part of bit-exact resumption."""
    from visbench.results import now_iso

    runtime = _start_process(cfg)
    info, t = runtime.info, cfg.train
    start_time = now_iso()
    # Same seed on every rank for the model init (DDP also broadcasts rank 0's weights); then per rank.
    seed_everything(t.seed)
    model = build_model(cfg).to(runtime.device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    seed_everything(t.seed + info.rank)
    data = _build_data(cfg, runtime)
    optimizer, scheduler, lr = _build_optimization(cfg, model, info.world_size, data["updates_per_epoch"])
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.amp == torch.float16 else None
    ema = ModelEmaV3(model, decay=t.ema_decay) if t.ema else None
    mixup = build_mixup(cfg)
    return TrainState(
        cfg=cfg,
        run_dir=Path(t.output_dir),
        runtime=runtime,
        model=model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        mixup=mixup,
        criterion=build_train_loss(cfg, mixup),
        lr=lr,
        start_time=start_time,
        say=log if info.is_main else (lambda *a, **k: None),
        **data,
    )


def wrap_for_distributed(state: TrainState) -> None:
    """``state.net``: the model, under DDP when there is more than one process."""
    rt = state.runtime
    state.net = state.model
    if rt.info.enabled:
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        state.net = DistributedDataParallel(state.model, device_ids=device_ids)


# ---------------------------------------------------------------------------------------------- driver


def train(
    cfg: TrainConfig,
    *,
    config_path: str | Path | None = None,
    resume: str | Path | None = None,
    log: Any = print,
) -> TrainOutcome:
    """Train (or resume) the run described by ``cfg``; see the module docstring for the run folder."""
    state = build_state(cfg, log)
    if resume is not None:
        resume_from(state, resume)
    wrap_for_distributed(state)
    state.metrics = MetricsLog(state.run_dir, state.runtime.info.is_main)
    t, info = cfg.train, state.runtime.info
    state.say(
        f"training {cfg.model.name} on {cfg.data.dataset} "
        f"({len(state.train_loader.dataset)} train / {len(state.val_loader.dataset)} val images) "
        f"for {cfg.sched.epochs} epochs x {state.updates_per_epoch} updates; lr {state.lr:.3g}, global "
        f"batch {t.batch_size * t.grad_accum_steps * info.world_size}, device {state.runtime.device}, "
        f"world size {info.world_size}"
    )
    result = None
    try:
        status, message = run_epochs(state)
        if status == "finished":
            result = finish(state, config_path)
    finally:
        state.metrics.close()
    barrier(info)
    return TrainOutcome(
        status, state.run_dir, result, state.model, list(state.counters.epoch_losses), message
    )


def run_epochs(state: TrainState) -> tuple[str, str]:
    """Epochs until the schedule ends, a signal arrives or the loss diverges: (status, message)."""
    cfg, counters = state.cfg, state.counters
    try:
        with _StopRequest() as stop:
            while counters.epoch < cfg.sched.epochs:
                epoch = counters.epoch
                began = time.perf_counter()
                status, epoch_loss = train_epoch(state, stop)
                counters.train_seconds += time.perf_counter() - began
                if status == "interrupted":
                    path = save(state)
                    message = (
                        f"stopped by signal {stop.signum}; checkpoint saved to {path}; rerun with --resume"
                    )
                    state.say(message)
                    return "interrupted", message
                counters.epoch, counters.step_in_epoch = epoch + 1, 0
                counters.epoch_losses.append(epoch_loss)
                if (epoch + 1) % cfg.train.eval_interval == 0 or epoch + 1 == cfg.sched.epochs:
                    state.last_eval = evaluate_and_log(state)
                    state.say(
                        f"epoch {epoch + 1}/{cfg.sched.epochs}: train loss {epoch_loss:.4f}, "
                        f"val top-1 {state.last_eval.top1:.2f}%, top-5 {state.last_eval.top5:.2f}%"
                    )
                save(state)
    except NonFiniteLossError as err:
        latest = ckpt.find_latest(state.run_dir)
        kept = latest if latest else "none (no epoch finished)"
        message = f"{err}; stopping. Last good checkpoint kept: {kept}"
        state.say(message)
        return "diverged", message
    return "finished", ""


def finish(state: TrainState, config_path: str | Path | None) -> dict[str, Any] | None:
    """Evaluate a resumed, already finished run, then (rank 0) write ``result.json``."""
    if state.last_eval is None:  # resumed a finished run: evaluate the restored weights
        state.last_eval = evaluate_and_log(state)
    if not state.runtime.info.is_main:
        return None
    result = write_result(state, config_path)
    state.say(f"wrote {state.run_dir / 'result.json'}: top-1 {state.last_eval.top1:.2f}%")
    return result


# ------------------------------------------------------------------------------------------ one epoch


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


@dataclass
class _Tally:
    """Running sums of one epoch on this rank: the whole epoch, and the window since the last log line."""

    loss_sum: float = 0.0
    loss_count: float = 0.0
    window_loss: float = 0.0
    window_count: float = 0.0
    window_images: int = 0
    window_start: float = field(default_factory=time.perf_counter)
    unreported_skipped: int = 0  # unreadable images not yet added to the counters

    def add(self, loss_value: float, images: int) -> None:
        self.loss_sum += loss_value
        self.loss_count += 1
        self.window_loss += loss_value
        self.window_count += 1
        self.window_images += images

    def new_window(self) -> None:
        self.window_loss = self.window_count = 0.0
        self.window_images, self.window_start = 0, time.perf_counter()


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train_epoch(state: TrainState, stop: _StopRequest) -> tuple[str, float]:
    """One epoch (from ``counters.step_in_epoch``); returns (``done``/``interrupted``, mean train loss)."""
    t, counters, rt = state.cfg.train, state.counters, state.runtime
    accum, epoch = t.grad_accum_steps, counters.epoch
    loader, sampler = state.train_loader, state.sampler
    sampler.set_epoch(epoch)
    sampler.set_start(counters.step_in_epoch * accum * t.batch_size)
    loader.generator.manual_seed(t.seed * 100_003 + epoch * 1_009 + sampler.rank)
    state.net.train()
    remaining = state.updates_per_epoch - counters.step_in_epoch
    if remaining <= 0:
        return "done", float("nan")
    total_batches = len(loader)
    desc = f"epoch {epoch + 1}/{state.cfg.sched.epochs}"
    progress = _progress(t.progress and rt.info.is_main, remaining, desc)
    batches = iter(loader) if progress is None else progress(iter(loader))
    tally = _Tally()
    if rt.info.is_main:  # the mid-epoch resume's partial sums are all ranks' already: add them once
        tally.loss_sum, tally.loss_count = counters.partial_loss
    counters.partial_loss = (0.0, 0.0)
    micro = 0
    state.optimizer.zero_grad(set_to_none=True)
    for batch_index, (images, targets, skipped) in enumerate(batches):
        tally.unreported_skipped += skipped
        if state.mixup is not None and len(targets) % 2:  # Mixup pairs samples; a skip can make it odd
            images, targets = images[:-1], targets[:-1]
        last_of_group = (micro + 1) % accum == 0 or batch_index == total_batches - 1
        if len(targets) > 0:
            tally.add(_forward_backward(state, images, targets, sync_grads=last_of_group), len(targets))
        micro += 1
        if not last_of_group:
            continue
        _optimizer_step(state)
        done = counters.step_in_epoch >= state.updates_per_epoch
        if counters.global_step % t.log_interval == 0 or done:
            _log_window(state, tally)
        if done:
            break
        if any_rank(stop.signum is not None, rt.info, rt.device):
            counters.partial_loss = tuple(
                all_reduce_sum([tally.loss_sum, tally.loss_count], rt.info, rt.device)
            )
            return "interrupted", float("nan")
    total_loss, total_count = all_reduce_sum([tally.loss_sum, tally.loss_count], rt.info, rt.device)
    mean_loss = total_loss / max(total_count, 1)
    state.metrics.write(
        {
            "kind": "epoch",
            "epoch": epoch + 1,
            "global_step": counters.global_step,
            "train_loss": mean_loss,
            "skipped_images": counters.skipped,
        }
    )
    if any_rank(stop.signum is not None, rt.info, rt.device):
        # Finish the epoch's bookkeeping first so the checkpoint resumes at the next epoch.
        counters.epoch_losses.append(mean_loss)
        counters.epoch, counters.step_in_epoch = epoch + 1, 0
        return "interrupted", mean_loss
    return "done", mean_loss


def _forward_backward(
    state: TrainState, images: torch.Tensor, targets: torch.Tensor, sync_grads: bool
) -> float:
    """Loss and gradients of one micro-batch; DDP all-reduces only on the last of an accumulation group."""
    rt, accum = state.runtime, state.cfg.train.grad_accum_steps
    images, targets = to_device(images, rt.device, rt.channels_last), targets.to(rt.device)
    if state.mixup is not None:
        images, targets = state.mixup(images, targets)
    sync = contextlib.nullcontext() if sync_grads or not rt.info.enabled else state.net.no_sync()
    with sync:
        with autocast(rt.device, rt.amp):
            loss = state.criterion(state.net(images), targets)
        loss_value = loss.item()
        if any_rank(not math.isfinite(loss_value), rt.info, rt.device):
            raise NonFiniteLossError(
                f"training loss is {loss_value} at epoch {state.counters.epoch + 1}, "
                f"update {state.counters.step_in_epoch + 1}"
            )
        scaled = loss / accum
        (state.scaler.scale(scaled) if state.scaler is not None else scaled).backward()
    return loss_value


def _optimizer_step(state: TrainState) -> None:
    """Clip, step (through the fp16 scaler when there is one), then advance counters, schedule and EMA."""
    optimizer, scaler, counters = state.optimizer, state.scaler, state.counters
    if state.cfg.optim.clip_grad is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), state.cfg.optim.clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    counters.global_step += 1
    counters.step_in_epoch += 1
    state.scheduler.step_update(num_updates=counters.global_step)
    if state.ema is not None:
        state.ema.update(state.model, step=counters.global_step)


def _log_window(state: TrainState, tally: _Tally) -> None:
    """One ``train`` line of metrics.jsonl, summed over ranks, for the updates since the last one."""
    rt, counters = state.runtime, state.counters
    loss, count, images, new_skipped = all_reduce_sum(
        [tally.window_loss, tally.window_count, tally.window_images, tally.unreported_skipped],
        rt.info,
        rt.device,
    )
    counters.skipped += int(new_skipped)
    tally.unreported_skipped = 0
    elapsed = time.perf_counter() - tally.window_start
    state.metrics.write(
        {
            "kind": "train",
            "epoch": counters.epoch + 1,
            "step": counters.step_in_epoch,
            "global_step": counters.global_step,
            "loss": loss / max(count, 1),
            "lr": state.optimizer.param_groups[0]["lr"],
            "img_per_s": images / elapsed if elapsed > 0 else None,
            "skipped_images": counters.skipped,
        }
    )
    tally.new_window()


def evaluate_and_log(state: TrainState) -> EvalResult:
    """Validation top-1 / top-5 of the model (and of its EMA), as an ``eval`` line of metrics.jsonl."""
    result = evaluate(state.model, state.val_loader, state.runtime)
    record: dict[str, Any] = {
        "kind": "eval",
        "epoch": state.counters.epoch,
        "global_step": state.counters.global_step,
        **result.as_dict(),
        "skipped_images": state.counters.skipped + result.skipped,
    }
    if state.ema is not None:
        ema_result = evaluate(state.ema.module, state.val_loader, state.runtime)
        record.update(ema_result.as_dict("ema_"))
        result.ema = ema_result  # type: ignore[attr-defined]
    state.metrics.write(record)
    return result


# ---------------------------------------------------------------------------------- checkpoint, result


def save(state: TrainState) -> Path | None:
    """Rank 0 writes a checkpoint of the whole state (atomically); every rank waits for it."""
    path = None
    if state.runtime.info.is_main:
        weights = {"model": state.model.state_dict()}
        if state.ema is not None:
            weights["ema"] = state.ema.module.state_dict()
        path = ckpt.save_checkpoint(
            state.checkpoint_root,
            model_name=state.cfg.model.name,
            weights=weights,
            train_state={
                "epoch": state.counters.epoch,
                "step": state.counters.global_step,
                "optimizer": state.optimizer.state_dict(),
                "scheduler": state.scheduler.state_dict(),
                "scaler": state.scaler.state_dict() if state.scaler is not None else None,
                "counters": state.counters.state_dict(),
                "rng": ckpt.rng_state(),
            },
            keep=state.cfg.train.keep_checkpoints,
        )
    barrier(state.runtime.info)
    return path


def resume_from(state: TrainState, resume: str | Path) -> None:
    """``resume``: ``auto`` (the run folder's latest checkpoint, if any) or a checkpoint / run folder."""
    source = ckpt.find_latest(state.run_dir) if str(resume) == "auto" else ckpt.resolve_checkpoint(resume)
    if source is None:
        return
    restore(state, source)
    c = state.counters
    state.say(
        f"resumed from {source} (epoch {c.epoch}, update {c.step_in_epoch}, global step {c.global_step})"
    )


def restore(state: TrainState, source: Path) -> None:
    """Weights, EMA, optimizer, scheduler, scaler, counters and every RNG from the folder ``source``."""
    name = state.cfg.model.name
    weights, _ = ckpt.load_weights(source / "model.safetensors", name)
    saved = ckpt.load_state(source / "state.pt", name)
    ckpt.load_into(state.model, weights, source / "model.safetensors")
    if state.ema is not None:
        ema_path = source / "ema.safetensors"
        ema_weights = ckpt.load_weights(ema_path, name)[0] if ema_path.exists() else weights
        ckpt.load_into(state.ema.module, ema_weights, ema_path)
    try:
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        if state.scaler is not None and saved.get("scaler"):
            state.scaler.load_state_dict(saved["scaler"])
    except (ValueError, KeyError) as err:
        raise ckpt.CheckpointError(
            f"{source / 'state.pt'}: optimizer/scheduler state does not fit ({err})"
        ) from None
    state.counters.load_state_dict(saved["counters"])
    ckpt.set_rng_state(saved["rng"])


def write_result(state: TrainState, config_path: str | Path | None) -> dict[str, Any]:
    """``result.json`` of the finished run: the last evaluation, params, MACs, throughput, counters."""
    from visbench.results import make_result
    from visbench.results import write_result as write_result_file

    cfg, rt, last_eval = state.cfg, state.runtime, state.last_eval
    amp = str(rt.amp).replace("torch.", "") if rt.amp else None
    counts = count_params_and_macs(state.model, (cfg.data.in_chans, *cfg.data.input_size))
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
            "device": str(rt.device),
            "amp": amp,
            "channels_last": cfg.train.channels_last,
        }
    result = make_result(
        model=cfg.model.name,
        task="classification",
        dataset=cfg.data.dataset,
        input_size=cfg.data.input_size,
        params=counts["params"],
        macs=counts["macs"],
        metrics=metrics,
        start_time=state.start_time,
        seed=cfg.train.seed,
        tokens=mixer_tokens(cfg.model.name, cfg.data.input_size, cfg.model.kwargs),
        throughput=throughput,
        config_path=state.run_dir / "config.yaml",
        device=str(rt.device),
        amp=amp,
        extra={
            "macs_fvcore": counts["macs_fvcore"],
            "train_wall_s": round(state.counters.train_seconds, 2),
            "epochs": cfg.sched.epochs,
            "global_steps": state.counters.global_step,
            "epoch_train_loss": [round(x, 6) for x in state.counters.epoch_losses],
            "skipped_images": state.counters.skipped + last_eval.skipped,
            "val_images": last_eval.count,
            "world_size": rt.info.world_size,
            "source_config": str(config_path) if config_path else None,
            "model_kwargs": cfg.model.kwargs,
            "throughput_method": "timed forward passes of the final evaluation (first batch excluded)",
        },
    )
    write_result_file(state.run_dir, result)
    return result


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``visbench train``'s arguments."""
    add_config_arguments(parser)
    parser.add_argument("--output", help="run folder (same as train.output_dir=...)")
    parser.add_argument(
        "--resume", help="checkpoint folder, run folder, or 'auto' (latest in the run folder, if any)"
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    """``visbench train``: 0 finished, 130 stopped by a signal (resumable), 3 diverged.

    A user's mistake (config, data, checkpoint) raises; ``visbench.cli.main`` prints it as one line, exit 2.
    """
    try:
        cfg, config_path = config_from_args(args)
        if args.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            return 0
        outcome = train(cfg, config_path=config_path, resume=args.resume)
    finally:
        cleanup_distributed()
    if outcome.status != "finished":
        print(outcome.message, file=sys.stderr)
    return outcome.exit_code
