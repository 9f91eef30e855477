"""DDP on CPU (gloo): two processes train a few steps and hold identical weights afterwards."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
from test_train import tiny_config

from visbench.classification.checkpoints import find_latest, load_weights
from visbench.distributed import DistInfo, ResumableDistributedSampler, ShardSampler


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, run_dir: str, data_root: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        OMP_NUM_THREADS="1",
    )
    from visbench.classification.trainer import train
    from visbench.distributed import cleanup_distributed

    # Augmentation differs per rank (seed + rank): equal weights must come from the gradient all-reduce.
    cfg = tiny_config(
        Path(run_dir),
        Path(data_root),
        sched={"epochs": 1},
        train={"max_steps_per_epoch": 2},
        aug={"hflip": 0.5, "reprob": 0.5},
    )
    outcome = train(cfg, log=lambda *a: None)
    torch.save(
        {k: v.clone() for k, v in outcome.model.state_dict().items()}, Path(run_dir) / f"rank{rank}.pt"
    )
    torch.save({"status": outcome.status, "result": outcome.result}, Path(run_dir) / f"outcome{rank}.pt")
    cleanup_distributed()


def test_two_cpu_ranks_hold_identical_weights_after_optimizer_steps(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), str(fashion_mnist_dir)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
    saved, _ = load_weights(find_latest(tmp_path) / "model.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)
    outcome = torch.load(tmp_path / "outcome0.pt", weights_only=False)
    assert outcome["status"] == "finished"
    # Evaluation is sharded without padding and reduced: every validation image counted exactly once.
    assert outcome["result"]["extra"]["val_images"] == 64 and outcome["result"]["extra"]["world_size"] == 2
    assert outcome["result"]["extra"]["global_steps"] == 2


def test_samplers_split_the_data_between_ranks() -> None:
    data = list(range(10))
    shards = [list(ShardSampler(data, DistInfo(rank=r, world_size=3))) for r in range(3)]
    assert sorted(sum(shards, [])) == data
    a = ResumableDistributedSampler(data, DistInfo(rank=0, world_size=2), shuffle=True, seed=1)
    b = ResumableDistributedSampler(data, DistInfo(rank=1, world_size=2), shuffle=True, seed=1)
    assert sorted(list(a) + list(b)) == data
    full = list(a)
    a.set_start(2)
    assert list(a) == full[2:] and len(a) == 3


_CYCLE_SCRIPT = """
import os, sys
import torch.distributed as dist
from visbench.distributed import cleanup_distributed

def threads():
    return len(os.listdir("/proc/self/task"))

class Holder:  # stands for mmengine's Runner / wrapped model, which reach the group through a cycle
    pass

before = threads()
dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=0, world_size=1)
holder = Holder()
holder.group, holder.itself = dist.group.WORLD, holder
del holder  # now only the cycle collector can free the group
assert threads() > before, "gloo started no threads: the test would check nothing"
cleanup_distributed()
print(threads() - before)
"""


def test_cleanup_joins_gloo_threads_of_a_group_held_in_a_reference_cycle(tmp_path: Path) -> None:
    """Gloo threads still running at interpreter shutdown can abort a torchrun worker at exit."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    out = subprocess.run(
        [sys.executable, "-c", _CYCLE_SCRIPT, str(tmp_path / "store")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "0", f"threads left after cleanup_distributed: {out.stdout.strip()}"
