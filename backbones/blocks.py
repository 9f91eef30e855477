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
from visbench.backbones.cpu_gemm import linear, linear_add, linear_gelu
from visbench.backbones.inference import autocast_enabled, forward_hooks_registered, gelu_approximation
from visbench.backbones.mixers import create_sequence_operator

__all__ = ["GatedBlock"]


def _is_identity(module: nn.Module) -> bool:
    """Whether ``module`` returns its input: ``nn.Identity``, or timm's ``DropPath`` in eval mode."""
    return type(module) is nn.Identity or (type(module) is DropPath and not module.training)


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
        if not torch.is_grad_enabled() and self._no_grad_path_applies():
            return self._forward_inference(x)
        shortcut = x
        g, i, c = torch.split(self.fc1(self.norm(x)), self.split_sizes, dim=-1)
        x = self.fc2(self.act(g) * torch.cat((i, self.mixer(c)), dim=-1))
        return self.drop_path(x) + shortcut

    def _no_grad_path_applies(self) -> bool:
        """The no-grad path calls ``fc1``'s weights and the activation directly: only take it when the
        layers are plain ``nn.Linear`` / GELU and no hook would miss their calls or see other tensors."""
        if torch.jit.is_tracing():  # a traced graph would keep the in-place path in any grad mode
            return False
        if gelu_approximation(self.act) is None:  # the path runs ``act`` in place: only GELU can
            return False
        if type(self.fc1) is not nn.Linear or type(self.fc2) is not nn.Linear:
            return False
        if any("forward" in vars(layer) for layer in (self.fc1, self.act, self.fc2)):  # patched instance
            return False
        return not forward_hooks_registered(self.fc1, self.act, self.fc2)

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The same arithmetic without autograd, in fewer passes over the ``2 * hidden`` activations.

        ``fc1`` runs as three GEMMs over row blocks of its weight: the gate with GELU fused (or in
        place), the identity channels, and the token-mixed channels, which so come out contiguous
        (no copy before the operator). The gate is then multiplied in place, block by block, so
        ``cat`` disappears, and ``fc2`` adds into the residual stream inside its GEMM. The GEMMs go
        through :mod:`visbench.backbones.cpu_gemm` (oneDNN on CPU, PyTorch's BLAS elsewhere). Used when
        gradients are off (``torch.no_grad``, ``torch.inference_mode``); equal to :meth:`forward`'s
        autograd path to float rounding.
        """
        hidden, identity, _ = self.split_sizes
        h = self.norm(x)
        weight, bias = self.fc1.weight, self.fc1.bias
        split = hidden + identity

        def rows(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
            return weight[start:stop], None if bias is None else bias[start:stop]

        gate = linear_gelu(h, *rows(0, hidden), gelu_approximation(self.act))
        if identity:
            gate[..., :identity].mul_(linear(h, *rows(hidden, split)))
        gate[..., identity:].mul_(self.mixer(linear(h, *rows(split, weight.shape[0]))))
        fc2 = self.fc2
        if not _is_identity(self.drop_path):  # DropPath in train mode, or whatever was put in its slot
            return self.drop_path(linear(gate, fc2.weight, fc2.bias)) + x
        if autocast_enabled(x.device.type):  # the product is narrower than the residual stream
            return linear(gate, fc2.weight, fc2.bias) + x
        return linear_add(gate, fc2.weight, fc2.bias, x)
