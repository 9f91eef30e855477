"""Models: gated-CNN, SSM and attention token mixers in hierarchical and isotropic bodies.

Importing this package registers every visbench model with timm (``timm.create_model("gated_cnn_tiny")``)
and, when mmdetection is installed, the ``VisBenchBackbone`` type in mmdet's ``MODELS`` registry.
"""

from backbones import hierarchical  # noqa: F401  (registers the hierarchical models with timm)
from backbones.naming import describe

__all__ = ["describe"]
