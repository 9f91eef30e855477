"""The study's detection part (H2): Mask R-CNN on Fashion-MNIST canvases below and above ``L = 6D``.

Hypothesis 2 says token mixing by an SSM should pay off only for long sequences, ``L > 6D`` tokens at
the first stage (``D`` its width). This part trains the gated CNN (no token mixer) and the SSM
(cross-2d scan), with equal widths and depths, inside the same Mask R-CNN on canvas sizes below and
above ``6D``, for every seed: the canvases are built once (``data_seed``) and shared, so a seed's runs
differ only in the backbone's mixer. Each run writes ``result.json`` (box and mask AP, tokens, MACs,
``extra.train_wall_s``); ``visbench verdicts`` pairs them by seed and judges the per-size differences
and their contrast.

:func:`plan_detection_jobs` lists the runs and :func:`run_detection_job` trains one; the study
(``visbench.study``) schedules them beside its other parts. Sizes: see ``configs/study/default.yaml``
(tiny widths 16-96, 150 iterations of batch 8, about 1 min per run on one CPU core, box AP 10-30).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visbench.data.fashion_mnist import DEFAULT_ROOT as FASHION_ROOT
from visbench.resources import CONFIG_ROOT

STUDY_CONFIG = CONFIG_ROOT / "coco" / "embedded" / "mask_rcnn_fpn_fashion_mnist_study.py"


@dataclass
class DetectionStudyConfig:
    """The knobs of the detection part (every field may come from the study's YAML as a mapping)."""

    models: Sequence[str] = ("gated_cnn_tiny", "ssm_cross2d_tiny", "attn_tiny")
    dims: Sequence[int] = (64, 96, 128, 192)  # stage widths (the tiny models' are 96-576); D = dims[0]
    depths: Sequence[int] = (1, 1, 2, 1)
    canvas_sizes: Sequence[int] | None = None  # square canvas sides; None: one below and one above L = 6D
    iters: int = 10
    batch_size: int = 4
    num_train: int = 48  # 10 iterations of batch 4 see 40 canvases
    num_val: int = 16
    lr: float = 1e-3
    seed: int = 0  # the run's seed (weights, data order); runs of one seed are paired
    data_seed: int = 0  # the canvases' seed: the same data for every model and seed
    fashion_root: str = str(FASHION_ROOT)
    config: str = str(STUDY_CONFIG)
    extra_cfg_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> DetectionStudyConfig:
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"detection study: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


def canvas_sides_around_6d(
    dim: int, stride: int = 4, multiple: int = 32, factor: float = 1.6
) -> tuple[int, int]:
    """Square canvas sides with stage-1 tokens below and above ``6 * dim``.

    ``L = (side / stride)^2`` equals ``6D`` at ``side* = stride * sqrt(6D)``. Short: the largest
    multiple of ``multiple`` below ``side*`` (at least one ``multiple``); long: the smallest multiple at
    or above ``factor * side*``. For D = 64: side* = 78 px, so 64 px (r = L/6D = 0.67) and 128 px (r = 2.7).
    """
    crossing = stride * math.sqrt(6 * dim)
    short = max(multiple, multiple * (math.ceil(crossing / multiple) - 1))
    long = multiple * math.ceil(factor * crossing / multiple)
    return short, long


def _set_data(cfg: Any, set_dir: Path, side: int) -> None:
    """Point every dataloader and evaluator at ``set_dir`` and make the resize scale the canvas."""
    root = str(set_dir) + "/"
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset = cfg[loader]["dataset"]
        dataset["data_root"] = root
        for step in dataset["pipeline"]:
            if step["type"] == "Resize":
                step["scale"] = (side, side)
    for evaluator in ("val_evaluator", "test_evaluator"):
        cfg[evaluator]["ann_file"] = root + "annotations/val.json"


def _run_config(
    study: DetectionStudyConfig, model: str, set_dir: Path, side: int, work_dir: Path, seed: int
) -> Any:
    from visbench.detection.runner import load_config

    options: dict[str, Any] = {
        "model.backbone.model": model,
        "model.backbone.dims": tuple(study.dims),
        "model.backbone.depths": tuple(study.depths),
        "model.neck.in_channels": list(study.dims),
        "train_cfg.max_iters": study.iters,
        "train_dataloader.batch_size": study.batch_size,
        "optim_wrapper.optimizer.lr": study.lr,
        "default_hooks.checkpoint.interval": study.iters,
        "param_scheduler": [
            dict(
                type="LinearLR",
                start_factor=0.01,
                by_epoch=False,
                begin=0,
                end=max(1, min(20, study.iters // 5)),
            )
        ],
        **study.extra_cfg_options,
    }
    cfg = load_config(study.config, work_dir=work_dir, cfg_options=options, seed=seed)
    _set_data(cfg, set_dir, side)
    # The final test pass is the measurement; a validation pass over the same images would double it.
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


@dataclass(frozen=True)
class DetectionJob:
    """One detector to train: a backbone on one canvas size with one seed."""

    model: str
    side: int
    seed: int
    set_dir: Path
    work_dir: Path


def canvas_sides(study: DetectionStudyConfig) -> list[int]:
    """The configured canvas sides, or one below and one above ``L = 6D`` at stage 1."""
    return list(study.canvas_sizes) if study.canvas_sizes else list(canvas_sides_around_6d(study.dims[0]))


def prepare_canvases(data: str | Path, study: DetectionStudyConfig) -> dict[int, Path]:
    """Build (once) the canvas sets of every side under the folder ``data``; side -> set folder."""
    from visbench.embedded_data import fashion_set_name, make_fashion_mnist

    data = Path(data)
    sets = {}
    for side in canvas_sides(study):
        set_dir = data / fashion_set_name(side, side)
        if not (set_dir / "annotations" / "val.json").is_file():
            make_fashion_mnist(
                data,
                side,
                side,
                study.num_train,
                study.num_val,
                seed=study.data_seed,
                root=Path(study.fashion_root),
            )
        sets[side] = set_dir
    return sets


def plan_detection_jobs(
    out_dir: str | Path, study: DetectionStudyConfig, seeds: Sequence[int], sets: Mapping[int, Path]
) -> list[DetectionJob]:
    """Seed-major: every (model, side) of a seed before the next seed. Folders: ``<model>_<S>px/seed<k>``."""
    out = Path(out_dir) / "detection"
    return [
        DetectionJob(model, side, seed, sets[side], out / f"{model}_{side}px" / f"seed{seed}")
        for seed in seeds
        for side in sorted(sets)
        for model in study.models
    ]


def run_detection_job(study: DetectionStudyConfig, job: DetectionJob) -> Path | None:
    """Train and test one detector; its ``result.json`` path. A finished job (result present) is kept."""
    from visbench.detection.runner import require_mmdet, train

    require_mmdet()
    done = job.work_dir / "result.json"
    if done.is_file():
        return done
    run_cfg = _run_config(study, job.model, job.set_dir, job.side, job.work_dir, job.seed)
    _, path = train(run_cfg)
    return path


def run_detection_part(
    out_dir: str | Path,
    cfg: DetectionStudyConfig | Mapping[str, Any] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[Path]:
    """Build the canvases, train and test every (model, canvas, seed) in turn; the ``result.json`` paths."""
    study = cfg if isinstance(cfg, DetectionStudyConfig) else DetectionStudyConfig.from_mapping(cfg)
    sets = prepare_canvases(Path(out_dir) / "detection" / "data", study)
    results = []
    for job in plan_detection_jobs(out_dir, study, seeds or [study.seed], sets):
        started = time.perf_counter()
        path = run_detection_job(study, job)
        print(
            f"[study/detection] {job.model} on {job.side}x{job.side} canvases, seed {job.seed}: "
            f"{time.perf_counter() - started:.0f} s -> {path}"
        )
        if path is not None:
            results.append(path)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m visbench.detection.study OUT [--iters N] [--canvas S ...]``: the detection part alone."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--iters", type=int, default=DetectionStudyConfig.iters)
    parser.add_argument("--canvas", type=int, nargs="+", default=None)
    parser.add_argument("--models", nargs="+", default=list(DetectionStudyConfig.models))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args(argv)
    paths = run_detection_part(
        args.out, dict(iters=args.iters, canvas_sizes=args.canvas, models=args.models), seeds=args.seeds
    )
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
