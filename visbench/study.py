"""`visbench study`: the main job. Trains every model of every claim over seeds and judges the claims.

One command (``configs/study/default.yaml``) runs four parts on data that ships (Fashion-MNIST from
Debian and canvases built from it), each with one recipe and the mixer as the only difference:

- ``classification`` (claims H1 and causal): hierarchical and isotropic bodies at 32x32, full train and
  test sets;
- ``next_pixel`` (claim long_causal): causal 1-D bodies predict each of 784 pixels from those before it
  (:mod:`visbench.next_pixel`);
- ``detection`` (claim H2): Mask R-CNN with the gated CNN and the SSM at canvases below and above
  ``L = 6D`` (:mod:`visbench.detection.study`).

Every (part, model, seed) is a job; ``workers`` jobs run at once, each in its own process with
``threads`` torch threads (on 2 cores, two one-thread runs beat one two-thread run: see the README).
Jobs go seed-major, so a study cut by its time budget holds whole seeds. The claims file is copied
into the study folder before the first job: the verdict rule is fixed before any result exists. At
the end :func:`visbench.verdicts.compute_verdicts` writes ``hypotheses.md`` / ``hypotheses.json`` and a
figure per claim, ``summary.md`` lists every model's metric with its 95% CI, params, MACs and wall
time, and :mod:`visbench.tables` writes the project's tables. ``--resume`` continues a study folder
with its recorded config: finished jobs are kept, interrupted classification runs continue from their
checkpoints. ``--quick`` runs the same pipeline at smoke size; its report says "smoke run, not
evidence". ``--dry-run`` prints the plan and, given bench results, the estimated cost.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visbench.config import (
    ConfigError,
    apply_overrides,
    build_dataclass,
    closest_key_hint,
    config_from_dict,
    deep_merge,
    load_yaml_with_bases,
)
from visbench.cpu_allocator import keep_freed_memory
from visbench.resources import CONFIG_ROOT, resolve_config

DEFAULT_CONFIG = CONFIG_ROOT / "study" / "default.yaml"
KINDS = ("classification", "next_pixel", "detection")
BODIES = ("hierarchical", "isotropic", "sequence")
RECORD = "study.yaml"  # the config, overrides and mode a study folder was started with
CLAIMS_COPY = "claims.yaml"  # the claims as declared before the first job
METRIC_OF_KIND = {"classification": "top1", "next_pixel": "bits_per_pixel", "detection": "bbox_mAP"}


@dataclass
class PartConfig:
    """One part: its models and one recipe for all of them (``kind`` says which runner trains it)."""

    kind: str = "classification"
    title: str = ""
    models: list = field(default_factory=list)
    # create_model kwargs per body ("hierarchical", "isotropic", "sequence"): equal for every family.
    kwargs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)  # classification: TrainConfig mapping over the study's
    next_pixel: dict = field(default_factory=dict)  # next_pixel: visbench.next_pixel.NextPixelConfig fields
    detection: dict = field(default_factory=dict)  # detection: DetectionStudyConfig fields


@dataclass
class StudyConfig:
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    workers: int = 2  # jobs at once, each in its own process (0: in this process, one at a time)
    threads: int | None = 1  # torch threads per job
    time_budget_min: float = 45.0  # jobs not started within it are left for --resume
    claims: str | dict | None = None  # claims file (relative to the study config) or an inline mapping
    train: dict = field(default_factory=dict)  # common TrainConfig mapping of classification parts
    parts: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)  # merged over the config by --quick


@dataclass(frozen=True)
class Job:
    """One training run: picklable, so a worker process can take it."""

    part: str
    kind: str
    model: str
    seed: int
    run_dir: Path
    payload: dict

    @property
    def label(self) -> str:
        where = f" {self.payload['side']}px" if self.kind == "detection" else ""
        return f"{self.part}: {self.model}{where} seed {self.seed}"


# ------------------------------------------------------------------------------------------------ config


def read_study_raw(path: str | Path, overrides: Sequence[str] = (), quick: bool = False) -> dict[str, Any]:
    """The study mapping after ``_base_`` files (also ``train._base_``), ``--quick`` and overrides."""
    raw = load_yaml_with_bases(path)
    train = raw.get("train")
    if isinstance(train, dict) and "_base_" in train:  # a shared recipe file, relative to the study config
        base = Path(path).parent / str(train["_base_"])
        rest = {k: v for k, v in train.items() if k != "_base_"}
        raw["train"] = deep_merge(load_yaml_with_bases(base), rest)
    if quick:
        raw = deep_merge(raw, raw.get("quick") or {})
    return apply_overrides(raw, list(overrides))


def load_study_config(
    path: str | Path, overrides: Sequence[str] = (), quick: bool = False
) -> tuple[StudyConfig, dict[str, PartConfig]]:
    """Read and validate the study config; every job's settings are checked here, before any training."""
    raw = read_study_raw(path, overrides, quick)
    try:
        study = build_dataclass(StudyConfig, raw, "")
        parts = {
            name: build_dataclass(PartConfig, value, f"parts.{name}") for name, value in study.parts.items()
        }
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if not parts:
        raise ConfigError(f"{path}: 'parts' is empty; expected e.g. parts.classification")
    if not study.seeds:
        raise ConfigError(f"{path}: 'seeds' is empty")
    if study.workers < 0:
        raise ConfigError(f"{path}: workers: expected 0 or more, got {study.workers}")
    for name, part in parts.items():
        _check_part(path, study, name, part)
    return study, parts


def _check_part(path: str | Path, study: StudyConfig, name: str, part: PartConfig) -> None:
    if part.kind not in KINDS:
        raise ConfigError(f"{path}: parts.{name}.kind: expected one of {KINDS}, got {part.kind!r}")
    if not part.models:
        raise ConfigError(f"{path}: parts.{name}.models is empty")
    for body in part.kwargs:
        if body not in BODIES:
            raise ConfigError(
                f"{path}: unknown body 'parts.{name}.kwargs.{body}'{closest_key_hint(body, BODIES)}"
            )
    where = f"{path} (parts.{name})"
    if part.kind == "classification":
        for model in part.models:  # fails early, naming the key, if a part's train mapping is wrong
            config_from_dict(_train_mapping(study, part, model, study.seeds[0], Path("x")), where)
    elif part.kind == "next_pixel":
        from visbench.next_pixel import NextPixelConfig

        for model in part.models:
            try:
                build_dataclass(
                    NextPixelConfig, _next_pixel_mapping(part, model, 0), f"parts.{name}.next_pixel"
                )
            except ConfigError as err:
                raise ConfigError(f"{path}: {err}") from None
    else:
        from visbench.detection.study import DetectionStudyConfig

        try:
            DetectionStudyConfig.from_mapping(_detection_settings(part))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: detection: {err}") from None


def _body(model: str) -> str:
    """The body a model name stands for (``naming.describe_any``; ``unknown`` takes no body kwargs)."""
    from visbench.backbones.naming import describe_any

    return describe_any(model).body


def _train_mapping(
    study: StudyConfig, part: PartConfig, model: str, seed: int, run_dir: Path
) -> dict[str, Any]:
    raw = deep_merge(study.train, part.train)
    run = {
        "model": {"name": model, "kwargs": dict(part.kwargs.get(_body(model), {}))},
        "train": {"seed": seed, "output_dir": str(run_dir), "threads": study.threads},
    }
    return deep_merge(raw, run)


def _next_pixel_mapping(part: PartConfig, model: str, seed: int) -> dict[str, Any]:
    return {
        **part.next_pixel,
        "model": model,
        "seed": seed,
        "model_kwargs": dict(part.kwargs.get(_body(model), {})),
    }


def claims_source(config_path: str | Path, study: StudyConfig) -> Any:
    """The claims as the config gives them: a mapping, or a path resolved next to the config file."""
    if study.claims is None or isinstance(study.claims, Mapping):
        return study.claims
    candidate = Path(config_path).parent / str(study.claims)
    return candidate if candidate.is_file() else resolve_config(str(study.claims))


# ------------------------------------------------------------------------------------------------ plan


def plan_jobs(study: StudyConfig, parts: Mapping[str, PartConfig], out_dir: Path) -> list[Job]:
    """Seed-major order: each (part, model) gets its first seed before any gets a second."""
    jobs: list[Job] = []
    for seed in study.seeds:
        for name, part in parts.items():
            if part.kind == "detection":
                jobs += _detection_jobs(study, name, part, out_dir, seed)
                continue
            for model in part.models:
                run_dir = out_dir / name / model / f"seed{seed}"
                if part.kind == "classification":
                    payload = _train_mapping(study, part, model, seed, run_dir)
                else:
                    payload = _next_pixel_mapping(part, model, seed)
                jobs.append(Job(name, part.kind, model, seed, run_dir, payload))
    return jobs


def _detection_settings(part: PartConfig) -> dict[str, Any]:
    return {**part.detection, "models": list(part.models)}


def _detection_jobs(study: StudyConfig, name: str, part: PartConfig, out_dir: Path, seed: int) -> list[Job]:
    from visbench.detection.study import DetectionStudyConfig, canvas_sides
    from visbench.embedded_data import fashion_set_name

    settings = _detection_settings(part)
    sides = canvas_sides(DetectionStudyConfig.from_mapping(settings))
    root = out_dir / name
    return [
        Job(
            name,
            "detection",
            model,
            seed,
            root / f"{model}_{side}px" / f"seed{seed}",
            {
                "settings": settings,
                "side": side,
                "set_dir": str(root / "data" / fashion_set_name(side, side)),
            },
        )
        for side in sides
        for model in part.models
    ]


def prepare_data(parts: Mapping[str, PartConfig], out_dir: Path) -> None:
    """Build the detection canvases once, before any worker needs them."""
    from visbench.detection.study import DetectionStudyConfig, prepare_canvases

    for name, part in parts.items():
        if part.kind == "detection":
            prepare_canvases(
                out_dir / name / "data", DetectionStudyConfig.from_mapping(_detection_settings(part))
            )


def finished(job: Job) -> Path | None:
    """The job's valid ``result.json``, or None."""
    from visbench.results import ResultError, read_result

    path = job.run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        read_result(path)
    except (ResultError, ValueError, OSError):
        return None
    return path


# ------------------------------------------------------------------------------------------------ jobs


@dataclass
class JobOutcome:
    status: str  # finished, interrupted, diverged, failed
    message: str
    result: str | None
    seconds: float


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors too: mmengine, tqdm) to ``path``."""
    import sys

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_job(job: Job, threads: int | None = None) -> JobOutcome:
    """Train one job (its output goes to ``run_dir/log.txt``); never raises for a failed run."""
    began = time.perf_counter()
    with _output_to(job.run_dir / "log.txt"):
        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            status, message, result = _RUNNERS[job.kind](job)
        except Exception as err:  # a failed job is reported, the others go on
            import traceback

            traceback.print_exc()
            status, message, result = "failed", f"{type(err).__name__}: {err}", None
    return JobOutcome(status, message, result, time.perf_counter() - began)


def _run_classification(job: Job) -> tuple[str, str, str | None]:
    from visbench.classification.trainer import train

    outcome = train(config_from_dict(job.payload, job.label), resume="auto", log=print)
    if outcome.status != "finished":
        return outcome.status, outcome.message, None
    return "finished", f"top-1 {outcome.result['metrics']['top1']:.2f}%", str(job.run_dir / "result.json")


def _run_next_pixel(job: Job) -> tuple[str, str, str | None]:
    from visbench.next_pixel import NextPixelConfig, run_next_pixel

    payload = dict(job.payload)
    root = payload.pop("root", None)
    path = run_next_pixel(build_dataclass(NextPixelConfig, payload, job.label), job.run_dir, root)
    bpp = json.loads(path.read_text())["metrics"]["bits_per_pixel"]
    return "finished", f"{bpp:.4f} bits/pixel", str(path)


def _run_detection(job: Job) -> tuple[str, str, str | None]:
    from visbench.detection.study import DetectionJob, DetectionStudyConfig, run_detection_job

    settings = DetectionStudyConfig.from_mapping(job.payload["settings"])
    detection_job = DetectionJob(
        job.model, job.payload["side"], job.seed, Path(job.payload["set_dir"]), job.run_dir
    )
    path = run_detection_job(settings, detection_job)
    if path is None:
        return "failed", "no result written", None
    ap = json.loads(Path(path).read_text())["metrics"]["bbox_mAP"]
    return "finished", f"box AP {ap:.1f}", str(path)


_RUNNERS: dict[str, Callable[[Job], tuple[str, str, str | None]]] = {
    "classification": _run_classification,
    "next_pixel": _run_next_pixel,
    "detection": _run_detection,
}


def _worker_init(threads: int | None) -> None:
    """A worker process: the allocator setting of the ``visbench`` command (a spawned process does not
    inherit it), and OpenMP / MKL / numba pools and torch sized to ``threads`` before torch loads."""
    keep_freed_memory()
    if threads:
        os.environ.update(
            {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
        )
        import torch

        torch.set_num_threads(threads)


def run_jobs(
    jobs: Sequence[Job], study: StudyConfig, budget_s: float, say: Callable[[str], Any] = print
) -> dict[str, int]:
    """Run the jobs ``study.workers`` at a time until the budget is spent; counts per outcome."""
    start = time.perf_counter()
    counts = {"finished": 0, "skipped": 0, "not started": 0, "failed": 0}
    pending = list(enumerate(jobs, 1))
    todo = []
    for index, job in pending:
        if finished(job) is not None:
            say(f"[{index}/{len(jobs)}] {job.label}: done earlier, kept")
            counts["skipped"] += 1
        else:
            todo.append((index, job))

    def report(index: int, job: Job, outcome: JobOutcome) -> None:
        key = "finished" if outcome.status == "finished" else "failed"
        counts[key] += 1
        say(
            f"[{index}/{len(jobs)}] {job.label}: {outcome.status}, {outcome.message} "
            f"({outcome.seconds:.0f} s; {(time.perf_counter() - start) / 60:.1f} min into this run)"
            + ("" if key == "finished" else f"; log: {job.run_dir / 'log.txt'}")
        )
        if outcome.status == "interrupted":
            raise KeyboardInterrupt(outcome.message)

    def budget_left() -> bool:
        return time.perf_counter() - start < budget_s

    if study.workers == 0:
        for index, job in todo:
            if not budget_left():
                counts["not started"] += 1
                continue
            say(f"[{index}/{len(jobs)}] {job.label}: training")
            report(index, job, run_job(job, study.threads))
        return counts

    context = multiprocessing.get_context("spawn")  # fresh processes: no forked torch / OpenMP state
    pool = ProcessPoolExecutor(
        study.workers, mp_context=context, initializer=_worker_init, initargs=(study.threads,)
    )
    running: dict[Future, tuple[int, Job]] = {}
    queue = list(todo)
    try:
        while queue or running:
            while queue and len(running) < study.workers:
                index, job = queue.pop(0)
                if not budget_left():
                    counts["not started"] += 1
                    continue
                say(f"[{index}/{len(jobs)}] {job.label}: training")
                running[pool.submit(run_job, job, study.threads)] = (index, job)
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index, job = running.pop(future)
                report(index, job, future.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()  # a classification run saves a checkpoint every epoch; resume picks it up
        raise
    pool.shutdown(wait=True)
    return counts


# ------------------------------------------------------------------------------------------------ report


def summarize(jobs: Sequence[Job], parts: Mapping[str, PartConfig]) -> str:
    """``summary.md``: per part, every model's metric (mean and 95% t-interval over seeds) and its cost."""
    from visbench.results import read_result
    from visbench.verdicts import t_interval, wall_seconds

    lines = ["# visbench study: every run", ""]
    for name, part in parts.items():
        metric = METRIC_OF_KIND[part.kind]
        lines += [f"## {part.title or name}", ""]
        lines += [
            f"| model | tokens | params | MACs | train min / run | {metric}: mean [95% CI] | seeds |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        groups: dict[tuple[str, int | None], list[dict[str, Any]]] = {}
        for job in jobs:
            if job.part != name:
                continue
            path = finished(job)
            key = (job.model, job.payload.get("side") if job.kind == "detection" else None)
            groups.setdefault(key, [])
            if path is not None:
                groups[key].append(read_result(path))
        for (model, side), results in groups.items():
            label = model if side is None else f"{model} @ {side}px"
            if not results:
                lines.append(f"| {label} | | | | | not run | |")
                continue
            values = [float(r["metrics"][metric]) for r in results]
            iv = t_interval(values)
            ci = "" if iv.ci_low is None else f" [{iv.ci_low:.2f}, {iv.ci_high:.2f}]"
            walls = [w for w in (wall_seconds(r) for r in results) if w is not None]
            first = results[0]
            minutes = f"{sum(walls) / len(walls) / 60:.1f}" if walls else "?"
            lines.append(
                f"| {label} | {first.get('tokens') or '-'} | {format_count(first['params'])} | "
                f"{format_count(first['macs'])} | {minutes} | "
                f"{iv.mean:.2f}{ci} | {', '.join(str(r['seed']) for r in results)} |"
            )
        lines.append("")
    return "\n".join(lines)


def format_count(n: int | None) -> str:
    """12_345_678 -> ``12.3M``; None -> ``?``."""
    if n is None:
        return "?"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _accumulate_wall_time(out_dir: Path, wall_s: float) -> tuple[float, int]:
    """Add this invocation's wall time to the folder's record, so a resumed study reports the whole."""
    from visbench.atomic import atomic_write_text

    record = out_dir / "wall_time.json"
    previous = json.loads(record.read_text()) if record.exists() else {"seconds": []}
    seconds = [*previous["seconds"], round(wall_s, 1)]
    atomic_write_text(record, json.dumps({"seconds": seconds, "invocations": len(seconds)}))
    return sum(seconds), len(seconds)


def write_reports(
    out_dir: Path,
    jobs: Sequence[Job],
    parts: Mapping[str, PartConfig],
    claims: Any,
    smoke: bool,
    wall_s: float,
) -> list[Path]:
    """summary.md, the verdicts (hypotheses.md / .json and figures) and the project's tables."""
    from visbench.atomic import atomic_write_text
    from visbench.tables import generate
    from visbench.verdicts import compute_verdicts

    total_s, invocations = _accumulate_wall_time(out_dir, wall_s)
    wall = f"Study wall time: {total_s / 60:.1f} min" + (
        f" over {invocations} invocations (resumed).\n" if invocations > 1 else ".\n"
    )
    banner = "**smoke run, not evidence** (`visbench study --quick`)\n\n" if smoke else ""
    summary = out_dir / "summary.md"
    atomic_write_text(summary, banner + summarize(jobs, parts) + "\n" + wall)
    written = [summary]
    if claims is not None:
        _, files = compute_verdicts([out_dir], claims, out_dir, smoke=smoke, skip_invalid=True)
        written += files
        hypotheses = out_dir / "hypotheses.md"
        atomic_write_text(hypotheses, hypotheses.read_text() + "\n" + wall)
    written += generate([out_dir], out_dir / "tables", skip_invalid=True)
    return written


# ------------------------------------------------------------------------------------------------ dry run


def dry_run(jobs: Sequence[Job], parts: Mapping[str, PartConfig], throughput_dirs: Sequence[Path]) -> str:
    """The plan: jobs per part and, from bench results (train img/s), the estimated GPU/CPU hours."""
    from visbench.results import load_results

    rates: dict[tuple[str, tuple[int, int]], float] = {}
    if throughput_dirs:
        loaded, _ = load_results(throughput_dirs, skip_invalid=True)
        for _, r in loaded:
            tp = r.get("throughput") or {}
            if r["task"] == "bench" and tp.get("train_img_per_s"):
                rates[(r["model"], tuple(r["input_size"]))] = float(tp["train_img_per_s"])
    lines = [f"# visbench study plan: {len(jobs)} runs", ""]
    total_h, missing = 0.0, []
    for name, part in parts.items():
        part_jobs = [j for j in jobs if j.part == name]
        lines.append(
            f"## {name} ({part.kind}): {len(part_jobs)} runs, seeds {sorted({j.seed for j in part_jobs})}"
        )
        groups: dict[tuple[str, Any], list[Job]] = {}
        for job in part_jobs:
            groups.setdefault((job.model, job.payload.get("side")), []).append(job)
        for (model, _), group in groups.items():
            work, size = _job_work(part, group[0])
            what = f"- {model}: {len(group)} runs"
            if work is None:
                lines.append(f"{what} at {size[0]}x{size[1]}: dataset not found here, size unknown")
                continue
            what += f" x {work:,} training images at {size[0]}x{size[1]}"
            if part.kind == "detection":  # a backbone's bench rate says little about a whole detector's
                lines.append(f"{what} (a detector: its cost is what these runs measure)")
                continue
            rate = rates.get((model, size))
            if rate is None:
                missing.append(f"{model} at {size[0]}x{size[1]}")
                lines.append(f"{what}: no measured throughput")
                continue
            hours = len(group) * work / rate / 3600
            total_h += hours
            lines.append(f"{what}: {hours:.2f} h at {rate:.0f} img/s")
        lines.append("")
    if rates:
        lines.append(
            f"Estimated training time of the runs above, one device at the measured rates: {total_h:.1f} h"
        )
    if missing:
        lines.append(
            "Not estimated (no bench result): "
            + ", ".join(dict.fromkeys(missing))
            + ". Measure with `visbench bench MODEL --sizes SIDE --device cuda` and pass --throughput DIR."
        )
    return "\n".join(lines)


def _job_work(part: PartConfig, job: Job) -> tuple[int | None, tuple[int, int]]:
    """Training images one job processes (None: its dataset is not on this machine), and its input size."""
    if part.kind == "classification":
        from visbench.data.classification import build_dataset

        cfg = config_from_dict(job.payload, job.label)
        try:
            n = len(build_dataset(cfg.data, "train", None))
        except (OSError, ValueError):
            if not cfg.data.train_subset:
                return None, tuple(cfg.data.input_size)
            n = cfg.data.train_subset
        steps = cfg.train.max_steps_per_epoch
        per_epoch = min(n, steps * cfg.train.batch_size) if steps else n
        return per_epoch * cfg.sched.epochs, tuple(cfg.data.input_size)
    if part.kind == "next_pixel":
        from visbench.next_pixel import NextPixelConfig

        recipe = build_dataclass(NextPixelConfig, job.payload, job.label)
        return recipe.steps * recipe.batch_size, (28, 28)
    from visbench.detection.study import DetectionStudyConfig

    settings = DetectionStudyConfig.from_mapping(job.payload["settings"])
    side = job.payload["side"]
    return settings.iters * settings.batch_size, (side, side)


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", default=str(DEFAULT_CONFIG), help=f"study config (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seeds=[0,1,2,3,4]")
    parser.add_argument(
        "--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="an override"
    )
    parser.add_argument("--out", type=Path, help="output folder (default runs/study-<UTC time>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="continue a study folder (default: the newest runs/study-*) with its recorded config",
    )
    parser.add_argument("--parts", help="comma-separated subset of the config's parts to run")
    parser.add_argument("--quick", action="store_true", help="the same pipeline at smoke size (not evidence)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and estimated cost; train nothing"
    )
    parser.add_argument(
        "--throughput", type=Path, action="append", default=[], help="bench result folder for --dry-run costs"
    )


def _out_dir(args: argparse.Namespace, quick: bool) -> Path:
    if args.resume and args.resume != "latest":
        return Path(args.resume)
    if args.resume == "latest":
        studies = sorted(p for p in Path("runs").glob("study-*") if (p / RECORD).is_file())
        if not studies:
            raise ConfigError("--resume: no runs/study-* folder to continue")
        return studies[-1]
    if args.out is not None:
        return args.out
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"study-{'quick-' if quick else ''}{stamp}"


def _invocation(args: argparse.Namespace) -> dict[str, Any]:
    """What this command asks for: config, overrides, quick, parts (a resumed study reuses its record)."""
    config, overrides = args.config, list(args.overrides)
    if "=" in config and not Path(config).exists():
        config, overrides = str(DEFAULT_CONFIG), [config, *overrides]
    return {
        "config": str(config),
        "overrides": overrides + args.set_,
        "quick": bool(args.quick),
        "parts": args.parts,
    }


def _select_parts(parts: dict[str, PartConfig], wanted_text: str | None) -> dict[str, PartConfig]:
    if not wanted_text:
        return parts
    wanted = [p.strip() for p in wanted_text.split(",") if p.strip()]
    for name in wanted:
        if name not in parts:
            raise ConfigError(f"--parts: unknown part '{name}'{closest_key_hint(name, list(parts))}")
    return {name: parts[name] for name in wanted}


def _freeze_claims(out_dir: Path, config: str, study: StudyConfig) -> Any:
    """Copy the claims into the study folder once, before any job; later invocations read the copy."""
    from visbench.atomic import atomic_write_text

    frozen = out_dir / CLAIMS_COPY
    if frozen.is_file():
        return frozen
    source = claims_source(config, study)
    if source is None:
        return None
    text = (
        yaml.safe_dump(dict(source), sort_keys=False)
        if isinstance(source, Mapping)
        else Path(source).read_text()
    )
    from visbench.verdicts import parse_claims

    parse_claims(yaml.safe_load(text), str(source))  # a malformed claims file fails before any training
    atomic_write_text(frozen, text)
    return frozen


def run(args: argparse.Namespace) -> int:
    # A ConfigError raises; `visbench` (cli.main) turns it into one line and exit 2.
    from visbench.atomic import atomic_write_text

    invocation = _invocation(args)
    out_dir = _out_dir(args, invocation["quick"])
    if args.resume and (out_dir / RECORD).is_file():
        invocation = yaml.safe_load((out_dir / RECORD).read_text())
    elif args.resume:
        raise ConfigError(f"--resume {out_dir}: no {RECORD} there (not a study folder)")
    study, parts = load_study_config(invocation["config"], invocation["overrides"], invocation["quick"])
    parts = _select_parts(parts, invocation.get("parts"))
    jobs = plan_jobs(study, parts, out_dir)
    if args.dry_run:
        print(dry_run(jobs, parts, args.throughput))
        return 0
    out_dir.mkdir(parents=True, exist_ok=True)
    claims = _freeze_claims(out_dir, invocation["config"], study)
    if not (out_dir / RECORD).is_file():
        atomic_write_text(out_dir / RECORD, yaml.safe_dump(invocation, sort_keys=False))
    say = print
    start = time.perf_counter()
    say(
        f"visbench study{' --quick (smoke run, not evidence)' if invocation['quick'] else ''} -> {out_dir}: "
        f"{len(jobs)} runs ({', '.join(parts)}; seeds {study.seeds}); {study.workers} at once with "
        f"{study.threads} thread(s) each; budget {study.time_budget_min:.0f} min"
    )
    prepare_data(parts, out_dir)
    try:
        counts = run_jobs(jobs, study, study.time_budget_min * 60, say)
    except KeyboardInterrupt:
        say(f"study interrupted; continue with: visbench study --resume {out_dir}")
        return 130
    wall = time.perf_counter() - start
    written = write_reports(out_dir, jobs, parts, claims, invocation["quick"], wall)
    report = out_dir / ("hypotheses.md" if claims is not None else "summary.md")
    print(report.read_text())
    if counts["not started"] or counts["failed"]:
        say(
            f"{counts['not started']} runs not started (budget) and {counts['failed']} failed: "
            f"continue with visbench study --resume {out_dir}"
        )
    say(f"study finished in {wall / 60:.1f} min; wrote {len(written)} files, e.g. {report}")
    return 0 if not counts["failed"] else 1
