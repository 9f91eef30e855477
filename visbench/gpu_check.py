"""``python -m visbench.gpu_check``: every GPU-only path of the project, checked and timed in one short run.

Users train on GPUs, and GPU time comes in windows of minutes, so this check is prepared in advance and
runs in at most ``--budget-s`` (default 480 s, set-up excluded). ``scripts/gpu_check.sh`` runs it.

Sections, each with a time cap (:data:`SECTIONS`; ``--sections`` picks some), in this order:

``scan``
    ``selective_scan`` with ``backend="triton"`` and ``backend="cuda"`` (when mamba-ssm's compiled
    ``selective_scan_cuda`` imports) against ``backend="ref"`` on the same device: out, last state and
    every gradient, float32 / bfloat16 / float16 inputs, shared and grouped B/C, L from 1 to 4096, within
    mamba-ssm's test tolerances (:func:`visbench.kernels.checks.assert_backend_matches_ref`, the function
    the CPU tests call). One record per (back end, dtype).
``conv``
    ``causal_conv1d`` through the causal-conv1d package's CUDA kernels against the ``F.conv1d`` reference
    (:func:`visbench.kernels.checks.assert_causal_conv1d_matches_reference`), forward and gradients.
``train``
    one optimiser step with bf16 autocast of every registered ``*_tiny`` model (every family, mixer,
    scan order and body of ``visbench.backbones.naming.MODEL_FAMILIES``) at 224² (the pixel-sequence
    bodies at their own 28² single-channel input: at 224² they would be 50176 tokens long); the loss,
    every gradient and every updated weight must be finite (:func:`train_step_check`).
``detect``
    one Mask R-CNN training iteration (mmdetection) with an SSM backbone on a synthetic image
    (:func:`mask_rcnn_iteration_check`): finite losses and backbone gradients.
``scan_timing``
    Triton against mamba-ssm's CUDA scan, forward and forward + backward, L 196 to 16384.
``bench``
    training (and inference) img/s per model at 224² with bf16 autocast, through ``visbench bench``'s
    own measurement (:func:`visbench.bench.measure`); each result is also written as ``result.json``.

Budget: a section starts no new case or model once its cap (or the overall budget) is spent, nor one that
would end past it if it took as long as the one before, and reports what it left as ``skipped: time``
(a single model or case is not interrupted: the caps add up to 20 s less than the default budget, for
that); a section that raises is recorded as a failure with its one-line error
and the run goes on. The summary (a Markdown table on stdout, ``gpu_check.md`` and ``gpu_check.json``
under ``--out``) always comes out; the JSON is rewritten after every record, so even a killed run leaves
what it did. Exit status 1 when a check failed, else 0.

Set-up (not counted in the budget): when mamba-ssm's ``selective_scan_cuda`` or causal-conv1d's
``causal_conv1d_cuda`` does not import (probed in a subprocess, so this process's caches stay clean),
and unless ``--skip-install``, it builds them (:func:`install_commands`), each command and its duration
recorded::

    CAUSAL_CONV1D_FORCE_BUILD=TRUE pip install --no-build-isolation --no-deps --no-cache-dir \\
        --force-reinstall causal-conv1d==<installed version>
    MAMBA_FORCE_BUILD=TRUE MAMBA_KEEP_CUDA_BUILD=TRUE pip install --no-build-isolation --no-deps \\
        --no-cache-dir --force-reinstall mamba-ssm==<installed version>

``MAMBA_KEEP_CUDA_BUILD=TRUE`` keeps mamba-ssm's Mamba-1 selective-scan extension, which its recent
releases no longer build by default; ``*_FORCE_BUILD`` builds here instead of downloading a prebuilt wheel;
``--force-reinstall --no-cache-dir``: the Python-only install of ``scripts/bootstrap.sh --dev`` already
satisfies the requirement, and pip would reuse the CPU-only wheel it cached then; ``--no-deps`` as in
bootstrap.sh (mamba-ssm 2.3 asks for GPU-only extras the scan does not use). ``MAX_JOBS`` is the CPU
count and ``TORCH_CUDA_ARCH_LIST`` this GPU's capability unless set; pip's own settings
(``PIP_FIND_LINKS`` for an offline machine) apply. The builds share ``--install-budget-s``; a failed or
timed-out build is reported and the checks go on without that back end.

Without CUDA (``torch.cuda.is_available()`` false) it prints one line saying so and exits 0.
``--device cpu`` runs the same sections on small problems on CPU (Triton only under
``TRITON_INTERPRET=1``): how ``tests/test_gpu_check.py`` exercises the script itself.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SECTIONS",
    "Budget",
    "Plan",
    "Record",
    "format_summary",
    "install_commands",
    "main",
    "make_plan",
    "mask_rcnn_iteration_check",
    "parse_args",
    "train_step_check",
    "write_summary",
]

SCHEMA = "visbench.gpu_check/1"
DEFAULT_BUDGET_S = 480.0
DEFAULT_INSTALL_BUDGET_S = 1500.0
# section -> time cap in seconds, in run order; the caps add up to less than the default budget.
SECTIONS: dict[str, float] = {
    "scan": 140.0,
    "conv": 20.0,
    "train": 90.0,
    "detect": 45.0,
    "scan_timing": 60.0,
    "bench": 105.0,
}
STATUSES = ("pass", "fail", "skip")
NO_GPU_LINE = "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); nothing to check"
# compiled module -> (distribution, environment for its CUDA build)
CUDA_EXTENSIONS: dict[str, tuple[str, dict[str, str]]] = {
    "causal_conv1d_cuda": ("causal-conv1d", {"CAUSAL_CONV1D_FORCE_BUILD": "TRUE"}),
    "selective_scan_cuda": ("mamba-ssm", {"MAMBA_FORCE_BUILD": "TRUE", "MAMBA_KEEP_CUDA_BUILD": "TRUE"}),
}
_SKIP_BUILD_VARS = ("CAUSAL_CONV1D_SKIP_CUDA_BUILD", "MAMBA_SKIP_CUDA_BUILD")


# ----------------------------------------------------------------------------- records and budget


@dataclass
class Record:
    """One line of the summary: a check (pass / fail), a timing, or something left out (skip)."""

    section: str
    name: str
    status: str
    detail: str = ""
    seconds: float = 0.0
    values: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Record {self.name!r}: status {self.status!r} is not one of {STATUSES}")


def one_line(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, shortened to ``limit`` characters."""
    text = f"{type(err).__name__}: {' '.join(str(err).split())}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Budget:
    """The run's clock: ``total_s`` overall, each section at most its cap from when it starts."""

    def __init__(self, total_s: float, caps: dict[str, float], clock: Callable[[], float] = time.monotonic):
        self.total_s, self.caps, self.clock = total_s, dict(caps), clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def section_deadline(self, section: str) -> float:
        """Clock value after which ``section`` (starting now) starts nothing new."""
        return min(self.start + self.total_s, self.clock() + self.caps.get(section, self.total_s))

    def left(self, deadline: float) -> float:
        return deadline - self.clock()


# ----------------------------------------------------------------------------- what to run where


@dataclass(frozen=True)
class Plan:
    """Problem sizes of every section for one device type (big on CUDA, small for a CPU dry run)."""

    scan_cases: tuple[Any, ...]  # visbench.kernels.checks.ScanCase
    scan_dtypes: tuple[str, ...]
    conv_cases: tuple[tuple[int, int, int, str | None, bool, bool], ...]  # dim, width, L, act, bias, ch-last
    conv_dtypes: tuple[str, ...]
    train_size: int
    train_batch: int
    detect_side: int
    timing_shape: tuple[int, int, int]  # batch, dim, N
    timing_lengths: tuple[int, ...]
    timing_repeats: int
    bench_models: tuple[str, ...] | None  # None: every image-body tiny model
    bench_size: int
    bench_batch: int


def make_plan(device_type: str, quick: bool = False) -> Plan:
    """The sizes to check at: L 1 to 4096 and 224² images on CUDA; a few small problems on CPU."""
    from visbench.kernels.checks import ScanCase

    def scan_cases(lengths: Iterable[int], shapes: Sequence[tuple]) -> tuple[ScanCase, ...]:
        return tuple(ScanCase(b, d, n, length, *rest) for length in lengths for b, d, n, *rest in shapes)

    dtypes = ("float32", "bfloat16", "float16")
    if device_type == "cuda":
        lengths = (1, 257, 4096) if quick else (1, 7, 64, 257, 1000, 2048, 2049, 4096)
        shapes = [
            (2, 4, 8, "grouped", True, True, True, True, True),  # mamba-ssm's test sizes, every option
            (1, 64, 16, "shared", False, False, False, False, True),  # several channel blocks, plain
        ]
        if not quick:
            shapes += [
                (2, 24, 4, "grouped", True, False, True, False, False),
                (3, 64, 1, "shared", False, True, False, True, True),
            ]
        conv = [(64, w, length, "silu", True, False) for w in (2, 3, 4) for length in (1, 300, 4096)]
        conv += [(96, 4, 1000, None, False, True), (96, 3, 4096, "silu", True, True)]
        return Plan(
            scan_cases=scan_cases(lengths, shapes),
            scan_dtypes=dtypes,
            conv_cases=tuple(conv[::3] if quick else conv),
            conv_dtypes=dtypes,
            train_size=224,
            train_batch=4,
            detect_side=256,
            timing_shape=(2, 192, 16),
            timing_lengths=(196, 3136, 16384) if quick else (196, 784, 3136, 4096, 16384),
            timing_repeats=5,
            bench_models=("gated_cnn_tiny", "ssm_cross2d_tiny", "attn_tiny", "vit_tiny") if quick else None,
            bench_size=224,
            bench_batch=32 if quick else 64,
        )
    shapes = [
        (1, 4, 4, "grouped", True, True, True, True, True),
        (1, 8, 2, "shared", False, False, False, False, True),
    ]
    return Plan(
        scan_cases=scan_cases((1, 7, 65) if not quick else (1, 65), shapes),
        scan_dtypes=("float32", "bfloat16") if quick else dtypes,
        conv_cases=((8, 4, 37, "silu", True, False), (8, 3, 9, None, False, True)),
        conv_dtypes=("float32", "bfloat16"),
        train_size=64,
        train_batch=2,
        detect_side=64,
        timing_shape=(1, 8, 4),
        timing_lengths=(196,),
        timing_repeats=2,
        bench_models=("gated_cnn_tiny",),
        bench_size=64,
        bench_batch=2,
    )


def tiny_models() -> list[str]:
    """Every registered ``<stem>_tiny`` of ``MODEL_FAMILIES``, in its order (every family, order and body)."""
    from visbench.backbones import list_models
    from visbench.backbones.naming import MODEL_FAMILIES

    registered = set(list_models())
    return [f"{stem}_tiny" for stem in MODEL_FAMILIES if f"{stem}_tiny" in registered]


def image_models() -> list[str]:
    """The tiny models with a 2-D body (hierarchical, isotropic): the ones timed at 224²."""
    from visbench.backbones.naming import describe

    return [name for name in tiny_models() if describe(name).body != "sequence"]


# ----------------------------------------------------------------------------- model-level checks


def train_step_check(
    name: str,
    device: Any = "cuda",
    size: int = 224,
    batch_size: int = 4,
    amp: str | None = "bf16",
    seed: int = 0,
) -> dict[str, Any]:
    """One AdamW step of model ``name`` under autocast (``amp`` bf16 / fp16 / None) on random images.

    Raises AssertionError naming what is wrong unless the loss, every parameter's gradient (every
    trainable parameter must get one) and every updated parameter are finite. Pixel-sequence models run
    at their own input (28² grey pixels), the others at ``size``². Returns the loss and what ran.
    """
    import torch
    import torch.nn.functional as F

    from visbench.backbones.naming import describe_any
    from visbench.bench import build_model

    device = torch.device(device)
    sequence = describe_any(name).body == "sequence"
    chans, side = (1, 28) if sequence else (3, size)
    torch.manual_seed(seed)
    model = build_model(name, (side, side), device, in_chans=chans)
    model.train()
    x = torch.randn(batch_size, chans, side, side, device=device)
    classes = int(getattr(model, "num_classes", 1000) or 1000)
    target = torch.randint(0, classes, (batch_size,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), target)
    loss_value = float(loss.detach())
    assert torch.isfinite(loss), f"{name}: loss is {loss_value}"
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"{name}: {len(missing)} parameters got no gradient, e.g. {missing[:3]}"
    bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients in {len(bad)} parameters, e.g. {bad[:3]}"
    opt.step()
    bad = [n for n, p in params if not torch.isfinite(p).all()]
    assert not bad, f"{name}: non-finite weights after the step in {len(bad)} parameters, e.g. {bad[:3]}"
    return {
        "loss": round(loss_value, 4),
        "input": f"{batch_size}x{chans}x{side}x{side}",
        "logits_dtype": str(logits.dtype).removeprefix("torch."),
        "params": sum(p.numel() for _, p in params),
    }


def _synthetic_detection_sample(side: int, seed: int) -> tuple[Any, Any]:
    """A random ``side``² image with three boxes and their masks, packed as mmdetection packs them."""
    import numpy as np
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, side, side), generator=gen, dtype=torch.uint8)
    boxes = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.3, 0.9, 0.8], [0.2, 0.55, 0.45, 0.95]]) * side
    masks = np.zeros((len(boxes), side, side), dtype=np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
        masks[k, y0:y1, x0:x1] = 1
    sample = DetDataSample(
        metainfo=dict(img_id=0, img_shape=(side, side), ori_shape=(side, side), scale_factor=(1.0, 1.0))
    )
    sample.gt_instances = InstanceData(
        bboxes=HorizontalBoxes(boxes),
        labels=torch.tensor([0, 3, 7]),
        masks=BitmapMasks(masks, side, side),
    )
    return image, sample


def mask_rcnn_iteration_check(
    device: Any = "cuda", backbone: str = "ssm_cross2d_tiny", side: int = 256, seed: int = 0
) -> dict[str, Any]:
    """One Mask R-CNN training iteration (the study's detection config, a narrow ``backbone``) on ``device``.

    Raises ImportError when mmdetection / mmcv's ops are missing, AssertionError unless every loss and
    every backbone gradient is finite. Returns the losses.
    """
    from visbench.detection.runner import require_mmdet
    from visbench.detection.study import STUDY_CONFIG

    require_mmdet()
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger

    register_all_modules()
    # mmengine logs every parameter's initialisation at INFO: thousands of lines that say nothing here.
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        return _mask_rcnn_iteration(device, backbone, side, seed, STUDY_CONFIG)
    finally:
        logger.setLevel(level)


def _mask_rcnn_iteration(device: Any, backbone: str, side: int, seed: int, config: Path) -> dict[str, Any]:
    """The body of :func:`mask_rcnn_iteration_check`: build, one loss forward, backward, finite checks."""
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config

    cfg = Config.fromfile(str(config))
    dims = (32, 48, 64, 96)
    cfg.model.backbone.update(model=backbone, dims=dims, depths=(1, 1, 1, 1))
    cfg.model.neck.in_channels = list(dims)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model = model.to(device).train()
    image, sample = _synthetic_detection_sample(side, seed)
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), True)
    losses = model(**data, mode="loss")
    loss, log_vars = model.parse_losses(losses)
    bad = [k for k, v in log_vars.items() if not torch.isfinite(torch.as_tensor(v)).all()]
    assert not bad and torch.isfinite(loss), f"Mask R-CNN ({backbone}): non-finite losses {bad or ['loss']}"
    expected = {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"}
    assert expected <= set(log_vars), f"Mask R-CNN ({backbone}): losses {sorted(log_vars)} lack {expected}"
    loss.backward()
    grads = [(n, p.grad) for n, p in model.backbone.named_parameters() if p.grad is not None]
    assert grads, f"Mask R-CNN ({backbone}): the backbone got no gradient"
    bad = [n for n, g in grads if not torch.isfinite(g).all()]
    assert not bad, f"Mask R-CNN ({backbone}): non-finite backbone gradients in {bad[:3]}"
    return {
        "backbone": backbone,
        "image": f"{side}x{side}",
        **{k: round(float(torch.as_tensor(v).detach()), 4) for k, v in log_vars.items()},
    }


# ----------------------------------------------------------------------------- the sections


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def scan_section(device: Any, deadline: float, plan: Plan, clock: Callable[[], float] = time.monotonic):
    """Triton and CUDA scans against ``ref`` on ``device``; one record per (back end, dtype)."""
    import torch

    from visbench.kernels import checks, scan_cuda, scan_triton

    device = torch.device(device)
    backends = []
    for backend, module, why in (
        ("triton", scan_triton, "triton is not usable on this device (on CPU: needs TRITON_INTERPRET=1)"),
        ("cuda", scan_cuda, "mamba-ssm's selective_scan_cuda does not import"),
    ):
        if module.is_available(device):
            backends.append(backend)
        else:
            yield Record("scan", f"{backend} vs ref", "skip", why)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # ref's einsums in true float32, as mamba's test runs it
    try:
        for dtype_name in plan.scan_dtypes:
            for backend in backends:
                start, done, failures = clock(), 0, []
                for case in plan.scan_cases:
                    if clock() > deadline:
                        break
                    try:
                        checks.assert_backend_matches_ref(
                            backend, case, _dtype(dtype_name), device, ref_device=None
                        )
                    except Exception as err:  # noqa: BLE001 - a failed case is a result, the grid goes on
                        failures.append(one_line(err))
                    done += 1
                yield _grid_record(
                    "scan",
                    f"{backend} vs ref {dtype_name}",
                    done,
                    len(plan.scan_cases),
                    failures,
                    clock() - start,
                )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        checks._ref_result.cache_clear()  # the cached ref results are this section's alone


def _grid_record(
    section: str, name: str, done: int, total: int, failures: Sequence[str], seconds: float
) -> Record:
    """pass / fail / skip for a grid of which ``done`` of ``total`` cases ran (the rest: out of time)."""
    values = {"cases_run": done, "cases": total, "cases_failed": len(failures)}
    if failures:
        detail = f"{len(failures)}/{done} cases failed; first: {failures[0]}"
        return Record(section, name, "fail", detail, seconds, values)
    if done == 0:
        return Record(section, name, "skip", "skipped: time", seconds, values)
    note = f"{done} cases" if done == total else f"{done}/{total} cases ({total - done} skipped: time)"
    return Record(section, name, "pass", note, seconds, values)


def conv_section(device: Any, deadline: float, plan: Plan, clock: Callable[[], float] = time.monotonic):
    """causal_conv1d through the op (the package's CUDA kernels on CUDA) against the reference."""
    import torch

    from visbench.kernels.causal_conv1d import package_available
    from visbench.kernels.checks import assert_causal_conv1d_matches_reference

    device = torch.device(device)
    if device.type == "cuda" and not package_available():
        yield Record(
            "conv", "causal_conv1d package vs reference", "skip", "causal_conv1d_cuda does not import"
        )
        return
    path = "causal-conv1d CUDA kernels" if device.type == "cuda" else "CPU kernels"
    for dtype_name in plan.conv_dtypes:
        start, done, failures = clock(), 0, []
        for dim, width, length, activation, bias, channel_last in plan.conv_cases:
            if clock() > deadline:
                break
            try:
                assert_causal_conv1d_matches_reference(
                    dim,
                    width,
                    length,
                    _dtype(dtype_name),
                    device,
                    activation,
                    bias,
                    channel_last=channel_last,
                )
            except Exception as err:  # noqa: BLE001
                failures.append(one_line(err))
            done += 1
        record = _grid_record(
            "conv", f"{path} vs reference {dtype_name}", done, len(plan.conv_cases), failures, clock() - start
        )
        yield record


def _items(
    section: str, items: Iterable[tuple[str, Callable[[], dict[str, Any]]]], deadline: float, clock
) -> Iterator[Record]:
    """Run each (name, fn): pass with fn's values, fail with its one-line error; skip one that would end
    past ``deadline`` if it took as long as the one before it (so the section overruns its cap by little)."""
    last = 0.0
    for name, fn in items:
        if clock() + last > deadline:
            yield Record(section, name, "skip", "skipped: time")
            continue
        start = clock()
        try:
            values = fn() or {}
        except Exception as err:  # noqa: BLE001 - recorded, the run goes on
            yield Record(section, name, "fail", one_line(err), clock() - start)
        else:
            yield Record(section, name, "pass", _values_text(values), clock() - start, values)
        last = clock() - start


def _values_text(values: dict[str, Any], keys: int = 4) -> str:
    return ", ".join(f"{k} {v}" for k, v in list(values.items())[:keys])


def train_section(device: Any, deadline: float, plan: Plan, clock: Callable[[], float] = time.monotonic):
    """One bf16-autocast training step of every tiny model."""

    def step(name: str) -> Callable[[], dict[str, Any]]:
        return lambda: train_step_check(name, device, plan.train_size, plan.train_batch, "bf16")

    yield from _items("train", ((name, step(name)) for name in tiny_models()), deadline, clock)


def detect_section(device: Any, deadline: float, plan: Plan, clock: Callable[[], float] = time.monotonic):
    """One Mask R-CNN iteration with an SSM backbone; skipped (with the reason) without mmdetection."""
    name = "Mask R-CNN iteration, ssm_cross2d_tiny backbone"
    try:
        from visbench.detection.runner import require_mmdet

        require_mmdet()
    except ImportError as err:
        yield Record("detect", name, "skip", one_line(err, 200))
        return
    check = lambda: mask_rcnn_iteration_check(device, "ssm_cross2d_tiny", plan.detect_side)  # noqa: E731
    yield from _items("detect", [(name, check)], deadline, clock)


def _scan_step(backend: str, mode: str, inputs: dict, dout: Any) -> Callable[[], None]:
    import torch

    from visbench.kernels import selective_scan

    def step() -> None:
        if mode == "fwd":
            with torch.no_grad():
                selective_scan(**inputs, delta_softplus=True, backend=backend)
        else:
            out = selective_scan(**inputs, delta_softplus=True, backend=backend)
            torch.autograd.grad(out, [t for t in inputs.values() if t is not None], dout)

    return step


def scan_timing_section(
    device: Any, deadline: float, plan: Plan, clock: Callable[[], float] = time.monotonic
):
    """Milliseconds per call of the Triton and the CUDA scan (median of windows), forward and fwd + bwd."""
    import torch

    from visbench.bench import time_steps
    from visbench.kernels.checks import ScanCase, make_inputs
    from visbench.kernels.selective_scan import available_backends

    device = torch.device(device)
    backends = [b for b in ("triton", "cuda") if b in available_backends(device)]
    if not backends:
        yield Record(
            "scan_timing", "triton / cuda scan", "skip", "neither the triton nor the cuda back end runs here"
        )
        return
    batch, dim, dstate = plan.timing_shape
    for mode in ("fwd", "fwd+bwd"):
        for length in plan.timing_lengths:
            name = f"scan {mode} L={length}"
            if clock() > deadline:
                yield Record("scan_timing", name, "skip", "skipped: time")
                continue
            start = clock()
            case = ScanCase(batch, dim, dstate, length, "shared", True, True, True, True, False)
            values: dict[str, Any] = {"mode": mode, "L": length, "shape": f"b{batch} d{dim} N{dstate}"}
            try:
                inputs = make_inputs(case, torch.float32, device, requires_grad=mode != "fwd")
                dout = torch.randn(batch, dim, length, device=device)
                for backend in backends:
                    step = _scan_step(backend, mode, inputs, dout)
                    seconds = time_steps(step, device, warmup=2, repeats=plan.timing_repeats, iters=3)
                    values[f"{backend}_ms"] = round(1e3 * statistics.median(seconds), 4)
                if len(backends) == 2:
                    values["triton_over_cuda"] = round(values["triton_ms"] / values["cuda_ms"], 3)
            except Exception as err:  # noqa: BLE001
                yield Record("scan_timing", name, "fail", one_line(err), clock() - start, values)
                continue
            text = ", ".join(f"{b} {values[f'{b}_ms']:.3f} ms" for b in backends)
            yield Record("scan_timing", name, "pass", text, clock() - start, values)


def bench_section(
    device: Any,
    deadline: float,
    plan: Plan,
    clock: Callable[[], float] = time.monotonic,
    out: Path | None = None,
):
    """Training and inference img/s per model with bf16 autocast (``visbench bench``'s measurement)."""
    from visbench.backbones.naming import describe
    from visbench.bench import measure

    size = (plan.bench_size, plan.bench_size)

    def run(name: str) -> Callable[[], dict[str, Any]]:
        def bench() -> dict[str, Any]:
            result = measure(
                name,
                size,
                device=str(device),
                batch_size=plan.bench_batch,
                warmup=2,
                repeats=3,
                iters=3,
                amp="bf16",
            )
            if out is not None:
                from visbench.results import write_result

                write_result(out / "bench" / f"{name}_{size[0]}x{size[1]}_b{plan.bench_batch}_bf16", result)
            tp = result["throughput"]
            peak = tp.get("peak_memory_bytes")
            return {
                "family": describe(name).family,
                "train_img_per_s": round(tp["train_img_per_s"], 1),
                "img_per_s": round(tp["img_per_s"], 1),
                "batch": plan.bench_batch,
                "peak_mib": None if peak is None else round(peak / 2**20),
            }

        return bench

    models = plan.bench_models if plan.bench_models is not None else image_models()
    yield from _items("bench", ((f"bench {name}", run(name)) for name in models), deadline, clock)


# ----------------------------------------------------------------------------- set-up: CUDA builds


def extension_import_error(module: str, python: str = sys.executable) -> str | None:
    """None when ``module`` imports in a fresh interpreter, else the last line of its error."""
    code = f"import torch, {module}"
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return one_line(err)
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def install_commands(
    missing: Sequence[str], python: str = sys.executable, arch: str | None = None
) -> list[tuple[list[str], dict[str, str]]]:
    """The pip command and extra environment that build each missing compiled module (see the docstring)."""
    commands = []
    for module in [m for m in CUDA_EXTENSIONS if m in missing]:  # causal-conv1d first, as mamba-ssm expects
        distribution, env = CUDA_EXTENSIONS[module]
        version = _installed_version(distribution)
        requirement = distribution if version is None else f"{distribution}=={version}"
        flags = ["--no-build-isolation", "--no-deps", "--no-cache-dir", "--force-reinstall"]
        env = dict(env)
        env.setdefault("MAX_JOBS", os.environ.get("MAX_JOBS", str(os.cpu_count() or 4)))
        if arch and "TORCH_CUDA_ARCH_LIST" not in os.environ:
            env["TORCH_CUDA_ARCH_LIST"] = arch
        commands.append(([python, "-m", "pip", "install", *flags, requirement], env))
    return commands


def _shell_text(command: list[str], env: dict[str, str]) -> str:
    return " ".join([*(f"{k}={v}" for k, v in env.items()), *command])


def install_section(budget_s: float, arch: str | None, clock: Callable[[], float] = time.monotonic):
    """Build mamba-ssm's and causal-conv1d's CUDA extensions when they do not import (set-up, untimed)."""
    missing = {m: err for m in CUDA_EXTENSIONS if (err := extension_import_error(m)) is not None}
    for module in CUDA_EXTENSIONS:
        if module not in missing:
            yield Record("install", f"{module} imports", "pass", "already built")
    if not missing:
        return
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        for module, err in missing.items():
            yield Record(
                "install", f"build {module}", "skip", f"no nvcc (CUDA toolkit) to build it; import: {err}"
            )
        return
    deadline = clock() + budget_s
    for command, env in install_commands(list(missing), arch=arch):
        module = next(m for m in missing if CUDA_EXTENSIONS[m][0] in command[-1])
        text = _shell_text(command, env)
        left = deadline - clock()
        if left < 60:
            yield Record(
                "install", f"build {module}", "skip", f"skipped: install budget spent; would run: {text}"
            )
            continue
        print(f"gpu_check: building {module}: {text}", file=sys.stderr, flush=True)
        start = clock()
        full_env = {k: v for k, v in os.environ.items() if k not in _SKIP_BUILD_VARS} | env
        try:
            proc = subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=left)
            ok, tail = proc.returncode == 0, (proc.stderr.strip().splitlines() or [""])[-1]
        except subprocess.TimeoutExpired:
            ok, tail = False, f"timed out after {left:.0f} s"
        seconds = clock() - start
        error = None if ok else tail
        if ok and (error := extension_import_error(module)) is None:
            yield Record(
                "install", f"build {module}", "pass", f"{text} ({seconds:.0f} s)", seconds, {"command": text}
            )
        else:
            detail = f"{text} failed after {seconds:.0f} s: {error}"
            yield Record("install", f"build {module}", "fail", detail[:400], seconds, {"command": text})


# ----------------------------------------------------------------------------- summary


def environment(device: Any) -> dict[str, Any]:
    """What ran: GPU, versions, which scan / conv paths are available."""
    import torch

    from visbench.kernels.causal_conv1d import package_available
    from visbench.kernels.selective_scan import available_backends

    device = torch.device(device)
    meta: dict[str, Any] = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    for distribution in ("triton", "mamba-ssm", "causal-conv1d", "mmdet", "mmcv"):
        meta[distribution] = _installed_version(distribution)
    meta["scan_backends"] = available_backends(device)
    meta["causal_conv1d_cuda"] = package_available()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        meta["commit"] = commit.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        meta["commit"] = None
    return meta


def counts(records: Sequence[Record]) -> dict[str, int]:
    return {status: sum(r.status == status for r in records) for status in STATUSES}


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "/")


def format_summary(records: Sequence[Record], meta: dict[str, Any]) -> str:
    """The Markdown summary: one row per record (PASS / FAIL / skip), then the timing tables."""
    n = counts(records)
    lines = [
        f"## GPU check: {meta.get('gpu', '?')}",
        "",
        f"torch {meta.get('torch')} (CUDA {meta.get('cuda')}), triton {meta.get('triton')}, mamba-ssm "
        f"{meta.get('mamba-ssm')}, causal-conv1d {meta.get('causal-conv1d')}; scan back ends "
        f"{meta.get('scan_backends')}; causal_conv1d_cuda {meta.get('causal_conv1d_cuda')}; commit "
        f"{meta.get('commit')}",
        f"{n['pass']} pass, {n['fail']} fail, {n['skip']} skipped; checks took {meta.get('wall_s', 0):.0f} s "
        f"of a {meta.get('budget_s', 0):.0f} s budget"
        + ("" if meta.get("complete", True) else " (incomplete)"),
        "",
        "| section | check | result | s | detail |",
        "|---|---|---|---:|---|",
    ]
    label = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}
    for r in records:
        lines.append(
            f"| {r.section} | {_cell(r.name)} | {label[r.status]} | {r.seconds:.1f} | {_cell(r.detail)} |"
        )
    timings = [r for r in records if r.section == "scan_timing" and r.status == "pass"]
    if timings:
        shape = timings[0].values.get("shape", "")
        lines += [
            "",
            f"### Selective scan, ms per call ({shape}, float32, all options; median of windows)",
            "",
            "| mode | L | triton ms | cuda ms | triton / cuda |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in timings:
            v = r.values
            lines.append(
                f"| {v['mode']} | {v['L']} | {_cell(v.get('triton_ms'))} | {_cell(v.get('cuda_ms'))} | "
                f"{_cell(v.get('triton_over_cuda'))} |"
            )
    bench = [r for r in records if r.section == "bench" and r.status == "pass"]
    if bench:
        lines += [
            "",
            f"### Throughput, bf16 autocast, batch {bench[0].values.get('batch')} (visbench bench)",
            "",
            "| model | family | train img/s | inference img/s | peak MiB (train) |",
            "|---|---|---:|---:|---:|",
        ]
        for r in bench:
            v = r.values
            lines.append(
                f"| {r.name.removeprefix('bench ')} | {v.get('family')} | {v.get('train_img_per_s')} | "
                f"{v.get('img_per_s')} | {_cell(v.get('peak_mib'))} |"
            )
    return "\n".join(lines) + "\n"


def write_summary(records: Sequence[Record], meta: dict[str, Any], out: Path) -> Path:
    """Write ``out/gpu_check.json`` (every record) and ``out/gpu_check.md``; returns the JSON's path."""
    from visbench.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "schema": SCHEMA,
        "meta": meta,
        "counts": counts(records),
        "records": [asdict(r) for r in records],
    }
    path = out / "gpu_check.json"
    atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
    atomic_write_text(out / "gpu_check.md", format_summary(records, meta))
    return path


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``--sections`` is checked against :data:`SECTIONS` (argparse error otherwise)."""
    parser = argparse.ArgumentParser(
        prog="python -m visbench.gpu_check", description="check and time every GPU-only path in one short run"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/gpu_check"), help="folder for the summary files"
    )
    parser.add_argument("--quick", action="store_true", help="fewer cases and models (about half the time)")
    parser.add_argument("--skip-install", action="store_true", help="never build the missing CUDA extensions")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="seconds for the checks")
    parser.add_argument(
        "--install-budget-s", type=float, default=DEFAULT_INSTALL_BUDGET_S, help="seconds for the CUDA builds"
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--device",
        default="cuda",
        help="cuda[:i] (default), or cpu for a dry run of the script on small problems",
    )
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--sections: unknown {unknown or 'empty'}; expected a subset of {','.join(SECTIONS)}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s: expected a positive number of seconds, got {args.budget_s}")
    if args.install_budget_s < 0:
        parser.error(f"--install-budget-s: expected >= 0 seconds, got {args.install_budget_s}")
    args.sections = [s for s in SECTIONS if s in sections]  # always run in the documented order
    return args


def _run_section(name: str, records: Iterable[Record], sink: Callable[[Record], None]) -> None:
    """Feed a section's records to ``sink``; if the section itself raises, record that and go on."""
    try:
        for record in records:
            sink(record)
    except Exception as err:  # noqa: BLE001 - the summary must come out whatever a section does
        sink(Record(name, f"{name} section", "fail", one_line(err)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check; 0 when nothing failed (or there is no GPU), 1 when a check failed."""
    args = parse_args(argv)
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_GPU_LINE)
        return 0
    if device.type == "cuda":
        # Triton picks interpreted or compiled mode at its first import: on a GPU, compiled. Only here,
        # after the GPU is known to exist, so the no-GPU path leaves the caller's environment alone.
        os.environ.pop("TRITON_INTERPRET", None)
    records: list[Record] = []
    meta: dict[str, Any] = {"budget_s": args.budget_s, "quick": args.quick, "sections": args.sections}
    meta["caps_s"] = {s: SECTIONS[s] for s in args.sections}
    meta["complete"] = False

    def sink(record: Record) -> None:
        records.append(record)
        mark = {"pass": "ok  ", "fail": "FAIL", "skip": "skip"}[record.status]
        print(
            f"[gpu_check] {mark} {record.section}: {record.name}  {record.detail}",
            file=sys.stderr,
            flush=True,
        )
        write_summary(records, meta, args.out)

    if device.type == "cuda" and not args.skip_install:
        major, minor = torch.cuda.get_device_capability(device)
        _run_section("install", install_section(args.install_budget_s, f"{major}.{minor}"), sink)
    meta.update(environment(device))
    budget = Budget(args.budget_s, SECTIONS)
    plan = make_plan(device.type, args.quick)
    runners: dict[str, Callable[[float], Iterable[Record]]] = {
        "scan": lambda d: scan_section(device, d, plan),
        "conv": lambda d: conv_section(device, d, plan),
        "train": lambda d: train_section(device, d, plan),
        "detect": lambda d: detect_section(device, d, plan),
        "scan_timing": lambda d: scan_timing_section(device, d, plan),
        "bench": lambda d: bench_section(device, d, plan, out=args.out),
    }
    for section in args.sections:
        deadline = budget.section_deadline(section)
        if budget.left(deadline) <= 0:
            sink(Record(section, f"{section} section", "skip", "skipped: time (budget spent)"))
            continue
        _run_section(section, runners[section](deadline), sink)
        meta["wall_s"] = round(budget.elapsed(), 1)
    meta["wall_s"] = round(budget.elapsed(), 1)
    meta["complete"] = True
    path = write_summary(records, meta, args.out)
    print(format_summary(records, meta))
    print(f"gpu_check: summary in {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return 1 if counts(records)["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
