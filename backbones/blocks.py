"""The one block of the suite: the Gated CNN block, with a pluggable token operator.

Same structure and parameter names as timm's MambaOut ``GatedConvBlock`` (LayerNorm eps 1e-6;
``fc1`` to ``2 * hidden`` with ``hidden = int(8/3 * dim)``; split into gate, identity and mixed
channels; token operator on the mixed channels only; GELU gate; ``fc2``; DropPath), except that
the depthwise conv is one choice of token operator (``mixer="conv"``) among
``visbench.backbones.mixers``. The operator lives at ``block.mixer``.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, LayerNorm
from torch import nn
from visbench.backbones.mixers import create_sequence_operator

__all__ = ["GatedBlock"]


class GatedBlock(nn.Module):
    """Gated CNN block (MambaOut) whose token operator is ``create_sequence_operator(mixer, order)``.

    Channels-last: ``(B, H, W, dim)`` in and out. ``mixer_kwargs`` go to the operator; the
    ``conv`` operator gets ``kernel_size`` from here.
    """

    def __init__(
        self,
        dim: int,
        mixer: str = "conv",
        order: str | None = None,
        expansion_ratio: float = 8 / 3,
        kernel_size: int = 7,
        conv_ratio: float = 1.0,
        norm_layer: type[nn.Module] = LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        drop_path: float = 0.0,
        **mixer_kwargs,
    ) -> None:
        super().__init__()
        self.norm = norm_layer(dim)
        hidden = int(expansion_ratio * dim)
        mixed = int(conv_ratio * dim)
        if not 0 < mixed <= hidden:
            raise ValueError(f"conv_ratio={conv_ratio} gives {mixed} mixed channels; need 1..{hidden}")
        self.split_sizes = (hidden, hidden - mixed, mixed)  # gate, identity, token-mixed
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act = act_layer()
        if mixer == "conv":
            mixer_kwargs.setdefault("kernel_size", kernel_size)
        self.mixer = create_sequence_operator(mixer, order, mixed, **mixer_kwargs)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        g, i, c = torch.split(self.fc1(self.norm(x)), self.split_sizes, dim=-1)
        x = self.fc2(self.act(g) * torch.cat((i, self.mixer(c)), dim=-1))
        return self.drop_path(x) + shortcut
