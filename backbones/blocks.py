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
from visbench.kernels import concat_linear, split_linear

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
        """``fc2(act(g) * cat(i, mixer(c)))`` with ``g, i, c = split(fc1(norm(x)))``, as timm's block.

        Computed as one GEMM per channel group (``visbench.kernels.split_linear`` / ``concat_linear``):
        the same products, without the split's strided views (element-wise ops on them are not
        vectorised) and the two concatenations of (B, H, W, ~2 hidden) tensors (the forward's ``cat``,
        and the split's backward). On the 1-D bodies (784 tokens, batch 64) those were about a third of
        a train step, for every mixer alike.
        """
        shortcut = x
        x = self.norm(x)
        _, kept, mixed = self.split_sizes
        # fc1 rows: gates of the kept channels, gates of the mixed ones, kept channels, mixed channels
        gate_kept, gate_mixed, keep, to_mix = split_linear(
            x, self.fc1.weight, self.fc1.bias, (kept, mixed, kept, mixed)
        )
        mixed_out = self.act(gate_mixed) * self.mixer(to_mix)
        kept_out = self.act(gate_kept) * keep
        out = concat_linear((kept_out, mixed_out), self.fc2.weight, self.fc2.bias)  # fc2 columns: kept, mixed
        return self.drop_path(out) + shortcut
