"""CocoMetric output -> ``result.json`` (schema of :mod:`visbench.results`), written by rank 0 only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visbench.backbones.naming import tokens_per_stage
from visbench.results import coco_metrics_from_mmdet, make_result, write_result


def input_size_of(cfg: Any) -> tuple[int, int]:
    """[H, W] the test pipeline resizes to: the ``Resize`` scale (width, height) of the test dataset."""
    pipeline = cfg.test_dataloader.dataset.get("pipeline", [])
    for step in pipeline:
        if step.get("type") == "Resize" and step.get("scale") is not None:
            scale = step["scale"]
            if isinstance(scale, int):
                return scale, scale
            width, height = scale
            # keep_ratio: the long side is bounded by max(scale), the short side by min(scale)
            return (min(scale), max(scale)) if step.get("keep_ratio") and width > height else (height, width)
    raise ValueError(
        "test_dataloader.dataset.pipeline has no Resize step with a scale: cannot tell the input size"
    )


def dataset_name_of(cfg: Any) -> str:
    """The data folder's name (``coco``, ``fashion_mnist_128x128``, ``deepforest``...)."""
    root = cfg.test_dataloader.dataset.get("data_root") or ""
    return Path(str(root).rstrip("/")).name or "unknown"


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def detector_macs(model: Any, data_batch: Mapping[str, Any]) -> tuple[int, tuple[int, int]]:
    """MACs of the whole detector on the first image of ``data_batch``, and that image's padded size.

    mmdetection's own ``get_flops`` route: the data preprocessor, then the tensor-mode forward
    (backbone, neck, RPN with its proposals, RoI heads; box decoding and NMS are not counted). The
    counter is ours (:func:`visbench.backbones.complexity.flop_counter`), so the selective scan and CPU
    attention are counted by their formulas, which mmengine's tracer cannot see.
    """
    import torch

    from visbench.backbones.complexity import flop_counter

    batch = {key: value[:1] for key, value in data_batch.items()}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            data = model.data_preprocessor(batch, False)
            with flop_counter() as counter:
                model(data["inputs"], data["data_samples"], mode="tensor")
    finally:
        model.train(was_training)
    height, width = data["inputs"].shape[-2:]
    return counter.get_total_flops() // 2, (int(height), int(width))


def write_detection_result(
    runner: Any,
    cfg: Any,
    metrics: Mapping[str, float],
    start_time: str,
    phase: str,
    train_wall_s: float | None = None,
) -> Path | None:
    """Write ``<work_dir>/result.json`` from the test metrics; returns its path (None on ranks > 0).

    ``train_wall_s``: seconds spent in training (evaluation excluded), recorded as ``extra.train_wall_s``.
    """
    from mmengine.dist import is_main_process

    if not is_main_process():
        return None
    model = _unwrap(runner.model)
    backbone = model.backbone
    name = backbone.model_name
    schema_metrics = coco_metrics_from_mmdet(metrics)
    task = "instance_segmentation" if any(k.startswith("segm_") for k in schema_metrics) else "detection"
    size = input_size_of(cfg)
    tokens = tokens_per_stage(name, size)[0]
    body = backbone.body
    width = body.feature_info[0]["num_chs"] if hasattr(body, "stages") else body.embed_dim
    seed = (cfg.get("randomness") or {}).get("seed")
    macs, macs_shape = detector_macs(model, next(iter(runner.test_dataloader)))
    result = make_result(
        model=name,
        task=task,
        dataset=dataset_name_of(cfg),
        input_size=size,
        params=sum(p.numel() for p in model.parameters()),
        macs=macs,
        metrics=schema_metrics,
        start_time=start_time,
        seed=seed,
        tokens=tokens,
        config_path=cfg.get("visbench_config_path"),
        extra={
            "detector": model.__class__.__name__,
            "phase": phase,
            "work_dir": str(cfg.work_dir),
            "backbone_params": sum(p.numel() for p in backbone.parameters()),
            "macs_method": (
                "whole detector, tensor-mode forward (backbone, neck, RPN, RoI heads; no NMS) on the "
                "first test image, padded"
            ),
            "macs_input_shape": list(macs_shape),
            "stage1_dim": int(width),
            "r_tokens_over_6d": round(tokens / (6 * width), 4),
            "backbone_kwargs": {k: v for k, v in cfg.model.backbone.items() if k not in ("type", "init_cfg")},
            "backbone_checkpoint": (cfg.model.backbone.get("init_cfg") or {}).get("checkpoint"),
            "mmdet_metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            "launcher": cfg.get("launcher"),
            "train_wall_s": None if train_wall_s is None else round(train_wall_s, 2),
        },
    )
    return write_result(Path(cfg.work_dir), result)
