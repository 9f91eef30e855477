"""timm's model API for the bodies that are one flat stack of blocks: ViT, the gated isotropic body, the
1-D pixel-sequence body.

Each of those classes has ``blocks``, ``norm``, ``head``, ``embed_dim``, ``global_pool``,
``grad_checkpointing`` and its own ``_check_pool(global_pool)``; the methods below (the head and forward,
and what timm's ``features_only``, fine-tuning and optimizer factory call) are written once.
"""

from __future__ import annotations

import torch
from timm.models._features import feature_take_indices
from torch import nn
from visbench.backbones.param_tags import no_weight_decay_names


class BlockStackAPI:
    """Mixin of the timm methods shared by the flat bodies (``visbench.backbones.vit``, ``.isotropic``,
    ``.sequence``); the hierarchical body has stages and its own."""

    blocks: nn.Sequential
    norm: nn.Module
    head: nn.Module
    embed_dim: int

    def _check_pool(self, global_pool: str) -> None:  # pragma: no cover - every body defines its own
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features (``self.pool``, the body's own) through dropout and the classifier."""
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The one forward of every flat body: its own ``forward_features``, then the head."""
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters tagged where they are created (``visbench.backbones.param_tags``)."""
        return no_weight_decay_names(self)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self._check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop blocks after the last wanted index (timm's features_only path calls this)."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices
