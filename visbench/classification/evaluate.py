"""`visbench eval CONFIG --checkpoint PATH`: top-1 / top-5 of saved weights on the config's validation split.

``--checkpoint`` takes a run folder, a ``checkpoints/`` folder, a checkpoint folder, or a
``.safetensors`` file (e.g. converted published weights). ``--ema`` evaluates the EMA weights.
``--output DIR`` also writes ``DIR/result.json``. Works under torchrun (sharded, reduced).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from visbench.classification import checkpoints as ckpt
from visbench.classification.cli import add_config_arguments, config_from_args
from visbench.classification.engine import (
    Runtime,
    build_model,
    count_params_and_macs,
    evaluate,
    mixer_tokens,
    resolve_amp,
)
from visbench.config import TrainConfig
from visbench.data.classification import build_dataset, build_transform, collate_skipping
from visbench.distributed import ShardSampler, cleanup_distributed, init_distributed, resolve_device


def weights_path(checkpoint: str | Path, ema: bool) -> Path:
    """The safetensors file that ``--checkpoint`` (and ``--ema``) name."""
    path = Path(checkpoint)
    if path.suffix == ".safetensors":
        return path
    folder = ckpt.resolve_checkpoint(path)
    return folder / ("ema.safetensors" if ema else "model.safetensors")


def evaluate_checkpoint(cfg: TrainConfig, checkpoint: str | Path, ema: bool = False) -> dict[str, Any]:
    """Build the model, load the weights, evaluate; returns metrics (percent) plus count and img/s."""
    device = resolve_device(cfg.train.device)
    info = init_distributed(device)
    model = build_model(cfg).to(device)
    path = weights_path(checkpoint, ema)
    weights, _ = ckpt.load_weights(path, cfg.model.name)
    ckpt.load_into(model, weights, path)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    dataset = build_dataset(cfg.data, "val", build_transform(cfg.data, cfg.aug, is_training=False))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=ShardSampler(dataset, info),
        num_workers=cfg.data.workers,
        collate_fn=collate_skipping,
    )
    amp = resolve_amp(cfg.train.amp, device)
    result = evaluate(model, loader, Runtime(device, amp, cfg.train.channels_last, info))
    counts = count_params_and_macs(model, (cfg.data.in_chans, *cfg.data.input_size))
    return {
        "weights": str(path),
        "top1": result.top1,
        "top5": result.top5,
        "loss": result.loss,
        "images": result.count,
        "skipped_images": result.skipped,
        "img_per_s": result.img_per_s,
        **counts,
        "device": str(device),
        "amp": str(amp).replace("torch.", "") if amp else None,
        "is_main": info.is_main,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``visbench eval``'s arguments."""
    add_config_arguments(parser)
    parser.add_argument(
        "--checkpoint", required=True, help="run folder, checkpoint folder, or .safetensors file"
    )
    parser.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a checkpoint")
    parser.add_argument("--output", help="write <output>/result.json as well")


def run(args: argparse.Namespace) -> int:
    """``visbench eval``: print the metrics as JSON (rank 0); a user's mistake raises to ``visbench.cli``."""
    from visbench.results import make_result, now_iso, write_result

    start = now_iso()
    out, args.output = args.output, None  # --output here is the result folder, not train.output_dir
    try:
        cfg, config_path = config_from_args(args)
        metrics = evaluate_checkpoint(cfg, args.checkpoint, args.ema)
    finally:
        cleanup_distributed()
    if not metrics.pop("is_main"):
        return 0
    print(json.dumps(metrics, indent=2))
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        resolved = Path(out) / "config.yaml"
        from visbench.config import dump_config

        dump_config(cfg, resolved)
        throughput = None
        if metrics["img_per_s"]:
            throughput = {
                "img_per_s": round(metrics["img_per_s"], 2),
                "batch_size": cfg.train.batch_size,
                "device": metrics["device"],
            }
        result = make_result(
            model=cfg.model.name,
            task="classification",
            dataset=cfg.data.dataset,
            input_size=cfg.data.input_size,
            params=metrics["params"],
            macs=metrics["macs"],
            metrics={"top1": round(metrics["top1"], 4), "top5": round(metrics["top5"], 4)},
            start_time=start,
            seed=cfg.train.seed,
            tokens=mixer_tokens(cfg.model.name, cfg.data.input_size, cfg.model.kwargs),
            throughput=throughput,
            config_path=resolved,
            device=metrics["device"],
            amp=metrics["amp"],
            extra={
                "macs_fvcore": metrics["macs_fvcore"],
                "weights": metrics["weights"],
                "val_images": metrics["images"],
                "source_config": config_path,
            },
        )
        print(f"wrote {write_result(Path(out), result)}")
    return 0
