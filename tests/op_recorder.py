"""A dispatch mode that records which aten ops run: how the tests see which path a block took."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OpRecorder(TorchDispatchMode):
    """Records each aten op that runs inside it, with the shape of its first tensor argument.

    Inside a dispatch mode the blocks' inference paths take their BLAS route (``visbench.backbones.cpu_gemm``
    keeps oneDNN to plain eager runs), so ``addmm_`` and ``gelu_`` mark those paths here.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        shape = next((tuple(a.shape) for a in args if isinstance(a, torch.Tensor)), ())
        self.calls.append((func.overloadpacket.__name__, shape))
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> set[str]:
        """Names of the ops that ran."""
        return {name for name, _ in self.calls}

    def shapes(self, op: str) -> list[tuple[int, ...]]:
        """First-argument shapes of each call of ``op``, in order."""
        return [shape for name, shape in self.calls if name == op]
