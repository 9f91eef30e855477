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

One engine for every model (DESIGN.md: no mixer gets a hand-fused path the others lack). ``--compile``
picks it once for the whole run: ``none`` (eager PyTorch, the default), ``inductor`` (``torch.compile``)
or ``inductor-freeze`` (``torch.compile`` with ``torch._inductor.config.freezing``: weights become
constants of the inference graph and inductor picks its own kernels, oneDNN ones on CPU). Every model
of the run goes through the same call; the choice is recorded in each result as ``extra.engine``
(``eager``, ``torch.compile(inductor)``, ``torch.compile(inductor, freezing)``) and ``extra.compile``.
Compilation happens in the warm-up, never in a timed window.

Paired timing (``--pair-with``): two models timed side by side in one process, window by window in
ABBA order (A B, B A, A B, ...), so load from other processes, which comes and goes over seconds, hits
both alike. The speed ratio is the median over repeats of the per-repeat ratio (partner's seconds per
step / this model's), with its quartiles; > 1 means this model is faster. ``--pair-compile`` gives the
partner another engine (default: the same), which measures the engine itself: ``--models m --pair-with
m --compile inductor-freeze --pair-compile none``. Both results record the pair under ``extra.paired``.

MACs are counted in two conventions when ``visbench.backbones.complexity.count_macs`` offers them:
``macs`` is PyTorch's ``FlopCounterMode`` count (matmuls and convolutions), ``extra.macs_fvcore`` the
fvcore convention that MambaOut's and timm's tables use (normalisation layers counted too).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visbench.cpu_allocator import keep_freed_memory

AMP_DTYPES = {"none": None, "bf16": "bfloat16", "fp16": "float16"}
# --compile choice -> the engine as recorded in results (extra.engine).
ENGINES = {
    "none": "eager",
    "inductor": "torch.compile(inductor)",
    "inductor-freeze": "torch.compile(inductor, freezing)",
}
TIMING_METHOD = (
    "warm-up (compilation included), then repeats x windows of iters steps, device synchronised around each "
    "window; several models: windows interleaved in ABBA order"
)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[2] - q[0]


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: Sequence[Callable[[], Any]], device: Any, warmup: int, repeats: int, iters: int
) -> list[list[float]]:
    """Seconds per step of each of ``steps``: ``repeats`` windows of ``iters`` steps each, after ``warmup``.

    With several steps their windows alternate in ABBA order (A B, B A, ...), so that slow drifts in the
    machine's load hit every step alike and per-repeat ratios compare like with like.
    """
    for step in steps:
        for _ in range(warmup):
            step()
    _sync(device)
    times: list[list[float]] = [[] for _ in steps]
    order = list(range(len(steps)))
    for repeat in range(repeats):
        for k in order if repeat % 2 == 0 else order[::-1]:
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                steps[k]()
            _sync(device)
            times[k].append((time.perf_counter() - start) / iters)
    return times


def time_steps(step: Callable[[], Any], device: Any, warmup: int, repeats: int, iters: int) -> list[float]:
    """Seconds per step for each of ``repeats`` windows of ``iters`` steps, after ``warmup`` steps."""
    return time_interleaved([step], device, warmup, repeats, iters)[0]


def speed_ratio(this: Sequence[float], partner: Sequence[float]) -> tuple[float, float, float]:
    """Median, first and third quartile over repeats of ``partner / this`` seconds (> 1: this is faster).

    With fewer than 4 repeats the "quartiles" are the minimum and maximum.
    """
    ratios = sorted(p / t for t, p in zip(this, partner, strict=True))
    if len(ratios) < 4:
        return statistics.median(ratios), ratios[0], ratios[-1]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return median, q1, q3


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not available on this platform
        return None


def check_model_names(names: Sequence[str]) -> None:
    """``ValueError`` naming the first unknown model and the closest registered names."""
    import timm

    import visbench.backbones  # noqa: F401  (the registration point)
    from visbench.cli import unknown_model_message

    for name in names:
        if not timm.is_model(name):
            raise ValueError(unknown_model_message(name))


@contextlib.contextmanager
def engine_context(compile: str) -> Iterator[None]:
    """Inductor settings of an engine for the duration of the block (freezing for ``inductor-freeze``)."""
    if compile not in ENGINES:
        raise ValueError(f"--compile: expected one of {', '.join(ENGINES)}, got {compile!r}")
    if compile == "inductor-freeze":
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            yield
    else:
        yield


def apply_engine(model: Any, compile: str) -> Any:
    """The callable to time: the model itself (``none``) or ``torch.compile(model)``, the same for all."""
    import torch

    if compile not in ENGINES:
        raise ValueError(f"--compile: expected one of {', '.join(ENGINES)}, got {compile!r}")
    return model if compile == "none" else torch.compile(model, backend="inductor")


def count_macs_both(meta: Any, model: Any, size: tuple[int, int]) -> tuple[int, int | None]:
    """(MACs in PyTorch's convention, MACs in fvcore's or None when ``count_macs`` has no conventions)."""
    from visbench.backbones.complexity import count_macs

    conventions = "convention" in inspect.signature(count_macs).parameters

    def count(convention: str) -> int:
        kwargs = {"convention": convention} if conventions else {}
        try:
            return count_macs(meta, (3, *size), **kwargs)
        except (AssertionError, RuntimeError):
            # fixed-size timm models: count the one built for this size
            return count_macs(model, (3, *size), **kwargs)

    return count("torch"), count("fvcore") if conventions else None


def build_model(
    name: str, size: tuple[int, int], device: Any, in_chans: int = 3, model_kwargs: dict | None = None
) -> Any:
    """timm / visbench model at ``size`` (models with a fixed input size are built for it).

    ``model_kwargs`` go to ``timm.create_model`` (e.g. ``dims`` / ``depths``); :func:`run` checks them
    against every model before any is built.
    """
    import timm

    import visbench.backbones  # noqa: F401  (the registration point)

    if not timm.is_model(name):
        raise ValueError(f"model {name!r} is not registered with timm")
    kwargs = model_kwargs or {}
    try:
        model = timm.create_model(name, img_size=size, in_chans=in_chans, **kwargs)
    except TypeError:  # models without an img_size argument work at any size
        model = timm.create_model(name, in_chans=in_chans, **kwargs)
    return model.to(device)


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs``: a JSON object of ``timm.create_model`` keywords, or nothing."""
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-kwargs: not JSON ({err.msg} at character {err.pos}): {text!r}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(
            f"--model-kwargs: expected a JSON object such as '{{\"dims\": [64, 96]}}', got {text!r}"
        )
    return kwargs


@dataclass
class _Member:
    """One model of a timed group: built, on the device, with its input batch and engine."""

    name: str
    compile: str
    model: Any
    params: int
    macs: int
    macs_fvcore: int | None
    x: Any
    forward: Any = None
    train_step: Callable[[], None] | None = None
    infer_times: list[float] = field(default_factory=list)
    train_times: list[float] = field(default_factory=list)
    peak_infer: int | None = None
    peak_train: int | None = None


def _build_member(
    name: str,
    compile: str,
    size: tuple[int, int],
    dev: Any,
    batch_size: int,
    channels_last: bool,
    model_kwargs: dict[str, Any],
) -> _Member:
    import torch

    from visbench.analyze import build_meta_model
    from visbench.backbones.complexity import count_params

    torch.manual_seed(0)
    model = build_model(name, size, dev, model_kwargs=model_kwargs)
    macs, macs_fvcore = count_macs_both(build_meta_model(name, **model_kwargs), model, size)
    x = torch.randn(batch_size, 3, *size, device=dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    member = _Member(name, compile, model, count_params(model), macs, macs_fvcore, x)
    member.forward = apply_engine(model, compile)
    return member


def measure_group(
    members: Sequence[tuple[str, str]],
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
    model_kwargs: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark (model, compile) ``members`` at one size, timed together; one schema-valid result each.

    One member: its own windows. Several: windows interleaved (:func:`time_interleaved`), and each
    result's ``extra.paired`` gives its speed ratio to every other member (:func:`speed_ratio`).
    ``tf32`` sets both TF32 flags (None leaves them as they are); the flags in effect are recorded.
    ``model_kwargs`` go to every member's ``timm.create_model`` (recorded as ``extra.model_kwargs``).
    """
    import torch

    from visbench.results import make_result, now_iso

    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    start_time = now_iso()
    dev = torch.device(device)
    if memory == "auto":
        memory = "cuda" if dev.type == "cuda" else "process"
    threads_at_start = torch.get_num_threads()
    load_at_start = _load_average()
    model_kwargs = dict(model_kwargs or {})
    group = [
        _build_member(name, c, size, dev, batch_size, channels_last, model_kwargs) for name, c in members
    ]
    amp_dtype = getattr(torch, AMP_DTYPES[amp]) if AMP_DTYPES[amp] else None
    compiled = any(m.compile != "none" for m in group)
    warmup = max(1, warmup) if compiled else warmup  # compile in the warm-up, not in a timed window

    def autocast() -> Any:
        return torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def infer_step(m: _Member) -> Callable[[], None]:
        def step() -> None:
            with engine_context(m.compile), torch.inference_mode(), autocast():
                m.forward(m.x)

        return step

    def train_step(m: _Member) -> Callable[[], None]:
        opt = torch.optim.AdamW(m.model.parameters(), lr=1e-4)
        classes = int(getattr(m.model, "num_classes", 1000) or 1000)
        target = torch.randint(0, classes, (batch_size,), device=dev)
        scaler = torch.amp.GradScaler(dev.type, enabled=amp == "fp16")

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with engine_context(m.compile), autocast():
                loss = torch.nn.functional.cross_entropy(m.forward(m.x), target)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        return step

    def peak(step: Callable[[], None]) -> int | None:
        """CUDA tensor peak of one more (untimed) step, so members of a group are not mixed."""
        if dev.type != "cuda":
            return None
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        _sync(dev)
        return torch.cuda.max_memory_allocated(dev)

    for m in group:
        m.model.eval()
    steps = [infer_step(m) for m in group]
    for m, times in zip(group, time_interleaved(steps, dev, warmup, repeats, iters), strict=True):
        m.infer_times = times
    for m, step in zip(group, steps, strict=True):
        m.peak_infer = peak(step)
    if train:
        for m in group:
            m.model.train()
        steps = [train_step(m) for m in group]
        for m, times in zip(group, time_interleaved(steps, dev, max(1, warmup), repeats, iters), strict=True):
            m.train_times = times
        for m, step in zip(group, steps, strict=True):
            m.peak_train = peak(step)

    if torch.get_num_threads() != threads_at_start:
        print(
            f"visbench bench: warning: the thread count changed from {threads_at_start} to "
            f"{torch.get_num_threads()} during the run (set --threads); both are recorded",
            file=sys.stderr,
        )
    rss = None
    if memory in ("process", "isolated"):
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux, bytes on macOS.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    results = []
    for m in group:
        tp: dict[str, Any] = {
            "batch_size": batch_size,
            "device": str(dev),
            "repeats": repeats,
            "iters": iters,
        }
        tp.update(warmup=warmup, amp=amp, channels_last=channels_last)
        tp["img_per_s"], tp["img_per_s_iqr"] = _quartiles([batch_size / t for t in m.infer_times])
        if train:
            tp["train_img_per_s"], tp["train_img_per_s_iqr"] = _quartiles(
                [batch_size / t for t in m.train_times]
            )
        if memory == "cuda":
            tp["peak_memory_bytes"] = m.peak_infer
            if train:
                tp["train_peak_memory_bytes"] = m.peak_train
            tp["peak_memory_method"] = (
                "torch.cuda.max_memory_allocated (tensors, one untimed inference step); train_* for training"
            )
        elif rss is not None:
            tp["peak_memory_bytes"] = rss
            where = "a fresh subprocess" if memory == "isolated" else "the bench process"
            scope = (
                f"all {len(group)} models of the group" if len(group) > 1 else "python + torch + model + run"
            )
            tp["peak_memory_method"] = f"ru_maxrss of {where} ({scope})" + (
                "; high-water mark, includes earlier rows" if memory == "process" else ""
            )
        extra: dict[str, Any] = {
            "engine": ENGINES[m.compile],
            "compile": m.compile,
            "timing": TIMING_METHOD,
            "infer_s_per_step": m.infer_times,
            "macs_convention": "torch",
            "macs_fvcore": m.macs_fvcore,
            "threads_at_start": threads_at_start,
            "model_kwargs": model_kwargs,
            # 1-minute load average before and after: how much else the machine was running
            "load_average": [load_at_start, _load_average()],
        }
        if train:
            extra["train_s_per_step"] = m.train_times
        paired = []
        for other in group:
            if other is m:
                continue
            entry: dict[str, Any] = {"model": other.name, "engine": ENGINES[other.compile]}
            entry["speed_ratio"], entry["speed_ratio_q1"], entry["speed_ratio_q3"] = speed_ratio(
                m.infer_times, other.infer_times
            )
            if train:
                ratio = speed_ratio(m.train_times, other.train_times)
                entry["train_speed_ratio"], entry["train_speed_ratio_q1"], entry["train_speed_ratio_q3"] = (
                    ratio
                )
            if m.macs and other.macs:
                entry["macs_ratio"] = m.macs / other.macs
                if train:  # > 1: a training step of this model costs more per MAC than the partner's
                    entry["train_cost_per_mac_ratio"] = 1.0 / (
                        entry["train_speed_ratio"] * entry["macs_ratio"]
                    )
            paired.append(entry)
        if paired:
            extra["paired"] = paired
        results.append(
            make_result(
                model=m.name,
                task="bench",
                dataset="synthetic",
                input_size=size,
                params=m.params,
                macs=m.macs,
                metrics={},
                start_time=start_time,
                tokens=tokens,
                throughput=tp,
                device=device,
                amp=None if amp == "none" else amp,
                extra=extra,
            )
        )
    return results


def measure(name: str, size: tuple[int, int], *, compile: str = "none", **kwargs: Any) -> dict[str, Any]:
    """Benchmark one model at one size under one engine; a schema-valid result dict (task ``bench``).

    Keyword arguments as :func:`measure_group`.
    """
    return measure_group([(name, compile)], size, **kwargs)[0]


def _measure_isolated(
    members: Sequence[tuple[str, str]], size: tuple[int, int], kwargs: dict[str, Any]
) -> list[dict[str, Any]]:
    """:func:`measure_group` in a fresh interpreter, so its RSS high-water mark is this group's alone."""
    spec = {
        "members": [list(m) for m in members],
        "size": list(size),
        "kwargs": {**kwargs, "memory": "isolated"},
    }
    proc = subprocess.run(
        [sys.executable, "-m", "visbench.bench", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ},
    )
    if proc.returncode != 0:
        names = " + ".join(f"{name} ({ENGINES[c]})" for name, c in members)
        raise RuntimeError(f"bench worker for {names} at {size} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(results: list[dict[str, Any]]) -> str:
    """One line per (model, size, engine): params, MACs (both conventions), median img/s with IQR, memory.

    Paired results add a second table: each pair's speed ratio, median over repeats with its quartiles.
    """
    head = (
        f"{'model':<24} {'input':>10} {'engine':<34} {'params M':>9} {'GMACs':>7} {'fvcore':>7} {'img/s':>9} "
        f"{'IQR':>7} {'train img/s':>11} {'IQR':>7} {'peak MiB':>9}"
    )
    lines = [head, "-" * len(head)]
    nan = float("nan")
    for r in results:
        tp, extra = r["throughput"], r.get("extra") or {}
        h, w = r["input_size"]
        mem = tp.get("peak_memory_bytes")
        mem_text = "" if mem is None else f"{mem / 2**20:.0f}"
        fvcore = extra.get("macs_fvcore")
        fvcore_text = "" if fvcore is None else f"{fvcore / 1e9:.2f}"
        train, train_iqr = tp.get("train_img_per_s", nan), tp.get("train_img_per_s_iqr", nan)
        lines.append(
            f"{r['model']:<24} {f'{h}x{w}':>10} {extra.get('engine', 'eager'):<34} {r['params'] / 1e6:>9.2f} "
            f"{(r['macs'] or 0) / 1e9:>7.2f} {fvcore_text:>7} {tp['img_per_s']:>9.1f} "
            f"{tp['img_per_s_iqr']:>7.1f} {train:>11.1f} {train_iqr:>7.1f} {mem_text:>9}"
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
    pairs = [(r, p) for r in results for p in (r.get("extra") or {}).get("paired", [])]
    if pairs:
        lines += [
            "",
            "paired (windows interleaved ABBA; ratio = partner's s/step / this model's, median over repeats "
            "[quartiles]; > 1: this model is faster; train s/MAC: this model's training seconds per MAC "
            "over the partner's, > 1: dearer per unit of work)",
            f"{'model':<24} {'engine':<34} {'vs':<24} {'engine':<34} {'inference':>20} {'training':>20} "
            f"{'train s/MAC':>11}",
        ]
        for r, p in pairs:
            infer = _ratio_text(p, "speed_ratio")
            train = _ratio_text(p, "train_speed_ratio") if "train_speed_ratio" in p else ""
            per_mac = f"{p['train_cost_per_mac_ratio']:.2f}" if "train_cost_per_mac_ratio" in p else ""
            lines.append(
                f"{r['model']:<24} {r['extra']['engine']:<34} {p['model']:<24} {p['engine']:<34} "
                f"{infer:>20} {train:>20} {per_mac:>11}"
            )
    return "\n".join(lines)


def _ratio_text(entry: dict[str, Any], key: str) -> str:
    return f"{entry[key]:.3f} [{entry[key + '_q1']:.3f}-{entry[key + '_q3']:.3f}]"


def _names(text: str | None) -> list[str]:
    return [m.strip() for m in (text or "").split(",") if m.strip()]


def plan_groups(args: argparse.Namespace) -> list[list[tuple[str, str]]]:
    """The timed groups of a run: each model alone, or with its ``--pair-with`` partner (zipped in order)."""
    models = _names(args.models)
    if not models:
        raise ValueError("--models: no model names given")
    if args.pair_with is None:
        return [[(name, args.compile)] for name in models]
    partners = _names(args.pair_with)
    if len(partners) != len(models):
        raise ValueError(
            f"--pair-with: expected {len(models)} names, one per --models entry, got {len(partners)} "
            f"({', '.join(partners) or 'none'})"
        )
    partner_compile = args.pair_compile or args.compile
    return [[(a, args.compile), (b, partner_compile)] for a, b in zip(models, partners, strict=True)]


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
    parser.add_argument(
        "--model-kwargs",
        default=None,
        metavar="JSON",
        help='timm.create_model keywords for every model, e.g. \'{"dims": [64, 96, 128, 192], '
        '"depths": [1, 1, 2, 1]}\' (recorded as extra.model_kwargs)',
    )
    parser.add_argument(
        "--compile",
        choices=tuple(ENGINES),
        default="none",
        help="engine for every model, recorded as extra.engine: none (eager), inductor (torch.compile), "
        "inductor-freeze (torch.compile with inductor's freezing: oneDNN kernels on CPU)",
    )
    parser.add_argument(
        "--pair-with",
        default=None,
        metavar="NAMES",
        help="comma-separated partners, one per --models entry: each pair is timed side by side (ABBA) "
        "and both results record the speed ratio with its quartiles",
    )
    parser.add_argument(
        "--pair-compile",
        choices=tuple(ENGINES),
        default=None,
        help="engine of the --pair-with partners (default: --compile); to measure an engine itself",
    )
    parser.add_argument("--no-train", action="store_true", help="inference only")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch and numba (default: as the environment says); recorded",
    )
    parser.add_argument("--memory", choices=("auto", "isolated", "process", "none"), default="auto")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="result.json folder root")


def _tag(name: str, compile: str, size: tuple[int, int], args: argparse.Namespace, partner: Any) -> str:
    tag = f"{name}_{size[0]}x{size[1]}_b{args.batch_size}_{args.amp}"
    tag += "" if compile == "none" else f"_{compile}"
    if args.model_kwargs:  # a short stable name for the keyword set, so runs with other widths do not collide
        text = json.dumps(parse_model_kwargs(args.model_kwargs), sort_keys=True)
        tag += "_kw" + hashlib.sha1(text.encode()).hexdigest()[:8]
    if partner is not None:
        partner_name, partner_compile = partner
        tag += f"_vs_{partner_name}" + ("" if partner_compile == "none" else f"_{partner_compile}")
    return tag


def run(args: argparse.Namespace) -> int:
    """Measure every group; a bad name or value raises (``visbench`` turns it into one line and exit 2)."""
    import torch

    from visbench.analyze import build_meta_model, model_stages, parse_size, reference_stage, size_for_tokens
    from visbench.results import write_result

    groups = plan_groups(args)
    names = [name for group in groups for name, _ in group]
    check_model_names(names)
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    for name in dict.fromkeys(names) if model_kwargs else ():  # fail here, not in a worker process
        try:
            build_meta_model(name, **model_kwargs)
        except TypeError as err:
            raise ValueError(
                f"--model-kwargs {args.model_kwargs}: {name} does not take them ({err})"
            ) from None
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: expected a positive number, got {args.threads}")
        # numba's OpenMP pool (the CPU selective scan) resets the process's OpenMP thread count to its own
        # size when it starts: give both the same number, before numba is imported, workers included.
        os.environ["OMP_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
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
        model_kwargs=model_kwargs,
    )
    fixed_sizes = None if args.tokens else [(None, parse_size(s)[1]) for s in args.sizes.split(",")]
    results = []
    for group in groups:
        if args.tokens:
            meta = build_meta_model(group[0][0], **kwargs["model_kwargs"])
            stride = reference_stage(model_stages(meta)).reduction
            sizes = [(int(t), size_for_tokens(int(t), stride)) for t in args.tokens.split(",")]
        else:
            sizes = fixed_sizes
        for tokens, size in sizes:
            if memory == "isolated":
                measured = _measure_isolated(group, size, {**kwargs, "tokens": tokens})
            else:
                measured = measure_group(group, size, memory=memory, tokens=tokens, **kwargs)
            for k, ((name, compile), result) in enumerate(zip(group, measured, strict=True)):
                partner = group[1 - k] if len(group) == 2 else None
                write_result(args.out / _tag(name, compile, size, args, partner), result)
                results.append(result)
    print(format_table(results))
    print(f"results: {args.out}/*/result.json", file=sys.stderr)
    return 0


def _worker(payload: str) -> int:
    """A fresh process measuring one group: the allocator setting of the ``visbench`` command first."""
    keep_freed_memory()
    spec = json.loads(payload)
    members = [tuple(m) for m in spec["members"]]
    print(json.dumps(measure_group(members, tuple(spec["size"]), **spec["kwargs"])))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker(sys.argv[2]))
    from visbench.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
