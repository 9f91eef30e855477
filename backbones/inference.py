"""Guards for the fused no-grad inference paths of the blocks.

Those paths call layers' weights directly instead of calling the layers, and run activations in
place, so they are only taken when nothing could tell the difference: the layers are the plain
PyTorch ones the path imitates and no forward hook is registered that would miss a call or see
another tensor (this includes ``FlopCounterMode``, whose module tracker registers global hooks, so
MACs are always counted on the modules' own forward).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules import module as _module

__all__ = ["autocast_enabled", "forward_hooks_registered", "gelu_approximation"]


def gelu_approximation(act: nn.Module) -> str | None:
    """``act.approximate`` if ``act`` is exactly ``nn.GELU`` (it has an in-place twin), else None."""
    return act.approximate if type(act) is nn.GELU else None


def forward_hooks_registered(*modules: nn.Module) -> bool:
    """Whether a global ``nn.Module`` forward (pre-)hook, or one on any of ``modules``, is registered."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled`` that answers False for devices without autocast (``meta``)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
