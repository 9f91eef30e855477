"""`visbench train`: a few steps on real Fashion-MNIST lower every family's loss; bad inputs are clear."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from visbench.classification.checkpoints import find_latest, load_weights
from visbench.classification.trainer import train
from visbench.config import TrainConfig, config_from_dict
from visbench.data.classification import DatasetNotFoundError
from visbench.results import read_result

# Every family at the smallest widths that still build: same recipe, same steps, same seed.
HIERARCHICAL = {"dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1]}
ISOTROPIC = {"embed_dim": 16, "depth": 1, "num_heads": 2}
SEQUENCE = {"embed_dim": 8, "depth": 1}
FAMILIES = {
    "gated_cnn_tiny": HIERARCHICAL,
    "ssm_causal_tiny": HIERARCHICAL,
    "ssm_bidir_tiny": HIERARCHICAL,
    "ssm_cross2d_tiny": HIERARCHICAL,
    "attn_tiny": HIERARCHICAL,
    "attn_causal_tiny": HIERARCHICAL,
    "vit_tiny": ISOTROPIC,
    "vit_causal_tiny": ISOTROPIC,
    "vim_tiny": ISOTROPIC | {"num_heads": None},
    "seq_gated_cnn_tiny": SEQUENCE,
    "seq_ssm_causal_tiny": SEQUENCE,
    "seq_attn_causal_tiny": SEQUENCE,
}


def tiny_config(
    run_dir: Path, data_root: Path, model: str = "gated_cnn_tiny", **sections: dict
) -> TrainConfig:
    """A few-second Fashion-MNIST run: 128 train / 64 val images, 32x32 (28x28 for pixel sequences)."""
    kwargs = {k: v for k, v in FAMILIES.get(model, {}).items() if v is not None}
    size = [28, 28] if model.startswith("seq_") else [32, 32]
    raw: dict = {
        "model": {"name": model, "kwargs": kwargs},
        "data": {
            "dataset": "fashion_mnist",
            "root": str(data_root),
            "input_size": size,
            "in_chans": 1,
            "num_classes": 10,
            "train_subset": 128,
            "val_subset": 64,
            "workers": 0,
        },
        "aug": {"simple": True, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "smoothing": 0.0},
        "optim": {"lr": 3e-3, "weight_decay": 0.0},
        "sched": {"epochs": 3, "warmup_epochs": 0, "min_lr": 3e-3},
        "train": {
            "batch_size": 32,
            "ema": False,
            "channels_last": False,
            "output_dir": str(run_dir),
            "progress": False,
            "log_interval": 1,
            "threads": 1,
            "seed": 0,
        },
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw)


@pytest.mark.parametrize("model", list(FAMILIES))
def test_a_few_steps_lower_the_loss(model: str, tmp_path: Path, fashion_mnist_dir: Path) -> None:
    outcome = train(tiny_config(tmp_path, fashion_mnist_dir, model), log=lambda *a: None)
    assert outcome.status == "finished"
    first, *_, last = outcome.epoch_losses
    assert last < first, f"{model}: epoch losses {outcome.epoch_losses} did not go down"
    result = read_result(tmp_path / "result.json")
    assert result["model"] == model and 0.0 <= result["metrics"]["top1"] <= 100.0
    assert result["params"] == sum(p.numel() for p in outcome.model.parameters())


def test_run_writes_metrics_lines_result_and_checkpoint(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    cfg = tiny_config(
        tmp_path, fashion_mnist_dir, sched={"epochs": 1}, train={"grad_accum_steps": 2, "ema": True}
    )
    outcome = train(cfg, log=lambda *a: None)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"train", "epoch", "eval"}
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["global_step"] for r in train_records] == [1, 2]  # 4 batches / 2 accumulation steps
    assert all({"loss", "lr", "img_per_s", "time"} <= r.keys() for r in train_records)
    assert {"top1", "top5", "ema_top1"} <= next(r for r in records if r["kind"] == "eval").keys()
    latest = find_latest(tmp_path)
    assert latest is not None and (latest / "ema.safetensors").exists()
    weights, meta = load_weights(latest / "model.safetensors")
    assert meta["model"] == "gated_cnn_tiny"
    for key, value in outcome.model.state_dict().items():
        assert torch.equal(weights[key], value)
    result = read_result(tmp_path / "result.json")
    # both MAC conventions: fvcore's also counts the LayerNorms, so it is the larger
    assert result["macs"] > 0 and result["extra"]["macs_fvcore"] > result["macs"]


def test_missing_dataset_names_path_and_layout(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, tmp_path / "nowhere", data={"dataset": "imagefolder", "in_chans": 3})
    with pytest.raises(DatasetNotFoundError, match=r"nowhere/train.*ImageFolder layout.*<class>/<image>"):
        train(cfg, log=lambda *a: None)
    cfg = tiny_config(tmp_path, tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match=r"nowhere.*train-images-idx3-ubyte"):
        train(cfg, log=lambda *a: None)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    assert (
        train(tiny_config(tmp_path, fashion_mnist_dir, sched={"epochs": 1}), log=lambda *a: None).status
        == "finished"
    )
    good = find_latest(tmp_path)
    good_weights, _ = load_weights(good / "model.safetensors")
    # A denormal std turns the normalized pixels into +-inf: the next epoch's loss is not finite.
    bad = tiny_config(tmp_path, fashion_mnist_dir, sched={"epochs": 2}, data={"mean": [0.5], "std": [1e-45]})
    messages: list[str] = []
    outcome = train(bad, resume="auto", log=messages.append)
    assert outcome.status == "diverged" and outcome.exit_code != 0
    assert re.search("training loss is (nan|inf)", outcome.message) and str(good) in outcome.message
    assert find_latest(tmp_path) == good
    kept, _ = load_weights(good / "model.safetensors")
    assert all(torch.equal(kept[k], v) for k, v in good_weights.items())
    assert (
        not (tmp_path / "result.json").exists()
        or read_result(tmp_path / "result.json")["extra"]["epochs"] == 1
    )


def test_eval_of_the_saved_checkpoint_reproduces_the_final_top1(
    tmp_path: Path, fashion_mnist_dir: Path, capsys
) -> None:
    import yaml

    from visbench.cli import main

    cfg = tiny_config(tmp_path / "run", fashion_mnist_dir, sched={"epochs": 1})
    outcome = train(cfg, log=lambda *a: None)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    capsys.readouterr()
    code = main(
        [
            "eval",
            str(tmp_path / "cfg.yaml"),
            "--checkpoint",
            str(tmp_path / "run"),
            "--output",
            str(tmp_path / "ev"),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert printed["top1"] == pytest.approx(outcome.result["metrics"]["top1"], abs=1e-3)
    assert read_result(tmp_path / "ev" / "result.json")["metrics"]["top1"] == pytest.approx(
        printed["top1"], abs=1e-3
    )
    assert main(["eval", str(tmp_path / "cfg.yaml"), "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
