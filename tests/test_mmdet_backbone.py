"""VisBenchBackbone: every visbench body as a detection backbone (NCHW maps, freezing, checkpoints)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import timm
import torch
from visbench.backbones.mmdet_backbone import VisBenchBackbone, load_backbone_checkpoint

SMALL_HIER = dict(dims=(16, 24, 32, 48), depths=(1, 1, 1, 1))
SMALL_ISO = dict(depth=2, embed_dim=96)  # divisible by the tiny ViT's 3 heads


def small_kwargs(name: str) -> dict:
    return dict(SMALL_ISO) if name.startswith(("vit", "vim")) else dict(SMALL_HIER)


@pytest.mark.parametrize("name", ["gated_cnn_tiny", "ssm_cross2d_tiny"])
def test_hierarchical_bodies_give_one_map_per_stage_at_strides_4_to_32(name):
    backbone = VisBenchBackbone(name, **SMALL_HIER)
    maps = backbone(torch.randn(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 24, 8, 12), (2, 32, 4, 6), (2, 48, 2, 3)]
    assert backbone.channels == [16, 24, 32, 48]


@pytest.mark.parametrize("name", ["vit_tiny", "vim_tiny"])
def test_isotropic_bodies_give_a_simple_feature_pyramid(name):
    backbone = VisBenchBackbone(name, out_indices=(0, 1, 2, 3), **SMALL_ISO)
    maps = backbone(torch.randn(1, 3, 64, 96))
    # ViTDet widths D/4, D/2, D, D at strides 4, 8, 16, 32
    assert [tuple(m.shape) for m in maps] == [(1, 24, 16, 24), (1, 48, 8, 12), (1, 96, 4, 6), (1, 96, 2, 3)]
    assert backbone.channels == [24, 48, 96, 96]
    narrow = VisBenchBackbone(name, out_indices=(1, 2), pyramid_channels=32, **SMALL_ISO)
    assert [m.shape[1] for m in narrow(torch.randn(1, 3, 64, 64))] == [32, 32] and narrow.channels == [32, 32]


def test_out_indices_select_stages_and_bad_ones_are_named():
    backbone = VisBenchBackbone("gated_cnn_tiny", out_indices=(1, 3), **SMALL_HIER)
    assert [m.shape[1] for m in backbone(torch.randn(1, 3, 64, 64))] == [24, 48]
    with pytest.raises(ValueError, match=r"gated_cnn_tiny: out_indices \(0, 4\) must be stages in 0\.\.3"):
        VisBenchBackbone("gated_cnn_tiny", out_indices=(0, 4), **SMALL_HIER)
    with pytest.raises(ValueError, match="size 'huge'"):
        VisBenchBackbone("gated_cnn_huge")


def test_frozen_stages_get_no_gradients_and_stay_in_eval_mode():
    backbone = VisBenchBackbone("gated_cnn_tiny", frozen_stages=1, **SMALL_HIER)
    backbone.train()
    assert not backbone.body.stem.training and not backbone.body.stages[0].training
    assert backbone.body.stages[1].training
    sum(m.sum() for m in backbone(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is None for p in backbone.body.stem.parameters())
    assert all(p.grad is None for p in backbone.body.stages[0].parameters())
    assert any(p.grad is not None for p in backbone.body.stages[1].parameters())


@pytest.mark.parametrize("name", ["gated_cnn_tiny", "vit_tiny"])
def test_norm_eval_keeps_every_norm_layer_in_eval_mode_while_training(name):
    backbone = VisBenchBackbone(name, norm_eval=True, **small_kwargs(name)).train()
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and not any(m.training for m in norms)
    assert backbone.training and any(
        m.training for m in backbone.modules() if not isinstance(m, torch.nn.LayerNorm)
    )
    assert all(m.training for m in VisBenchBackbone(name, **small_kwargs(name)).train().modules())


def test_frozen_stages_beyond_the_body_and_sequence_bodies_are_named():
    with pytest.raises(ValueError, match=r"gated_cnn_tiny: frozen_stages=5 must be in -1\.\.4"):
        VisBenchBackbone("gated_cnn_tiny", frozen_stages=5, **SMALL_HIER)
    with pytest.raises(ValueError, match="seq_ssm_causal_tiny: a sequence body is not a detection backbone"):
        VisBenchBackbone("seq_ssm_causal_tiny")


def test_pretrained_checkpoint_loads_with_classification_names(tmp_path):
    classifier = timm.create_model("gated_cnn_tiny", num_classes=10, **SMALL_HIER)
    path = tmp_path / "classifier.pth"
    torch.save({"state_dict": classifier.state_dict()}, path)
    backbone = VisBenchBackbone(
        "gated_cnn_tiny", init_cfg=dict(type="Pretrained", checkpoint=str(path)), **SMALL_HIER
    )
    backbone.init_weights()  # mmengine calls this after building: it must not re-initialise the weights
    assert (
        torch.equal(backbone.body.stem.conv1.weight, classifier.stem.conv1.weight)
        if hasattr(classifier.stem, "conv1")
        else all(
            torch.equal(a, b)
            for a, b in zip(backbone.body.stem.state_dict().values(), classifier.stem.state_dict().values())
        )
    )
    x = torch.randn(1, 3, 64, 64)
    expected = classifier.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)
    assert all(torch.allclose(a, b) for a, b in zip(backbone.eval()(x), expected))


def test_checkpoint_of_another_shape_is_an_error_naming_the_file(tmp_path):
    other = timm.create_model("gated_cnn_tiny", dims=(32, 24, 32, 48), depths=(1, 1, 1, 1))
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    body = timm.create_model("gated_cnn_tiny", num_classes=0, **SMALL_HIER)
    with pytest.raises(ValueError, match=r"other\.pth: .* differ in shape"):
        load_backbone_checkpoint(body, path)
    with pytest.raises(ValueError, match="init_cfg: expected dict"):
        VisBenchBackbone("gated_cnn_tiny", init_cfg=dict(type="Kaiming"), **SMALL_HIER)


def test_module_imports_without_mmdet():
    # a fresh interpreter where mmdet cannot be imported: the class is then a plain nn.Module
    code = (
        "import sys; sys.modules['mmdet'] = None; sys.modules['mmengine'] = None\n"
        "import visbench.backbones.mmdet_backbone as m, torch\n"
        "assert m._MMDET_MODELS is None and issubclass(m.VisBenchBackbone, torch.nn.Module)\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.skipif(
    importlib.util.find_spec("mmdet") is None, reason="mmdet not installed (scripts/install_det.sh)"
)
def test_registered_in_mmdet_models():
    try:
        import mmcv.ops  # noqa: F401  (mmdet's models need mmcv's compiled ops)
        from mmdet.registry import MODELS
    except ImportError as err:  # pragma: no cover - mmdet without mmcv's ops
        pytest.skip(f"mmdet not importable: {err}")
    backbone = MODELS.build(dict(type="VisBenchBackbone", model="attn_tiny", **SMALL_HIER))
    assert isinstance(backbone, VisBenchBackbone)
    assert len(backbone(torch.randn(1, 3, 32, 32))) == 4
