"""Models: gated-CNN, SSM and attention token mixers in hierarchical, isotropic and 1-D bodies.

Importing this package is THE registration point: it registers every visbench model with timm
(``timm.create_model("gated_cnn_tiny")``), whichever submodule is imported first. The mmdetection backbone
type ``VisBenchBackbone`` lives in ``visbench.backbones.mmdet_backbone``, which detection configs load with
``custom_imports`` (so that ``import visbench.backbones`` never imports mmdet).
"""

import timm

# Importing the body modules registers their models with timm.
from visbench.backbones import hierarchical, isotropic, sequence, vit
from visbench.backbones.naming import describe, describe_any, tokens_per_stage

# One architecture per module: hierarchical (MambaOut's 4 stages), vit (ViT/DeiT), isotropic (Gated CNN
# blocks at stride 16, Vim-like), sequence (1-D pixel sequences).
BODY_MODULES = (hierarchical, vit, isotropic, sequence)


def list_models() -> list[str]:
    """Every model name visbench registers with timm, sorted."""
    return sorted(
        name for module in BODY_MODULES for name in timm.list_models(module=module.__name__.split(".")[-1])
    )


__all__ = ["describe", "describe_any", "list_models", "tokens_per_stage"]
