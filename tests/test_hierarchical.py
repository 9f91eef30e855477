"""visbench.backbones.hierarchical: timm registration, MambaOut equivalence, features."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import visbench.backbones  # noqa: F401  (the one registration point: registers every model)
from visbench.backbones.hierarchical import FAMILIES, SIZES, HierarchicalNet, checkpoint_filter_fn

try:
    from visbench.backbones.complexity import count_params
except ImportError:  # pragma: no cover - written by another part of the project

    def count_params(model: torch.nn.Module) -> int:
        return sum(p.numel() for p in model.parameters())


ALL_NAMES = [f"{family}_{size}" for family in FAMILIES for size in SIZES]
# femto: forward + backward; tiny: forward; the other sizes are built (on the meta device) only.
RUN_SIZES = ("femto", "tiny")
SMALL_INPUT = (2, 3, 32, 32)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_every_family_and_size_is_registered() -> None:
    registered = set(timm.list_models())
    assert len(ALL_NAMES) == 30
    assert not set(ALL_NAMES) - registered


def _save_timm_mambaout(size: str, path: Path) -> torch.nn.Module:
    theirs = timm.create_model(f"mambaout_{size}").eval()
    for p in theirs.parameters():  # perturb the zero biases and unit norms too, so every tensor matters
        p.data.add_(0.02 * torch.randn_like(p))
    torch.save(theirs.state_dict(), path)
    return theirs


@pytest.mark.parametrize("size", list(SIZES))
def test_timm_mambaout_checkpoint_gives_same_params_and_logits(size: str, tmp_path: Path) -> None:
    theirs = _save_timm_mambaout(size, tmp_path / "mambaout.pth")
    ours = timm.create_model(
        f"gated_cnn_{size}", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "mambaout.pth"))
    ).eval()
    assert count_params(ours) == count_params(theirs)
    assert SIZES[size]["depths"] == tuple(len(s.blocks) for s in ours.stages)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff <= 1e-4


def test_official_mambaout_checkpoint_layout_loads(tmp_path: Path) -> None:
    """Keys as in the MambaOut repository (downsample_layers, stages.i.j, head.fc1/fc2) map too."""
    theirs = timm.create_model("mambaout_femto").eval()
    official = {}
    for k, v in theirs.state_dict().items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample", r"downsample_layers.\1", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = {"head.norm.weight": "norm.weight", "head.norm.bias": "norm.bias"}.get(k, k)
        k = k.replace("head.pre_logits.fc.", "head.fc1.").replace("head.pre_logits.norm.", "head.norm.")
        official[k.replace("head.fc.", "head.fc2.")] = v
    torch.save({"model": official}, tmp_path / "official.pth")
    ours = timm.create_model(
        "gated_cnn_femto", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "official.pth"))
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_checkpoint_filter_keeps_our_own_layout() -> None:
    model = timm.create_model("gated_cnn_femto")
    state = model.state_dict()
    assert checkpoint_filter_fn(state, model).keys() == state.keys()


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n.rsplit("_", 1)[1] not in RUN_SIZES])
def test_large_sizes_build(name: str) -> None:
    family, size = name.rsplit("_", 1)
    with torch.device("meta"):  # structure and parameter count without the cost of initialising
        model = timm.create_model(name, num_classes=0)
    assert count_params(model) > 0
    assert model.mixer == FAMILIES[family]["mixer"] and model.order == FAMILIES[family]["order"]
    assert [s.blocks[0].mixer.order for s in model.stages] == [model.order] * 4
    assert model.num_features == SIZES[size]["dims"][-1]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_forward_backward_shapes_and_eval_determinism(name: str) -> None:
    model = timm.create_model(name, num_classes=7, drop_path_rate=0.1, img_size=64)
    x = torch.randn(*SMALL_INPUT)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)
        features = model.forward_features(x)
    assert features.shape == (2, 1, 1, model.num_features)  # NHWC, as timm's MambaOut


@pytest.mark.parametrize("family", list(FAMILIES))
def test_features_only_gives_the_stage_maps(family: str) -> None:
    model = timm.create_model(f"{family}_femto", features_only=True, out_indices=(1, 2, 3)).eval()
    dims = SIZES["femto"]["dims"]
    assert model.feature_info.channels() == list(dims[1:])
    assert model.feature_info.reduction() == [8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 8, 8, dims[1]), (1, 4, 4, dims[2]), (1, 2, 2, dims[3])]


def test_forward_intermediates_match_timm_semantics() -> None:
    model = timm.create_model("ssm_cross2d_femto").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=2)
        torch.testing.assert_close(final, model.forward_features(x))
        only = model.forward_intermediates(x, indices=[0, 3], output_fmt="NHWC", intermediates_only=True)
    assert [tuple(t.shape) for t in inter] == [(1, 192, 4, 4), (1, 288, 2, 2)]  # last 2, NCHW
    assert [tuple(t.shape) for t in only] == [(1, 16, 16, 48), (1, 2, 2, 288)]
    torch.testing.assert_close(only[1].permute(0, 3, 1, 2), inter[1])


def test_prune_intermediate_layers_keeps_the_wanted_stages() -> None:
    model = timm.create_model("gated_cnn_femto").eval()
    assert model.prune_intermediate_layers(indices=[1]) == [1]
    assert len(model.stages) == 2
    with torch.no_grad():  # as timm: the pruned model returns the unpooled last kept map
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 8, 8, 96)


def test_mixer_and_order_keywords_override_the_name() -> None:
    with torch.device("meta"):
        model = timm.create_model("gated_cnn_tiny", mixer="ssm", order="bidir")
    assert (model.mixer, model.order) == ("ssm", "bidir")
    assert type(model.stages[2].blocks[0].mixer).__name__ == "SelectiveScanOperator"
    assert timm.create_model("ssm_causal_femto", mixer="attn").order == "full"  # the new mixer's default
    assert timm.create_model("ssm_causal_femto", order="cross2d").order == "cross2d"


def test_mixer_kwargs_reach_the_operator() -> None:
    model = timm.create_model("ssm_bidir_femto", mixer_kwargs=dict(d_state=8))
    assert model.stages[0].blocks[0].mixer.A_log.shape[-1] == 8
    model = timm.create_model("attn_femto", mixer_kwargs=dict(head_dim=16))
    assert model.stages[0].blocks[0].mixer.num_heads == 3


def test_no_weight_decay_names_mamba_a_log_and_d() -> None:
    names = timm.create_model("ssm_causal_femto").no_weight_decay()
    assert names and all(n.endswith(("A_log", ".D")) for n in names)
    assert len(names) == 2 * sum(SIZES["femto"]["depths"])


@pytest.mark.parametrize("size", [(1, 3, 70, 64), (1, 3, 64, 48)])
def test_input_not_divisible_by_32_is_a_value_error(size: tuple[int, ...]) -> None:
    model = timm.create_model("gated_cnn_femto")
    with pytest.raises(ValueError, match=r"multiples of the total stride 32 \(32, 64, 96"):
        model(torch.randn(*size))
    with pytest.raises(ValueError, match="input size"):
        model.forward_intermediates(torch.randn(*size))
    features = timm.create_model("gated_cnn_femto", features_only=True)
    with pytest.raises(ValueError, match="input size"):
        features(torch.randn(*size))


def test_img_size_not_divisible_by_32_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="img_size 100x100 is not allowed"):
        timm.create_model("gated_cnn_femto", img_size=100)
    assert timm.create_model("gated_cnn_femto", img_size=(96, 160)) is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mixer="lstm"), "unknown mixer='lstm'"),
        (dict(mixer="attn", order="cross2d"), "order='cross2d' is not valid for mixer='attn'"),
        (dict(depths=(1, 1), dims=(8, 16, 32)), "same length"),
        (dict(global_pool="max"), "global_pool='max'"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        timm.create_model("gated_cnn_femto", **kwargs)


def test_direct_construction_without_timm() -> None:
    model = HierarchicalNet(depths=(1, 1), dims=(16, 32), num_classes=3, mixer="attn", order="causal")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gated_cnn", "ssm_cross2d", "attn_causal"])
def test_torch_compile_matches_eager(family: str) -> None:
    model = timm.create_model(f"{family}_femto", depths=(1, 1, 1, 1), num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, expected, atol=1e-4, rtol=1e-4)
