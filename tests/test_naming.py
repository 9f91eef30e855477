"""Model names say family, mixer, order, body and size; result files and tables rely on it."""

from __future__ import annotations

import pytest
import visbench.backbones
from visbench.backbones.naming import describe


def test_every_registered_model_name_is_described() -> None:
    names = visbench.backbones.list_models()
    assert len(names) >= 40
    for name in names:
        description = describe(name)
        assert name.endswith(description.size)


@pytest.mark.parametrize(
    ("name", "family", "mixer", "order", "body"),
    [
        ("gated_cnn_tiny", "gated_cnn", "conv", "full", "hierarchical"),
        ("ssm_cross2d_small", "ssm", "ssm", "cross2d", "hierarchical"),
        ("attn_causal_tiny", "attention", "attn", "causal", "hierarchical"),
        ("vit_causal_small", "attention", "attn", "causal", "isotropic"),
        ("vim_small", "ssm", "ssm", "bidir", "isotropic"),
        ("iso_gated_cnn_small", "gated_cnn", "conv", "full", "isotropic"),
        ("seq_gated_cnn_tiny", "gated_cnn", "conv", "causal", "sequence"),
        ("seq_ssm_causal_tiny", "ssm", "ssm", "causal", "sequence"),
    ],
)
def test_name_parts(name: str, family: str, mixer: str, order: str, body: str) -> None:
    d = describe(name)
    assert (d.family, d.mixer, d.order, d.body) == (family, mixer, order, body)


@pytest.mark.parametrize(("name", "part"), [("gated_cnn_huge", "size"), ("conv_tiny", "family")])
def test_unknown_name_is_an_error_naming_the_part(name: str, part: str) -> None:
    with pytest.raises(ValueError, match=part):
        describe(name)
