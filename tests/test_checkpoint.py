"""Checkpoints: atomic, resumable to the same weights after a kill, and clear about bad files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_train import tiny_config

from visbench.classification.checkpoints import (
    CheckpointError,
    find_latest,
    load_state,
    load_weights,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from visbench.classification.trainer import train

REPO = Path(__file__).resolve().parent.parent
QUIET = {"log": lambda *a: None}


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_weights(find_latest(run_dir) / "model.safetensors")[0]


def _kill_config(run_dir: Path, data_root: Path) -> dict:
    # 4 epochs x 8 updates, EMA and accumulation on, so every piece of state must come back.
    cfg = tiny_config(
        run_dir,
        data_root,
        data={"train_subset": 256},
        sched={"epochs": 4, "warmup_epochs": 1, "min_lr": 1e-5},
        train={"batch_size": 16, "grad_accum_steps": 2, "ema": True, "ema_decay": 0.9, "deterministic": True},
        aug={"hflip": 0.5, "reprob": 0.25, "smoothing": 0.1},
    )
    return cfg.to_dict()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_resume_after_kill_reaches_the_same_weights(
    sig: int, tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    from visbench.config import config_from_dict

    unbroken = train(config_from_dict(_kill_config(tmp_path / "unbroken", fashion_mnist_dir)), **QUIET)
    assert unbroken.status == "finished"

    killed_dir = tmp_path / "killed"
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump(_kill_config(killed_dir, fashion_mnist_dir)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "visbench", "train", str(config_file)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while find_latest(killed_dir) is None:  # the first epoch's checkpoint: the run is under way
            assert proc.poll() is None, proc.communicate()[0]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        proc.send_signal(sig)
        output = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
    assert proc.returncode != 0, f"the run finished before the signal arrived:\n{output}"
    if sig == signal.SIGTERM:
        assert proc.returncode == 130 and "checkpoint saved" in output
    assert not (killed_dir / "result.json").exists()

    resumed = train(config_from_dict(_kill_config(killed_dir, fashion_mnist_dir)), resume="auto", **QUIET)
    assert resumed.status == "finished"
    expected, got = _final_weights(tmp_path / "unbroken"), _final_weights(killed_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} differs after resume"
    ema_a = load_weights(find_latest(tmp_path / "unbroken") / "ema.safetensors")[0]
    ema_b = load_weights(find_latest(killed_dir) / "ema.safetensors")[0]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert resumed.epoch_losses == unbroken.epoch_losses


def _small_checkpoint(root: Path) -> Path:
    model = torch.nn.Linear(3, 2)
    return save_checkpoint(
        root,
        model_name="toy",
        weights={"model": model.state_dict()},
        train_state={"epoch": 1, "step": 5, "x": torch.ones(2)},
    )


def test_latest_points_at_the_newest_and_old_ones_are_pruned(tmp_path: Path) -> None:
    first = _small_checkpoint(tmp_path)
    second = save_checkpoint(
        tmp_path,
        model_name="toy",
        weights={"model": torch.nn.Linear(3, 2).state_dict()},
        train_state={"epoch": 2, "step": 10},
        keep=1,
    )
    assert resolve_checkpoint(tmp_path) == second and not first.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_truncated_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _small_checkpoint(tmp_path) / "model.safetensors"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"model.safetensors: unreadable or truncated"):
        load_weights(path)


def test_truncated_state_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _small_checkpoint(tmp_path) / "state.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"state.pt: unreadable or truncated"):
        load_state(path)


def test_state_file_with_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save({"format": "visbench-checkpoint-v1", "evil": Path("/")}, path)  # a pickled non-tensor class
    with pytest.raises(CheckpointError, match="unreadable"):
        load_state(path)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    cfg = tiny_config(tmp_path, fashion_mnist_dir, sched={"epochs": 1})
    train(cfg, **QUIET)
    other = tiny_config(tmp_path, fashion_mnist_dir, model="attn_tiny", sched={"epochs": 2})
    with pytest.raises(CheckpointError, match=r"holds weights of model 'gated_cnn_tiny'.*builds 'attn_tiny'"):
        train(other, resume="auto", **QUIET)
    from visbench.config import config_from_dict

    raw = cfg.to_dict()
    raw["model"]["kwargs"] = {"dims": [8, 16, 16, 32], "depths": [1, 1, 1, 1]}
    raw["sched"]["epochs"] = 2
    with pytest.raises(CheckpointError, match=r"model.safetensors does not fit this model: .*shape of"):
        train(config_from_dict(raw), resume="auto", **QUIET)


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
