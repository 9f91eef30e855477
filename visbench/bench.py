"""``visbench bench``: params, MACs, inference / training throughput and peak memory of models.

Throughput is measured the way published numbers should be: a warm-up, then ``repeats`` timed
windows of ``iters`` steps each, with the device synchronised before the clock is read; the table
shows the median over windows and its inter-quartile range (IQR). Each result records batch size,
AMP dtype, TF32 flags, thread count and device (``visbench.results.environment_info``).

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` after resetting the peak (tensors only,
not the allocator's cache). On CPU there is no allocator counter, so ``--memory isolated`` (default
on CPU) runs each (model, size) in a fresh Python subprocess and reports that process's RSS high-water
mark (``ru_maxrss``: includes Python, torch and the model, i.e. what the job really needs);
``--memory process`` reports this process's high-water mark (cheap, but it never goes down, so later
rows include earlier ones); ``--memory none`` skips it. The method is recorded with each number.

Sizes are resolutions (``224``, ``800x1280``) or, with ``--tokens``, token counts at the model's
reference stage (stride 16 for ViTs and MambaOut's stage 3) turned into square inputs.
Results: one ``result.json`` per (model, size) under ``--out`` (task ``bench``), and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

AMP_DTYPES = {"none": None, "bf16": "bfloat16", "fp16": "float16"}


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[2] - q[0]


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], device: Any, warmup: int, repeats: int, iters: int) -> list[float]:
    """Seconds per step for each of ``repeats`` windows of ``iters`` steps, after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        times.append((time.perf_counter() - start) / iters)
    return times


def build_model(name: str, size: tuple[int, int], device: Any, in_chans: int = 3) -> Any:
    """timm / visbench model at ``size`` (models with a fixed input size are built for it)."""
    import timm

    from visbench.analyze import register_our_models

    register_our_models()
    if not timm.is_model(name):
        raise ValueError(f"model {name!r} is not registered with timm")
    try:
        model = timm.create_model(name, img_size=size, in_chans=in_chans)
    except TypeError:  # models without an img_size argument work at any size
        model = timm.create_model(name, in_chans=in_chans)
    return model.to(device)


def measure(
    name: str,
    size: tuple[int, int],
    *,
    device: str = "cpu",
    batch_size: int = 8,
    warmup: int = 3,
    repeats: int = 5,
    iters: int = 3,
    amp: str = "none",
    train: bool = True,
    channels_last: bool = False,
    memory: str = "auto",
    tokens: int | None = None,
    tf32: bool | None = None,
) -> dict[str, Any]:
    """Benchmark one model at one size; returns a schema-valid result dict (task ``bench``).

    ``tf32`` sets both TF32 flags (None leaves them as they are); the flags in effect are recorded.
    """
    import torch

    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    from visbench.analyze import build_meta_model
    from visbench.backbones.complexity import count_macs, count_params
    from visbench.results import make_result, now_iso

    start_time = now_iso()
    dev = torch.device(device)
    if memory == "auto":
        memory = "cuda" if dev.type == "cuda" else "process"
    torch.manual_seed(0)
    model = build_model(name, size, dev)
    params = count_params(model)
    meta = build_meta_model(name)
    try:
        macs = count_macs(meta, (3, *size))
    except (AssertionError, RuntimeError):
        macs = count_macs(model, (3, *size))  # fixed-size timm models: count the one built for this size
    x = torch.randn(batch_size, 3, *size, device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    amp_dtype = getattr(torch, AMP_DTYPES[amp]) if AMP_DTYPES[amp] else None

    def autocast() -> Any:
        return torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    model.eval()

    def infer() -> None:
        with torch.inference_mode(), autocast():
            model(x)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    infer_times = time_steps(infer, dev, warmup, repeats, iters)
    peak_infer = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    tp: dict[str, Any] = {"batch_size": batch_size, "device": str(dev), "repeats": repeats, "iters": iters}
    tp["warmup"] = warmup
    tp["amp"] = amp
    tp["channels_last"] = channels_last
    med, iqr = _quartiles([batch_size / t for t in infer_times])
    tp["img_per_s"], tp["img_per_s_iqr"] = med, iqr

    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        target = torch.randint(0, int(getattr(model, "num_classes", 1000) or 1000), (batch_size,), device=dev)
        scaler = torch.amp.GradScaler(dev.type, enabled=amp == "fp16")

        def train_step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x), target)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        train_times = time_steps(train_step, dev, max(1, warmup), repeats, iters)
        med, iqr = _quartiles([batch_size / t for t in train_times])
        tp["train_img_per_s"], tp["train_img_per_s_iqr"] = med, iqr
        if dev.type == "cuda":
            tp["train_peak_memory_bytes"] = torch.cuda.max_memory_allocated(dev)

    if memory == "cuda":
        tp["peak_memory_bytes"] = peak_infer
        tp["peak_memory_method"] = (
            "torch.cuda.max_memory_allocated (tensors, inference); train_* for training"
        )
    elif memory in ("process", "isolated"):
        # ru_maxrss is in KiB on Linux, bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        tp["peak_memory_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        tp["peak_memory_method"] = (
            "ru_maxrss of a fresh subprocess (whole process: python + torch + model + run)"
            if memory == "isolated"
            else "ru_maxrss of the bench process (high-water mark; includes earlier rows)"
        )
    return make_result(
        model=name,
        task="bench",
        dataset="synthetic",
        input_size=size,
        params=params,
        macs=macs,
        metrics={},
        start_time=start_time,
        tokens=tokens,
        throughput=tp,
        device=device,
        amp=None if amp == "none" else amp,
        extra={"infer_s_per_step": infer_times},
    )


def _measure_isolated(name: str, size: tuple[int, int], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter so its RSS high-water mark belongs to this row alone."""
    payload = json.dumps({"name": name, "size": list(size), "kwargs": {**kwargs, "memory": "isolated"}})
    proc = subprocess.run(
        [sys.executable, "-m", "visbench.bench", "--worker", payload],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker for {name} at {size} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(results: list[dict[str, Any]]) -> str:
    """One line per (model, size): params, MACs, median img/s with IQR (inference, training), peak memory."""
    head = (
        f"{'model':<24} {'input':>10} {'params M':>9} {'GMACs':>8} {'img/s':>9} {'IQR':>7} "
        f"{'train img/s':>11} {'IQR':>7} {'peak MiB':>9}"
    )
    lines = [head, "-" * len(head)]
    nan = float("nan")
    for r in results:
        tp = r["throughput"]
        h, w = r["input_size"]
        mem = tp.get("peak_memory_bytes")
        mem_text = "" if mem is None else f"{mem / 2**20:.0f}"
        lines.append(
            f"{r['model']:<24} {f'{h}x{w}':>10} {r['params'] / 1e6:>9.2f} {(r['macs'] or 0) / 1e9:>8.2f} "
            f"{tp['img_per_s']:>9.1f} {tp['img_per_s_iqr']:>7.1f} {tp.get('train_img_per_s', nan):>11.1f} "
            f"{tp.get('train_img_per_s_iqr', nan):>7.1f} {mem_text:>9}"
        )
    if results:
        first = results[0]
        env, tp = first["environment"], first["throughput"]
        lines.append(
            f"device: {first['device']}; threads {env['threads']}; TF32 matmul {env['tf32_matmul']}, "
            f"cuDNN {env['tf32_cudnn']}; AMP {env['amp'] or 'off'}; batch {tp['batch_size']}; median of "
            f"{tp['repeats']} windows x {tp['iters']} steps; "
            f"memory: {tp.get('peak_memory_method', 'not measured')}"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", default="vit_small_patch16_224,mambaout_femto", help="comma-separated names"
    )
    parser.add_argument(
        "--sizes", default="224", help="comma-separated: 224, 800x1280, imagenet, coco, ade20k"
    )
    parser.add_argument("--tokens", default=None, help="comma-separated token counts instead of --sizes")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed windows (median and IQR over them)")
    parser.add_argument("--iters", type=int, default=3, help="steps per timed window")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmul / cuDNN (recorded)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument("--memory", choices=("auto", "isolated", "process", "none"), default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="result.json folder root")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    import torch

    from visbench.analyze import build_meta_model, model_stages, parse_size, reference_stage, size_for_tokens
    from visbench.results import write_result

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    memory = args.memory
    if memory == "auto":
        memory = "cuda" if device.startswith("cuda") else "isolated"
    kwargs = dict(
        device=device,
        batch_size=args.batch_size,
        warmup=args.warmup,
        repeats=args.repeats,
        iters=args.iters,
        amp=args.amp,
        train=not args.no_train,
        channels_last=args.channels_last,
        tf32=bool(args.tf32),
    )
    results = []
    try:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if args.tokens:
                stride = reference_stage(model_stages(build_meta_model(name))).reduction
                sizes = [(int(t), size_for_tokens(int(t), stride)) for t in args.tokens.split(",")]
            else:
                sizes = [(None, parse_size(s)[1]) for s in args.sizes.split(",")]
            for tokens, size in sizes:
                if memory == "isolated":
                    result = _measure_isolated(name, size, {**kwargs, "tokens": tokens})
                else:
                    result = measure(name, size, memory=memory, tokens=tokens, **kwargs)
                tag = f"{name}_{size[0]}x{size[1]}_b{args.batch_size}_{args.amp}"
                write_result(args.out / tag, result)
                results.append(result)
    except (ValueError, RuntimeError) as err:
        print(f"visbench bench: {err}", file=sys.stderr)
        return 2
    print(format_table(results))
    print(f"results: {args.out}/*/result.json", file=sys.stderr)
    return 0


def _worker(payload: str) -> int:
    spec = json.loads(payload)
    result = measure(spec["name"], tuple(spec["size"]), **spec["kwargs"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2]))
    from visbench.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
