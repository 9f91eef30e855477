"""Fair by construction: every kind of parameter gets the same weight decay in every registered model.

The optimizer groups are timm's (``param_groups_weight_decay`` with ``model.no_weight_decay()``, what
``create_optimizer_v2`` builds); the expected decay of each kind is written here once, for all bodies.
"""

from __future__ import annotations

import pytest
import timm
import torch
import visbench.backbones
from timm.optim import param_groups_weight_decay
from torch import nn

# kind -> decayed? (Mamba: A_log and D are not; ViT / DeiT: position embeddings and class tokens are not;
# timm: norms and biases are not.)
EXPECTED_DECAY = {"weight": True, "ssm_state": False, "norm": False, "bias": False, "embedding": False}


def parameter_kind(model: nn.Module, name: str) -> str:
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if leaf in ("A_log", "D"):
        return "ssm_state"
    if leaf in ("pos_embed", "cls_token"):
        return "embedding"
    if (
        isinstance(owner, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d))
        or "norm" in type(owner).__name__.lower()
    ):
        return "norm"
    if leaf == "bias" or leaf.endswith("_bias"):
        return "bias"
    return "weight"


@pytest.mark.parametrize("name", visbench.backbones.list_models())
def test_every_kind_of_parameter_is_decayed_alike_in_every_model(name: str) -> None:
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=10)
    groups = param_groups_weight_decay(model, weight_decay=0.05, no_weight_decay_list=model.no_weight_decay())
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    wrong = [
        (param_name, kind)
        for param_name, param in model.named_parameters()
        if (id(param) in decayed) != EXPECTED_DECAY[(kind := parameter_kind(model, param_name))]
    ]
    assert not wrong, f"{name}: decayed against its kind's rule: {wrong[:5]}"


def test_the_ssm_state_is_tagged_where_it_is_created_not_listed_by_name() -> None:
    model = timm.create_model("vim_tiny", num_classes=10)
    a_log = next(p for n, p in model.named_parameters() if n.endswith("A_log"))
    assert getattr(a_log, "_no_weight_decay", False)
    assert any(n.endswith("A_log") for n in model.no_weight_decay())
