"""``visbench detect train|test CONFIG``: mmdetection configs run on mmengine's Runner.

    visbench detect train configs/coco/mask_rcnn_gated_cnn_tiny_fpn_1x_coco.py --work-dir runs/det
    visbench detect train CONFIG --resume                   # continue from the work dir's last checkpoint
    visbench detect test CONFIG --checkpoint runs/det/epoch_12.pth
    torchrun --nproc-per-node 2 -m visbench detect train CONFIG --launcher pytorch

Both write ``<work dir>/result.json`` with the COCO box (and mask) AP set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _parse_cfg_options(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs with mmengine's value parsing (numbers, lists, tuples, None, True/False)."""
    if not items:
        return {}
    from mmengine.config import DictAction

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--cfg-options {item!r}: expected key=value, e.g. train_cfg.max_epochs=1")
        options[key] = DictAction._parse_iterable(value)
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["train", "test"], help="train (then test) or test a checkpoint")
    parser.add_argument(
        "config", type=Path, help="mmdetection config, e.g. configs/coco/mask_rcnn_*_1x_coco.py"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="logs, checkpoints, result.json (default runs/detect/<config>)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="train: resume from CHECKPOINT, or from the work dir's last checkpoint when none is given",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="test: checkpoint to evaluate (default: the last one)"
    )
    parser.add_argument(
        "--backbone-checkpoint", type=Path, default=None, help="classification checkpoint for the backbone"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (mmengine's randomness.seed)")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        metavar="KEY=VALUE",
        default=None,
        help="override config entries, e.g. train_cfg.max_epochs=1",
    )
    parser.add_argument(
        "--launcher", choices=["none", "pytorch"], default="none", help="'pytorch' under torchrun"
    )
    parser.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from visbench.detection import runner
    from visbench.distributed import cleanup_distributed

    runner.require_mmdet()
    cfg = runner.load_config(
        args.config,
        work_dir=args.work_dir,
        cfg_options=_parse_cfg_options(args.cfg_options),
        launcher=args.launcher,
        resume=args.resume if args.action == "train" else False,
        backbone_checkpoint=args.backbone_checkpoint,
        seed=args.seed,
    )
    try:
        if args.action == "train":
            metrics, path = runner.train(cfg)
        else:
            metrics, path = runner.test(cfg, args.checkpoint)
    finally:
        cleanup_distributed()  # mmengine's Runner leaves the process group up
    if path is not None:
        shown = {k: round(float(v), 4) for k, v in metrics.items() if isinstance(v, (int, float))}
        print(json.dumps(shown, indent=1))
        print(f"result: {path}")
    return 0
