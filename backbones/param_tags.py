"""Optimizer facts that travel with a parameter, set where the parameter is created.

As mamba-ssm does (``self.A_log._no_weight_decay = True`` in ``modules/mamba_simple.py``), a parameter
that must not be weight-decayed says so itself, so every body that holds one treats it alike: no
per-body lists of names. timm's optimizer factory then excludes these names (``model.no_weight_decay()``)
and, by its own rule, every 1-D parameter (norm weights, biases).
"""

from __future__ import annotations

from torch import nn

NO_WEIGHT_DECAY = "_no_weight_decay"

__all__ = ["NO_WEIGHT_DECAY", "exclude_from_weight_decay", "no_weight_decay_names"]


def exclude_from_weight_decay(*params: nn.Parameter) -> None:
    """Tag parameters (state-space ``A_log`` / ``D``, position embeddings, class tokens) as not decayed."""
    for param in params:
        setattr(param, NO_WEIGHT_DECAY, True)


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Names (relative to ``module``) of the parameters tagged by :func:`exclude_from_weight_decay`."""
    return {name for name, param in module.named_parameters() if getattr(param, NO_WEIGHT_DECAY, False)}
