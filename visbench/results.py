"""The versioned ``result.json`` every run writes, and the one place that reads it.

Schema version 1: one JSON object per run, ``<run dir>/result.json``.

- ``schema_version`` (int): ``SCHEMA_VERSION``, filled by :func:`write_result`.
- ``model`` (str): registered name, e.g. ``gated_cnn_tiny`` or timm's ``vit_small_patch16_224``.
- ``family``, ``mixer``, ``order``, ``body`` (str): from ``visbench.backbones.naming.describe_any`` (see
  :func:`describe_model`), e.g. ``ssm`` / ``ssm`` / ``cross2d`` / ``hierarchical``.
- ``task`` (str): one of :data:`TASKS`: classification, detection, instance_segmentation, bench.
- ``dataset`` (str): e.g. ``imagenet``, ``fashion_mnist``, ``coco``; ``synthetic`` for bench.
- ``input_size`` ([int, int]): [H, W] of the network input.
- ``tokens`` (int, optional): sequence length seen by the token mixer (first stage, or isotropic).
- ``seed`` (int | null).
- ``params`` (int): all parameters of the model.
- ``macs`` (int | null): multiply-accumulates of one forward pass, batch 1, at ``input_size``
  (``visbench.backbones.complexity.count_macs``). Detection / instance segmentation: the whole detector on
  the first test image (``extra.macs_method`` and ``extra.macs_input_shape`` say how and at what size).
- ``metrics`` ({str: float | null}), all in PERCENT. classification: ``top1`` (required), ``top5``.
  detection: ``bbox_mAP`` (required), ``bbox_mAP_50``, ``bbox_mAP_75``, ``bbox_mAP_s``/``_m``/``_l``.
  instance_segmentation: the bbox set plus ``segm_mAP`` (required) and ``segm_mAP_*``. These are
  mmdet's names times 100 (:func:`coco_metrics_from_mmdet` converts); null = undefined (mmdet's -1).
  Other numeric keys (``loss``...) are allowed. bench: may be empty.
- ``throughput`` (object | null): ``img_per_s`` (float), ``batch_size`` (int), ``device`` (str) are
  required; optional: ``img_per_s_iqr``, ``train_img_per_s``, ``train_img_per_s_iqr``,
  ``peak_memory_bytes``, ``train_peak_memory_bytes``, ``peak_memory_method``, ``repeats``, ``amp``,
  ``channels_last``, ``dtype``.
- ``device`` (str): e.g. ``cuda: NVIDIA H100 80GB HBM3`` or ``cpu: AMD EPYC (2 threads)``.
- ``versions`` ({str: str | null}): python, torch, timm, visbench, (mmdet, mmengine, ... if installed).
- ``git_commit`` (str | null): commit of the visbench checkout; null outside a git repository.
- ``environment`` (object, optional): threads, CUDA / cuDNN, TF32 flags, float32 matmul precision,
  AMP, git dirty flag, CPU allocator setting (:func:`environment_info`).
- ``config_path``, ``config_hash`` (str | null): the run's config file and :func:`config_hash` of it.
- ``start_time``, ``end_time`` (str): ISO 8601 with UTC offset; end not before start.
- ``extra`` (object, optional): free form, not read by ``tables``.

Unknown top-level fields are an error (a misspelt key would otherwise be lost silently): free-form
data goes under ``extra``. A file with a newer ``schema_version`` is an error that says so.
``visbench bench`` writes the same schema with task ``bench``, empty ``metrics`` and its speed and
memory numbers in ``throughput``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from visbench.atomic import atomic_write_text
from visbench.cpu_allocator import allocator_setting

SCHEMA_VERSION = 1
RESULT_FILENAME = "result.json"
TASKS = ("classification", "detection", "instance_segmentation", "next_pixel", "bench")

COCO_METRIC_SUFFIXES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")
BBOX_METRICS = tuple(f"bbox_{s}" for s in COCO_METRIC_SUFFIXES)
SEGM_METRICS = tuple(f"segm_{s}" for s in COCO_METRIC_SUFFIXES)
CLASSIFICATION_METRICS = ("top1", "top5")
REQUIRED_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("top1",),
    "detection": ("bbox_mAP",),
    "instance_segmentation": ("bbox_mAP", "segm_mAP"),
    "next_pixel": ("bits_per_pixel",),  # visbench.next_pixel: held-out negative log-likelihood, bits
    "bench": (),
}

_REQUIRED_FIELDS = (
    "schema_version",
    "model",
    "family",
    "mixer",
    "order",
    "body",
    "task",
    "dataset",
    "input_size",
    "seed",
    "params",
    "macs",
    "metrics",
    "throughput",
    "device",
    "versions",
    "git_commit",
    "config_path",
    "config_hash",
    "start_time",
    "end_time",
)
_OPTIONAL_FIELDS = ("tokens", "environment", "extra")
FIELDS = _REQUIRED_FIELDS + _OPTIONAL_FIELDS


class ResultError(ValueError):
    """A result file (or dict) that does not follow the schema; the message names the file and field."""


def describe_model(name: str) -> dict[str, str]:
    """``family``, ``mixer``, ``order``, ``body`` of a model name: ``visbench.backbones.naming.describe_any``.

    Ours and the timm names it knows; ``"unknown"`` for each field of any other name rather than an
    error: bench may time any timm model.
    """
    from visbench.backbones.naming import describe_any

    d = describe_any(name)
    return {"family": d.family, "mixer": d.mixer, "order": d.order, "body": d.body}


def now_iso() -> str:
    """The current time, ISO 8601 with UTC offset, seconds precision."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def config_hash(path_or_text: Path | str | bytes) -> str:
    """``sha256:<hex>`` of a config: a ``Path`` is read as bytes, a ``str`` / ``bytes`` is the text itself."""
    if isinstance(path_or_text, Path):
        if not path_or_text.is_file():
            raise FileNotFoundError(f"config_hash: config file {path_or_text} does not exist")
        data = path_or_text.read_bytes()
    elif isinstance(path_or_text, str):
        data = path_or_text.encode("utf-8")
    elif isinstance(path_or_text, bytes):
        data = path_or_text
    else:
        raise TypeError(f"config_hash: expected Path, str or bytes, got {type(path_or_text).__name__}")
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(repo: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit hash, dirty) of the visbench checkout; (None, None) outside a git repository."""
    repo = repo or Path(__file__).resolve().parent.parent
    commit = _git(["rev-parse", "--verify", "HEAD"], repo)
    if not commit:
        return None, None
    status = _git(["status", "--porcelain", "--untracked-files=no"], repo)
    return commit, (bool(status) if status is not None else None)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_string(device: str | None = None) -> str:
    """Human-readable device: ``cuda: <GPU name>`` or ``cpu: <CPU model> (<N> threads)``."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    if dev.type == "mps":
        return "mps: Apple GPU"
    return f"cpu: {_cpu_name()} ({torch.get_num_threads()} threads)"


def package_versions() -> dict[str, str | None]:
    """Versions of python, torch, timm, visbench, and mmdet / mmengine / mmcv when installed."""
    import importlib.metadata as md

    import torch

    import visbench

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "visbench": visbench.__version__,
    }
    for pkg in ("timm", "numpy", "mmdet", "mmengine", "mmcv", "triton", "mamba-ssm", "causal-conv1d"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            if pkg in ("timm", "numpy"):
                versions[pkg] = None
    return versions


def environment_info(device: str | None = None, amp: str | None = None) -> dict[str, Any]:
    """The schema fields that describe where and how a run ran, ready for ``result.update(...)``.

    Returns ``device``, ``versions``, ``git_commit`` and ``environment`` (threads, CUDA / cuDNN versions,
    TF32 flags, float32 matmul precision, git dirty flag, the CPU allocator's setting, and ``amp`` as
    given: e.g. ``"bf16"`` or None).
    """
    import torch

    commit, dirty = git_commit()
    env: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "amp": amp,
        "git_dirty": dirty,
        "platform": platform.platform(),
        "cpu_allocator": allocator_setting(),
    }
    return {
        "device": device_string(device),
        "versions": package_versions(),
        "git_commit": commit,
        "environment": env,
    }


def coco_metrics_from_mmdet(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """mmdet's CocoMetric output (``coco/bbox_mAP`` = 0.374, -1 when undefined) -> schema metrics in percent.

    Keys other than the COCO AP set are dropped; missing AP keys are left out.
    """
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        short = key.split("/", 1)[1] if key.startswith("coco/") else key
        if short in BBOX_METRICS or short in SEGM_METRICS:
            v = float(value)
            out[short] = None if v < 0 else round(100.0 * v, 4)
    return out


def make_result(
    *,
    model: str,
    task: str,
    dataset: str,
    input_size: Iterable[int],
    params: int,
    macs: int | None,
    metrics: Mapping[str, float | None],
    start_time: str,
    end_time: str | None = None,
    seed: int | None = None,
    tokens: int | None = None,
    throughput: Mapping[str, Any] | None = None,
    config_path: Path | str | None = None,
    device: str | None = None,
    amp: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A complete result dict: names parsed from ``model``, environment and config hash filled in.

    ``end_time`` defaults to now. Pass the result to :func:`write_result`.
    """
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        **describe_model(model),
        "task": task,
        "dataset": dataset,
        "input_size": [int(x) for x in input_size],
        "seed": seed,
        "params": int(params),
        "macs": None if macs is None else int(macs),
        "metrics": dict(metrics),
        "throughput": None if throughput is None else dict(throughput),
        **environment_info(device, amp),
        "config_path": None if config_path is None else str(config_path),
        "config_hash": None if config_path is None else config_hash(Path(config_path)),
        "start_time": start_time,
        "end_time": end_time or now_iso(),
    }
    if tokens is not None:
        result["tokens"] = int(tokens)
    if extra is not None:
        result["extra"] = dict(extra)
    return result


# --------------------------------------------------------------------------------------------- validation


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _parse_time(v: Any) -> _dt.datetime | None:
    if not isinstance(v, str):
        return None
    try:
        return _dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None


def validate_result(result: Any, source: str = "result") -> dict[str, Any]:
    """Check ``result`` against schema version 1; ``ResultError`` names ``source`` and the field at fault."""

    def fail(field: str, msg: str) -> ResultError:
        return ResultError(f"{source}: field {field!r}: {msg}")

    if not isinstance(result, dict):
        raise ResultError(f"{source}: expected a JSON object, got {type(result).__name__}")
    version = result.get("schema_version")
    if not _is_int(version):
        raise fail("schema_version", f"expected an int, got {version!r}")
    if version > SCHEMA_VERSION:
        raise fail(
            "schema_version", f"{version} is newer than this visbench reads ({SCHEMA_VERSION}); upgrade"
        )
    if version < 1:
        raise fail("schema_version", f"{version} is not a valid version")
    for field in _REQUIRED_FIELDS:
        if field not in result:
            raise fail(field, "missing")
    for field in result:
        if field not in FIELDS:
            raise fail(field, f"unknown field (allowed: {', '.join(FIELDS)}; free-form data goes in 'extra')")

    for field in ("model", "family", "mixer", "order", "body", "dataset", "device"):
        if not isinstance(result[field], str) or not result[field]:
            raise fail(field, f"expected a non-empty string, got {result[field]!r}")
    task = result["task"]
    if task not in TASKS:
        raise fail("task", f"expected one of {TASKS}, got {task!r}")
    size = result["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(x) and x > 0 for x in size)):
        raise fail("input_size", f"expected [H, W] with two positive ints, got {size!r}")
    if (
        "tokens" in result
        and result["tokens"] is not None
        and not (_is_int(result["tokens"]) and result["tokens"] > 0)
    ):
        raise fail("tokens", f"expected a positive int or null, got {result['tokens']!r}")
    if result["seed"] is not None and not _is_int(result["seed"]):
        raise fail("seed", f"expected an int or null, got {result['seed']!r}")
    if not (_is_int(result["params"]) and result["params"] >= 0):
        raise fail("params", f"expected a non-negative int, got {result['params']!r}")
    if result["macs"] is not None and not (_is_int(result["macs"]) and result["macs"] >= 0):
        raise fail("macs", f"expected a non-negative int or null, got {result['macs']!r}")

    metrics = result["metrics"]
    if not isinstance(metrics, dict):
        raise fail("metrics", f"expected an object, got {type(metrics).__name__}")
    for key, value in metrics.items():
        if value is not None and not _is_number(value):
            raise fail(f"metrics.{key}", f"expected a finite number or null, got {value!r}")
        percent = key in CLASSIFICATION_METRICS or key in BBOX_METRICS or key in SEGM_METRICS
        if value is not None and percent and not 0.0 <= value <= 100.0:
            raise fail(f"metrics.{key}", f"expected a percentage in [0, 100], got {value!r}")
    for key in REQUIRED_METRICS[task]:
        if metrics.get(key) is None:
            raise fail(f"metrics.{key}", f"required for task {task!r}")

    tp = result["throughput"]
    if tp is not None:
        if not isinstance(tp, dict):
            raise fail("throughput", f"expected an object or null, got {type(tp).__name__}")
        if not (_is_number(tp.get("img_per_s")) and tp["img_per_s"] > 0):
            raise fail("throughput.img_per_s", f"expected a positive number, got {tp.get('img_per_s')!r}")
        if not (_is_int(tp.get("batch_size")) and tp["batch_size"] > 0):
            raise fail("throughput.batch_size", f"expected a positive int, got {tp.get('batch_size')!r}")
        if not isinstance(tp.get("device"), str):
            raise fail("throughput.device", f"expected a string, got {tp.get('device')!r}")
        for key in ("img_per_s_iqr", "train_img_per_s", "train_img_per_s_iqr"):
            if tp.get(key) is not None and not _is_number(tp[key]):
                raise fail(f"throughput.{key}", f"expected a number or null, got {tp[key]!r}")

    versions = result["versions"]
    if not isinstance(versions, dict) or not all(v is None or isinstance(v, str) for v in versions.values()):
        raise fail("versions", f"expected an object of version strings, got {versions!r}")
    for field in ("git_commit", "config_path", "config_hash"):
        if result[field] is not None and not isinstance(result[field], str):
            raise fail(field, f"expected a string or null, got {result[field]!r}")
    for field in ("environment", "extra"):
        if field in result and result[field] is not None and not isinstance(result[field], dict):
            raise fail(field, f"expected an object, got {type(result[field]).__name__}")
    start, end = _parse_time(result["start_time"]), _parse_time(result["end_time"])
    if start is None:
        raise fail("start_time", f"expected an ISO 8601 time, got {result['start_time']!r}")
    if end is None:
        raise fail("end_time", f"expected an ISO 8601 time, got {result['end_time']!r}")
    if (start.tzinfo is None) == (end.tzinfo is None) and end < start:
        raise fail("end_time", f"{result['end_time']} is before start_time {result['start_time']}")
    return result


# --------------------------------------------------------------------------------------------- file I/O


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    """Validate ``result`` and write ``run_dir/result.json`` atomically (:mod:`visbench.atomic`).

    Fills ``schema_version`` when missing. Returns the path written.
    """
    run_dir = Path(run_dir)
    result = dict(result)
    result.setdefault("schema_version", SCHEMA_VERSION)
    path = run_dir / RESULT_FILENAME
    validate_result(result, source=f"{path} (not written)")
    run_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write_text(path, text)
    return path


def read_result(path: Path) -> dict[str, Any]:
    """Read and validate one result file; ``ResultError`` (a ``ValueError``) names the file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ResultError(f"{path}: cannot read result file ({err.strerror or err})") from err
    if not text.strip():
        raise ResultError(f"{path}: empty result file (half-written run?)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultError(
            f"{path}: not valid JSON (line {err.lineno}, column {err.colno}; half-written?)"
        ) from err
    return validate_result(data, source=str(path))


def find_results(run_dirs: Iterable[Path | str]) -> list[Path]:
    """Every ``result.json`` under the given folders (or the files themselves), sorted, de-duplicated."""
    found: set[Path] = set()
    for entry in run_dirs:
        p = Path(entry)
        if p.is_file():
            found.add(p.resolve())
        elif p.is_dir():
            found.update(q.resolve() for q in p.rglob(RESULT_FILENAME))
        else:
            raise FileNotFoundError(f"run folder {p} does not exist")
    return sorted(found)


def load_results(
    run_dirs: Iterable[Path | str], skip_invalid: bool = False
) -> tuple[list[tuple[Path, dict[str, Any]]], list[tuple[Path, str]]]:
    """Read every result under ``run_dirs``: (valid [(path, result)], skipped [(path, reason)]).

    Without ``skip_invalid`` the first malformed file raises ``ResultError`` naming it.
    """
    good: list[tuple[Path, dict[str, Any]]] = []
    bad: list[tuple[Path, str]] = []
    for path in find_results(run_dirs):
        try:
            good.append((path, read_result(path)))
        except ResultError as err:
            if not skip_invalid:
                raise
            bad.append((path, str(err)))
    return good, bad
