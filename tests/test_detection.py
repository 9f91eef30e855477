"""Detection through mmdetection: every family inside Mask R-CNN, train/test/resume/distributed runs.

Needs mmdetection with mmcv's compiled ops (scripts/install_det.sh); skipped with that reason otherwise.
Runs are tiny (narrow models, 64x64 Fashion-MNIST canvases, a few iterations) so the file stays fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

try:
    import mmcv.ops  # noqa: F401
    import mmdet  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    pytest.skip(
        f"mmdet / mmcv.ops not importable ({err}); install with scripts/install_det.sh",
        allow_module_level=True,
    )

import visbench.backbones  # noqa: F401  (registers the backbone names with timm)
from visbench.backbones.complexity import count_macs

from visbench.data.coco import CocoFormatError
from visbench.detection.checkpoints import allow_mmengine_checkpoints, mmengine_checkpoint_globals
from visbench.detection.study import (
    STUDY_CONFIG,
    DetectionStudyConfig,
    canvas_sides_around_6d,
    run_detection_part,
)
from visbench.results import read_result

REPO = Path(__file__).resolve().parent.parent
SIDE = 64
DIMS = (16, 24, 32, 48)
DEPTHS = (1, 1, 1, 1)
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


@pytest.fixture(scope="module")
def canvases(tmp_path_factory, fashion_mnist_dir) -> Path:
    from visbench.embedded_data import make_fashion_mnist

    return make_fashion_mnist(
        tmp_path_factory.mktemp("det"), SIDE, SIDE, 6, 3, seed=0, root=fashion_mnist_dir
    )


def cli_options(set_dir: Path, iters: int, checkpoint_interval: int | None = None) -> list[str]:
    """--cfg-options for the study config on ``set_dir`` with a narrow gated CNN."""
    root = f"{set_dir}/"
    options = [
        f"model.backbone.dims={DIMS}".replace(" ", ""),
        f"model.backbone.depths={DEPTHS}".replace(" ", ""),
        f"model.neck.in_channels={list(DIMS)}".replace(" ", ""),
        f"train_cfg.max_iters={iters}",
        f"default_hooks.checkpoint.interval={checkpoint_interval or iters}",
        "default_hooks.logger.interval=1",
        "train_dataloader.batch_size=2",
        f"train_dataloader.dataset.data_root={root}",
        f"val_dataloader.dataset.data_root={root}",
        f"test_dataloader.dataset.data_root={root}",
        f"val_evaluator.ann_file={root}annotations/val.json",
        f"test_evaluator.ann_file={root}annotations/val.json",
        f"train_dataloader.dataset.pipeline.2.scale=({SIDE},{SIDE})",
        f"test_dataloader.dataset.pipeline.1.scale=({SIDE},{SIDE})",
    ]
    return options


def visbench_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "visbench", "detect", *args]


@pytest.mark.parametrize("name", ["gated_cnn_tiny", "ssm_cross2d_tiny", "attn_tiny", "vit_tiny", "vim_tiny"])
def test_every_family_builds_in_mask_rcnn_and_gives_finite_losses(name, canvases):
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules()
    cfg = Config.fromfile(str(STUDY_CONFIG))
    cfg.train_dataloader.dataset.data_root = f"{canvases}/"
    sample = DATASETS.build(cfg.train_dataloader.dataset)[0]
    model_cfg = cfg.model
    model_cfg.backbone.model = name
    if name.startswith(("vit", "vim")):
        del model_cfg.backbone["dims"], model_cfg.backbone["depths"]
        model_cfg.backbone.update(depth=1, embed_dim=48)
        model_cfg.neck.in_channels = [12, 24, 48, 48]
    else:
        model_cfg.backbone.update(dims=DIMS, depths=DEPTHS)
        model_cfg.neck.in_channels = list(DIMS)
    model = MODELS.build(model_cfg)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(
        dict(inputs=[sample["inputs"]], data_samples=[sample["data_samples"]]), True
    )
    losses = model(**data, mode="loss")
    total = 0.0
    for key, value in losses.items():
        if "loss" not in key:
            continue
        values = value if isinstance(value, list) else [value]
        assert all(torch.isfinite(v).all() for v in values), f"{name}: {key} is not finite: {value}"
        total = total + sum(v.sum() for v in values)
    assert {"loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses)
    total.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_train_then_test_write_valid_coco_results(tmp_path, canvases):
    from visbench.detection import cli

    work = tmp_path / "run"
    config = str(STUDY_CONFIG)
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        ["train", config, "--work-dir", str(work), "--cfg-options", *cli_options(canvases, 2)]
    )
    assert cli.run(args) == 0
    result = read_result(work / "result.json")  # validated against the schema
    assert result["task"] == "instance_segmentation" and result["dataset"] == f"fashion_mnist_{SIDE}x{SIDE}"
    assert result["input_size"] == [SIDE, SIDE] and result["tokens"] == (SIDE // 4) ** 2
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "segm_mAP", "segm_mAP_50"):
        assert 0.0 <= result["metrics"][key] <= 100.0
    assert result["extra"]["r_tokens_over_6d"] == pytest.approx((SIDE // 4) ** 2 / (6 * DIMS[0]), rel=1e-3)
    # whole-detector MACs on the padded first test image: the backbone's share plus neck and heads
    # (with this narrow backbone the RoI heads dominate: tensor mode runs the mask head on up to 100 RoIs)
    assert result["extra"]["macs_input_shape"] == [SIDE, SIDE]
    backbone = timm.create_model(result["model"], num_classes=0, dims=DIMS, depths=DEPTHS)
    assert result["macs"] > 10 * count_macs(backbone, (3, SIDE, SIDE))
    (work / "result.json").unlink()
    args = parser.parse_args(
        ["test", config, "--work-dir", str(work), "--cfg-options", *cli_options(canvases, 2)]
    )
    assert cli.run(args) == 0  # the work dir's last checkpoint
    tested = read_result(work / "result.json")
    assert tested["extra"]["phase"] == "test" and tested["metrics"].keys() == result["metrics"].keys()

    # the checkpoint needs exactly the allowed globals under torch's weights-only loading
    checkpoint = work / "iter_2.pth"
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(checkpoint)))
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in mmengine_checkpoint_globals()}
    assert unsafe <= allowed | {"builtins.getattr"}
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(checkpoint)
    with allow_mmengine_checkpoints():
        assert torch.load(checkpoint)["meta"]["iter"] == 2


def test_malformed_annotation_file_stops_the_run_naming_file_and_record(tmp_path, canvases):
    from visbench.detection.runner import load_config

    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    coco = json.loads((canvases / "annotations" / "train.json").read_text())
    coco["annotations"][0]["bbox"] = [0, 0, -3, 5]
    (bad / "annotations" / "train.json").write_text(json.dumps(coco))
    options = {"train_dataloader.dataset.data_root": f"{bad}/"}
    with pytest.raises(
        CocoFormatError, match=r"bad/annotations/train\.json: annotations\[0\] \(id 1\): bbox"
    ):
        load_config(STUDY_CONFIG, work_dir=tmp_path / "w", cfg_options=options)


def test_resume_after_a_kill_continues_from_the_last_checkpoint(tmp_path, canvases):
    work = tmp_path / "killed"
    # a long run that checkpoints every 2 iterations; killed once the iteration-2 checkpoint is complete
    cmd = visbench_cmd(
        "train", str(STUDY_CONFIG), "--work-dir", str(work), "--cfg-options", *cli_options(canvases, 200, 2)
    )
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while (
            not (work / "last_checkpoint").is_file() and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert (work / "last_checkpoint").is_file(), "the run wrote no checkpoint"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = Path((work / "last_checkpoint").read_text().strip())
    done = int(first.stem.split("_")[1])
    assert 2 <= done < 200
    resumed = subprocess.run(
        visbench_cmd(
            "train",
            str(STUDY_CONFIG),
            "--work-dir",
            str(work),
            "--resume",
            "--cfg-options",
            *cli_options(canvases, done + 2, 2),
        ),
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"resumed epoch: 0, iter: {done}" in log
    assert f"Iter(train) [{done + 1}/{done + 2}]" in log and "Iter(train) [1/" not in log
    assert read_result(work / "result.json")["metrics"]["bbox_mAP"] is not None


def test_distributed_training_on_two_cpu_processes(tmp_path, canvases):
    work = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29731",
        "-m", "visbench", "detect", "train", str(STUDY_CONFIG), "--launcher", "pytorch",
        "--work-dir", str(work),
        "--cfg-options", *cli_options(canvases, 2),
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "Distributed training is not used" not in out.stdout + out.stderr
    result = read_result(work / "result.json")
    assert result["extra"]["launcher"] == "pytorch" and 0.0 <= result["metrics"]["segm_mAP"] <= 100.0


def test_study_part_trains_each_model_on_each_canvas(tmp_path, fashion_mnist_dir):
    assert canvas_sides_around_6d(64) == (64, 128)
    short, long = canvas_sides_around_6d(96)
    assert (short / 4) ** 2 < 6 * 96 < (long / 4) ** 2
    study = DetectionStudyConfig(
        models=("gated_cnn_tiny",), dims=DIMS, depths=DEPTHS, canvas_sizes=(64,), iters=1, batch_size=2,
        num_train=4, num_val=2, fashion_root=str(fashion_mnist_dir),
    )  # fmt: skip
    paths = run_detection_part(tmp_path, study, seeds=[0, 1])
    assert [(p.parent.parent.name, p.parent.name) for p in paths] == [
        ("gated_cnn_tiny_64px", "seed0"),
        ("gated_cnn_tiny_64px", "seed1"),
    ]
    result = read_result(paths[0])
    assert result["dataset"] == "fashion_mnist_64x64" and math.isfinite(result["metrics"]["segm_mAP"])
    assert [read_result(p)["seed"] for p in paths] == [0, 1]
    assert result["extra"]["train_wall_s"] > 0
    # a finished job is kept, not retrained
    stamp = paths[0].stat().st_mtime_ns
    assert run_detection_part(tmp_path, study, seeds=[0]) == paths[:1]
    assert paths[0].stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['iterations'\]"):
        DetectionStudyConfig.from_mapping({"iterations": 3})


def test_detector_optimizer_leaves_tagged_state_space_parameters_undecayed(tmp_path) -> None:
    """A_log / D are tagged where created; the detector's param groups follow the tags, not name rules."""
    from mmengine.optim import build_optim_wrapper

    from visbench.detection.runner import build_runner, load_config

    cfg = load_config(
        str(STUDY_CONFIG),
        work_dir=tmp_path,
        cfg_options={"model.backbone.model": "ssm_cross2d_tiny", "model.backbone.dims": DIMS,
                     "model.backbone.depths": DEPTHS, "model.neck.in_channels": list(DIMS)},
    )  # fmt: skip
    model = build_runner(cfg).model
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay_of = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        for param in group["params"]:
            decay_of[names[id(param)]] = group["weight_decay"]
    tagged = [n for n in decay_of if n.endswith(("A_log", ".D"))]
    assert tagged, "the SSM backbone has A_log / D parameters"
    assert all(decay_of[n] == 0.0 for n in tagged)
    convs = [n for n in decay_of if n.startswith("backbone.") and n.endswith("weight") and decay_of[n] > 0]
    assert convs, "ordinary backbone weights keep their weight decay"
