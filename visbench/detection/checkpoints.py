"""Load mmengine's own checkpoints under torch's ``weights_only=True`` default (torch >= 2.6).

mmengine 0.10 calls ``torch.load(path)`` without ``weights_only``; since torch 2.6 that means
``weights_only=True``, and its resume checkpoints then fail: the message hub pickles
``HistoryBuffer`` objects (numpy arrays inside, and its statistics functions, which torch's pickle
protocol 2 writes as ``getattr(HistoryBuffer, "min")``). Rather than turning weights-only off, the
globals those checkpoints need, and nothing else, are allowed while mmengine loads a checkpoint
(:func:`mmengine_checkpoint_globals`); elsewhere in the process ``torch.load`` stays as strict as torch
made it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def mmengine_checkpoint_globals() -> list[Any]:
    """The non-tensor globals inside an mmengine training checkpoint (meta, message hub, schedulers).

    What torch's weights-only unpickler needs for a checkpoint of ``visbench detect train`` (checked
    in tests/test_detection.py), no more: the message hub's ``HistoryBuffer`` with
    its numpy arrays, scalars and dtype classes, and ``getattr``, because
    ``HistoryBuffer.__getstate__`` stores its statistics functions and pickle protocol 2 writes
    ``HistoryBuffer.min`` as ``getattr(HistoryBuffer, "min")``. ``getattr`` only reaches attributes of
    objects the unpickler already allows, and calling anything still needs an allowed callable.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    try:  # numpy >= 2 pickles these under numpy._core
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    # numpy 2 rebuilds a dtype and then sets its state, which torch allows only for listed classes: the
    # dtype classes of the numbers a HistoryBuffer holds (float and int histories and counts).
    dtype_classes = [type(np.dtype(code)) for code in ("f8", "f4", "i8", "i4")]
    return [HistoryBuffer, getattr, np.ndarray, np.dtype, _reconstruct, scalar, *dtype_classes]


@contextlib.contextmanager
def allow_mmengine_checkpoints() -> Iterator[None]:
    """Inside this block, ``torch.load`` (weights-only) accepts mmengine's training checkpoints."""
    with torch.serialization.safe_globals(mmengine_checkpoint_globals()):
        yield
