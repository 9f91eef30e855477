"""Weight decay in mmdetection set by the parameters' own tags, as in classification.

mmengine's ``DefaultOptimWrapperConstructor`` picks per-parameter decay from name rules
(``norm_decay_mult``, ``custom_keys``). A state-space ``A_log`` or ``D`` is neither a norm nor a bias,
so by name alone it would be decayed in a detector while classification leaves it alone. This
constructor adds ``decay_mult=0`` for every parameter tagged where it was created
(:func:`visbench.backbones.param_tags.exclude_from_weight_decay`), so every body gets the same rule in
both tasks. A config selects it with
``optim_wrapper = dict(constructor="TaggedDecayOptimWrapperConstructor", ...)``.
"""

from __future__ import annotations

from typing import Any

from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from visbench.backbones.param_tags import no_weight_decay_names


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TaggedDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor plus ``decay_mult=0`` for every tagged parameter (by full name)."""

    def __call__(self, model: nn.Module) -> OptimWrapper:
        module = model.module if hasattr(model, "module") else model
        custom_keys: dict[str, Any] = dict(self.paramwise_cfg.get("custom_keys", {}))
        for name in sorted(no_weight_decay_names(module)):
            custom_keys[name] = {**custom_keys.get(name, {}), "decay_mult": 0.0}
        self.paramwise_cfg = {**self.paramwise_cfg, "custom_keys": custom_keys}
        return super().__call__(model)
