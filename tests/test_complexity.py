"""Params and MACs: attention counted on CPU, the closed form of a ViT block, and the published numbers."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.vision_transformer import Block
from torch import nn
from visbench.backbones.complexity import (
    count_flops,
    count_macs,
    count_macs_by_kind,
    count_macs_by_module,
    count_params,
    vit_block_flops,
)


@pytest.mark.parametrize(("dim", "tokens", "heads"), [(384, 197, 6), (64, 50, 2), (96, 1024, 3)])
@pytest.mark.parametrize("fused_attn", [True, False])
def test_vit_block_flops_equal_mambaout_eq6_on_cpu(
    dim: int, tokens: int, heads: int, fused_attn: bool
) -> None:
    block = Block(dim, heads, mlp_ratio=4.0, qkv_bias=True)
    block.attn.fused_attn = fused_attn  # SDPA (the CPU trap) and the explicit matmul path
    x = torch.zeros(1, tokens, dim)
    assert count_flops(block, x) == 24 * dim**2 * tokens + 4 * dim * tokens**2
    assert vit_block_flops(dim, tokens) == 24 * dim**2 * tokens + 4 * dim * tokens**2


def test_cpu_sdpa_is_counted() -> None:
    class Attend(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return nn.functional.scaled_dot_product_attention(q, q, q)

    q = torch.zeros(2, 3, 10, 8)
    assert count_flops(Attend(), q) == 4 * 2 * 3 * 10 * 10 * 8


def test_cpu_sdpa_backward_is_counted_like_explicit_attention() -> None:
    torch.manual_seed(0)
    block = Block(32, 2)
    x = torch.randn(1, 16, 32, requires_grad=True)
    block.attn.fused_attn = True
    fused = count_flops(block, x, backward=True)
    block.attn.fused_attn = False  # q @ k^T, softmax, @ v: matmuls torch counts itself
    explicit = count_flops(block, x, backward=True)
    # The flash kernels' backward recomputes Q @ K^T (2 L^2 D FLOPs); torch counts that on CUDA too.
    assert fused == explicit + 2 * 16 * 16 * 32


@pytest.mark.parametrize(
    ("name", "params_m", "gmacs"),
    [
        ("vit_small_patch16_224", 22.1, 4.6),  # DeiT-S row in MambaOut Table 1
        ("vit_base_patch16_224", 86.6, 17.6),  # DeiT-B row
        # MambaOut README says 1.2G; FlopCounterMode reads 1.148G (kobe..base agree to 0.05G): 0.06 slack.
        ("mambaout_femto", 7.3, 1.2),
        ("mambaout_tiny", 26.5, 4.5),
    ],
)
def test_timm_models_match_published_params_and_macs(name: str, params_m: float, gmacs: float) -> None:
    with torch.device("meta"):  # counting on meta tensors computes nothing
        model = timm.create_model(name)
    assert count_params(model) / 1e6 == pytest.approx(params_m, abs=0.05)
    assert count_macs(model, (3, 224, 224)) / 1e9 == pytest.approx(gmacs, abs=0.06)


def test_vit_small_on_real_cpu_tensors_reads_4_6_gmacs_not_4_24() -> None:
    model = timm.create_model("vit_small_patch16_224")
    macs = count_macs(model, (3, 224, 224))
    assert macs == pytest.approx(4.6e9, rel=0.01)
    assert model.training, "count_macs must restore the training mode"


def test_macs_by_module_split_attention_and_mlp() -> None:
    with torch.device("meta"):
        model = timm.create_model("vit_small_patch16_224")
    per_module = count_macs_by_module(model, (3, 224, 224))
    d, n = 384, 197
    assert per_module["blocks.0.attn"] == (4 * d * d * n + 2 * d * n * n)
    assert per_module["blocks.0.mlp"] == 8 * d * d * n
    assert per_module["Global"] == count_macs(model, (3, 224, 224))


def test_batch_scales_macs_and_bad_size_is_named() -> None:
    model = nn.Conv2d(3, 4, 3)
    assert count_macs(model, (2, 3, 8, 8)) == 2 * count_macs(model, (3, 8, 8))
    with pytest.raises(ValueError, match="input_size"):
        count_macs(model, (8, 8))


def test_count_params_counts_shared_weights_once() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, shared)
    assert count_params(model) == 20
    shared.bias.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 16


def test_our_custom_ops_are_counted() -> None:
    from visbench.kernels import causal_conv1d, selective_scan

    batch, dim, length, state, width = 2, 8, 16, 4, 4

    class Ops(nn.Module):
        def forward(self, u: torch.Tensor) -> torch.Tensor:
            y = causal_conv1d(u, torch.ones(dim, width))
            a = -torch.ones(dim, state)
            bc = torch.ones(batch, state, length)
            return selective_scan(y, u, a, bc, bc, D=torch.ones(dim), z=u)

    flops = count_flops(Ops(), torch.zeros(batch, dim, length))
    conv = 2 * batch * dim * length * width
    scan = 9 * batch * length * dim * state + 2 * batch * dim * length
    assert flops == conv + scan


def test_meta_model_counts_like_a_cpu_model() -> None:
    import visbench.backbones  # noqa: F401  (the registration point)

    torch.manual_seed(0)
    cpu = timm.create_model("ssm_cross2d_tiny")
    with torch.device("meta"):
        meta = timm.create_model("ssm_cross2d_tiny")
    assert count_macs(meta, (3, 64, 64)) == count_macs(cpu, (3, 64, 64))
    by_kind = count_macs_by_kind(meta, (3, 64, 64))
    assert sum(by_kind.values()) == count_macs(cpu, (3, 64, 64))
    assert by_kind["token_mixing"] > 0


@pytest.mark.parametrize("name", ["gated_cnn_femto", "vit_tiny"])
def test_kinds_sum_to_count_macs_without_gradients(name: str) -> None:
    """count_macs_by_kind runs under no_grad, count_macs does not: the same forward, the same total."""
    import visbench.backbones  # noqa: F401  (registers the names)

    model = timm.create_model(name, img_size=64).eval()
    assert sum(count_macs_by_kind(model, (3, 64, 64)).values()) == count_macs(model, (3, 64, 64))


# ------------------------------------------------------------------------------ fvcore's convention


def test_mambaout_femto_reads_its_published_1_16_gmacs_in_fvcore_convention() -> None:
    """MambaOut's table (fvcore: LayerNorm counted) says 1.16 G; FlopCounterMode alone reads 1.148 G."""
    import visbench.backbones  # noqa: F401  (registers gated_cnn_femto)

    with torch.device("meta"):
        ours, reference = timm.create_model("gated_cnn_femto"), timm.create_model("mambaout_femto")
    torch_macs = count_macs(ours, (3, 224, 224))
    fvcore_macs = count_macs(ours, (3, 224, 224), convention="fvcore")
    assert torch_macs / 1e9 == pytest.approx(1.148, abs=0.0005)
    assert fvcore_macs / 1e9 == pytest.approx(1.16, abs=0.005)
    assert count_macs(reference, (3, 224, 224), convention="fvcore") == fvcore_macs


def test_unknown_convention_is_named() -> None:
    with pytest.raises(ValueError, match="convention"):
        count_macs(nn.Linear(2, 2), torch.zeros(1, 2), convention="ptflops")


def _fvcore_total(model: nn.Module, x: torch.Tensor) -> int:
    """fvcore's own count, with SDPA counted as the two matmuls it replaces (fvcore has no handle)."""
    fvcore_nn = pytest.importorskip("fvcore.nn", reason="fvcore not installed (pip install fvcore)")
    from fvcore.nn.jit_handles import get_shape

    def sdpa(inputs, outputs) -> int:
        (batch, heads, length, dim), key, value = (get_shape(t) for t in inputs[:3])
        return batch * heads * length * key[-2] * (dim + value[-1])

    analysis = fvcore_nn.FlopCountAnalysis(model.eval(), x)
    analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return int(analysis.total())


@pytest.mark.parametrize(
    "module",
    [
        nn.LayerNorm(4),
        nn.LayerNorm(4, elementwise_affine=False),
        nn.GroupNorm(2, 8),
        nn.BatchNorm2d(8),
        nn.BatchNorm2d(8, affine=False),
        nn.InstanceNorm2d(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Upsample(scale_factor=2, mode="bilinear"),
    ],
    ids=repr,
)
def test_each_op_fvcore_counts_is_counted_as_fvcore_counts_it(module: nn.Module) -> None:
    x = torch.randn(2, 8, 4, 4)
    assert count_macs(module, x) == 0
    assert count_macs(module, x, convention="fvcore") == _fvcore_total(module, x) > 0


def test_ops_fvcore_leaves_out_stay_out() -> None:
    x = torch.randn(2, 8, 4, 4)
    for module in (nn.Upsample(scale_factor=2, mode="bicubic"), nn.GELU(), nn.Softmax(dim=1)):
        assert count_macs(module, x, convention="fvcore") == _fvcore_total(module, x) == 0


@pytest.mark.parametrize("name", ["gated_cnn_femto", "vit_tiny"])
def test_fvcore_convention_equals_fvcore_flop_count_analysis(name: str) -> None:
    import visbench.backbones  # noqa: F401  (registers the names)

    torch.manual_seed(0)
    model = timm.create_model(name, img_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    assert count_macs(model, x, convention="fvcore") == _fvcore_total(model, x)
    assert count_macs(model, x, convention="fvcore") > count_macs(model, x)  # the norms
