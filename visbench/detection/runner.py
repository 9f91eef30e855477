"""mmengine's Runner for ``visbench detect``: config loading, CPU/GPU distributed set-up, train and test.

Everything here is mmdetection / mmengine doing the work; this module only
- loads a config and applies the command line (work dir, resume, ``--cfg-options``, a backbone checkpoint),
- makes the distributed path work on CPU too (gloo instead of nccl, DDP without ``device_ids``),
- loads mmengine checkpoints under torch's weights-only default (:mod:`visbench.detection.checkpoints`),
- turns CocoMetric's output into ``result.json`` (:mod:`visbench.detection.metrics`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from visbench.detection.checkpoints import allow_mmengine_checkpoints
from visbench.resources import resolve_config


def require_mmdet() -> None:
    """Raise an ImportError that says how to install the detection stack when mmdet / mmcv.ops are missing."""
    try:
        import mmcv.ops  # noqa: F401
        import mmdet  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"visbench detect needs mmdetection 3.3 with mmcv's compiled ops ({err}). Install them with "
            "scripts/install_det.sh (builds mmcv 2.1.0 once, then reuses the cached wheel)."
        ) from err


def load_config(
    config: str | Path,
    work_dir: str | Path | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    launcher: str = "none",
    resume: bool | str = False,
    load_from: str | Path | None = None,
    backbone_checkpoint: str | Path | None = None,
    seed: int | None = None,
) -> Any:
    """Read an mmdetection config file and apply the command-line choices; returns an mmengine ``Config``."""
    require_mmdet()
    from mmengine.config import Config

    try:
        config = resolve_config(config)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"detection config {config} does not exist (see configs/coco/)") from err
    if not config.is_file():
        raise FileNotFoundError(f"detection config {config} is not a file (see configs/coco/)")
    cfg = Config.fromfile(str(config))
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("runs") / "detect" / config.stem)
    if resume:
        # True: the newest checkpoint of work_dir; a path: that checkpoint
        cfg.resume = True
        if isinstance(resume, str):
            cfg.load_from = resume
    if load_from is not None:
        cfg.load_from = str(load_from)
    if backbone_checkpoint is not None:
        if not Path(backbone_checkpoint).is_file():
            raise FileNotFoundError(f"--backbone-checkpoint {backbone_checkpoint} does not exist")
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(backbone_checkpoint))
    if seed is not None:
        cfg.randomness = dict(seed=seed, deterministic=False)
    _adapt_to_device(cfg)
    cfg.visbench_config_path = str(config.resolve())
    check_annotation_files(cfg)
    return cfg


def check_annotation_files(cfg: Any) -> None:
    """Check each dataset's COCO file before the run starts: a malformed one is an error naming the file
    and the record (instead of a traceback inside a data loader). Files not present are left to mmdet."""
    from visbench.data.coco import load_coco

    seen = set()
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset = (cfg.get(loader) or {}).get("dataset") or {}
        ann_file = dataset.get("ann_file")
        if not ann_file:
            continue
        path = Path(dataset.get("data_root") or "") / ann_file
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        load_coco(path)


def _adapt_to_device(cfg: Any) -> None:
    """Without CUDA: gloo for the process group and DDP without device_ids (they name GPUs)."""
    if torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault("env_cfg", {})
    env_cfg.setdefault("dist_cfg", {})
    env_cfg["dist_cfg"]["backend"] = "gloo"
    if cfg.launcher != "none":
        wrapper = dict(cfg.get("model_wrapper_cfg") or {})
        wrapper.setdefault("type", "MMDistributedDataParallel")
        wrapper["device_ids"] = None
        cfg.model_wrapper_cfg = wrapper


def _init_distributed(cfg: Any) -> None:
    """Start the process group ourselves on CPU: mmengine's pytorch launcher calls torch.cuda.set_device."""
    import torch.distributed as dist

    if cfg.launcher == "none" or dist.is_initialized() or torch.cuda.is_available():
        return
    if cfg.launcher != "pytorch":
        raise ValueError(
            f"--launcher {cfg.launcher!r}: only 'none' and 'pytorch' (torchrun) are supported on CPU"
        )
    dist.init_process_group(backend="gloo")


def build_runner(cfg: Any) -> Any:
    """An mmengine Runner whose checkpoint loading passes torch's weights-only check."""
    require_mmdet()
    from mmengine.runner import Runner

    class VisBenchRunner(Runner):
        def load_or_resume(self) -> None:
            with allow_mmengine_checkpoints():
                super().load_or_resume()

        def load_checkpoint(self, *args: Any, **kwargs: Any) -> Any:
            with allow_mmengine_checkpoints():
                return super().load_checkpoint(*args, **kwargs)

        def resume(self, *args: Any, **kwargs: Any) -> None:
            with allow_mmengine_checkpoints():
                super().resume(*args, **kwargs)

    _init_distributed(cfg)
    os.makedirs(cfg.work_dir, exist_ok=True)
    return VisBenchRunner.from_cfg(cfg)


def latest_checkpoint(work_dir: str | Path) -> Path:
    """The checkpoint named in ``work_dir/last_checkpoint`` (written by mmengine's CheckpointHook)."""
    marker = Path(work_dir) / "last_checkpoint"
    if not marker.is_file():
        raise FileNotFoundError(
            f"no checkpoint in {work_dir}: {marker} is missing (train first, or pass --checkpoint)"
        )
    path = Path(marker.read_text().strip())
    if not path.is_file():
        raise FileNotFoundError(f"{marker} names {path}, which does not exist")
    return path


def train(cfg: Any, write_result: bool = True) -> tuple[dict[str, float], Path | None]:
    """Train, then evaluate the final model on the test set; returns (metrics, result.json path or None)."""
    from visbench.detection.metrics import write_detection_result
    from visbench.results import now_iso

    start = now_iso()
    runner = build_runner(cfg)
    began = time.perf_counter()
    runner.train()
    train_wall_s = time.perf_counter() - began
    metrics = runner.test()
    path = (
        write_detection_result(runner, cfg, metrics, start, phase="train", train_wall_s=train_wall_s)
        if write_result
        else None
    )
    return metrics, path


def test(
    cfg: Any, checkpoint: str | Path | None = None, write_result: bool = True
) -> tuple[dict[str, float], Path | None]:
    """Evaluate ``checkpoint`` (default: the work dir's last one) on the test set."""
    from visbench.detection.metrics import write_detection_result
    from visbench.results import now_iso

    start = now_iso()
    cfg.load_from = str(checkpoint) if checkpoint is not None else str(latest_checkpoint(cfg.work_dir))
    cfg.resume = False
    runner = build_runner(cfg)
    metrics = runner.test()
    path = write_detection_result(runner, cfg, metrics, start, phase="test") if write_result else None
    return metrics, path
