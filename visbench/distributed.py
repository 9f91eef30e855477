"""DDP plumbing: process-group set-up from torchrun's environment, samplers, and metric reduction.

``torchrun --nproc_per_node N -m visbench train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`init_distributed` then joins the group with nccl on GPU and gloo on CPU. A single process
(no ``WORLD_SIZE``) runs the same code with world size 1.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group described by torchrun's environment variables (no-op without them)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def cleanup_distributed() -> None:
    """Destroy the process group while the interpreter is still whole.

    Garbage is collected first: a DDP model caught in a reference cycle (mmengine's Runner makes
    some) keeps the group alive past ``destroy_process_group``, and then gloo's worker threads
    free their last collective's tensors during interpreter shutdown, when they can no longer take
    the GIL, and the process aborts ("terminate called without an active exception"). Once
    nothing holds the group, its destructor joins those threads here.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> this process's GPU under torchrun (LOCAL_RANK) or cuda:0, else CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={spec!r} but CUDA is not available on this machine")
    return device


def all_reduce_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    """Sum a list of numbers over ranks (identity on one process)."""
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (used for the NaN stop and signal stop)."""
    if not info.enabled:
        return flag
    tensor = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (also used with one process) that can start an epoch part-way through.

    The epoch's order depends only on ``seed + epoch``, so skipping the first ``start_index`` samples
    of this rank reproduces exactly the batches an uninterrupted run would still have seen.
    """

    def __init__(self, dataset: Dataset, info: DistInfo, shuffle: bool, seed: int, drop_last: bool = False):
        super().__init__(
            dataset,
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.start_index = 0

    def set_start(self, start_index: int) -> None:
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class ShardSampler(Sampler[int]):
    """Evaluation sharding without padding (rank r takes r, r+N, ...), so each image counts exactly once."""

    def __init__(self, dataset: Dataset, info: DistInfo):
        self.indices = list(range(info.rank, len(dataset), info.world_size))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
