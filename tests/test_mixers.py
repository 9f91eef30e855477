"""Sequence operators (visbench.backbones.mixers) and the Gated CNN block (visbench.backbones.blocks)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from timm.models.mambaout import GatedConvBlock
from visbench.backbones.blocks import GatedBlock
from visbench.backbones.mixers import (
    MIXER_ORDERS,
    SHORT_SEQUENCE,
    AttentionOperator,
    SelectiveScanOperator,
    create_sequence_operator,
    route_projection,
)
from visbench.kernels import scan_orders, selective_scan

ALL_PAIRS = [(mixer, order) for mixer, orders in MIXER_ORDERS.items() for order in orders]
CAUSAL_PAIRS = [("ssm", "causal"), ("attn", "causal")]
NON_CAUSAL_PAIRS = [pair for pair in ALL_PAIRS if pair not in CAUSAL_PAIRS]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _operator(mixer: str, order: str, dim: int = 16, **kwargs) -> torch.nn.Module:
    if mixer == "attn":
        kwargs.setdefault("head_dim", 8)
    return create_sequence_operator(mixer, order, dim, **kwargs).eval()


@pytest.mark.parametrize(("mixer", "order"), ALL_PAIRS)
@pytest.mark.parametrize("shape", [(2, 3, 5), (1, 1, 20)], ids=["map", "sequence"])
def test_operator_keeps_shape_and_backpropagates(mixer: str, order: str, shape: tuple[int, int, int]) -> None:
    op = _operator(mixer, order).train()
    x = torch.randn(*shape, 16, requires_grad=True)
    y = op(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in op.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def _prefix_changes(op: torch.nn.Module, t: int) -> tuple[float, float]:
    """Max change of outputs at row-major positions <= t and > t when tokens after t change."""
    x = torch.randn(1, 4, 5, 16)
    x2 = x.clone()
    x2.view(1, 20, 16)[:, t + 1 :] = torch.randn(1, 20 - t - 1, 16)
    with torch.no_grad():
        diff = (op(x) - op(x2)).abs().view(20, 16).amax(dim=1)
    return diff[: t + 1].max().item(), diff[t + 1 :].max().item()


@pytest.mark.parametrize(("mixer", "order"), CAUSAL_PAIRS)
@pytest.mark.parametrize("t", [0, 7, 18])
def test_causal_orders_ignore_later_tokens(mixer: str, order: str, t: int) -> None:
    before, after = _prefix_changes(_operator(mixer, order), t)
    assert before <= 1e-6
    assert after > 1e-4  # the change is seen where it is allowed to be


@pytest.mark.parametrize(("mixer", "order"), NON_CAUSAL_PAIRS)
def test_non_causal_orders_see_later_tokens(mixer: str, order: str) -> None:
    before, _ = _prefix_changes(_operator(mixer, order), t=7)
    assert before > 1e-5


def test_unknown_mixer_lists_valid_mixers() -> None:
    with pytest.raises(ValueError, match="unknown mixer='lstm'.*conv, ssm, attn"):
        create_sequence_operator("lstm", None, 8)


@pytest.mark.parametrize(("mixer", "order"), [("ssm", "full"), ("attn", "bidir"), ("conv", "causal")])
def test_unknown_order_lists_valid_orders(mixer: str, order: str) -> None:
    with pytest.raises(ValueError, match=f"order='{order}' is not valid for mixer='{mixer}'.*ssm: cross2d"):
        create_sequence_operator(mixer, order, 8)


def test_order_none_takes_the_mixer_default() -> None:
    assert create_sequence_operator("ssm", None, 8).order == "cross2d"
    assert create_sequence_operator("attn", None, 8).order == "full"


@pytest.mark.parametrize(("order", "routes"), [("causal", 1), ("bidir", 2), ("cross2d", 4)])
def test_ssm_has_mamba_parameterisation_per_route(order: str, routes: int) -> None:
    dim, n = 40, 16
    op = SelectiveScanOperator(dim, order)
    rank = math.ceil(dim / 16)
    assert op.dt_rank == rank
    assert op.front.weight.shape == (routes * dim, 4)
    assert op.x_proj_weight.shape == (routes, rank + 2 * n, dim)
    assert op.dt_proj_weight.shape == (routes, dim, rank)
    torch.testing.assert_close(op.A_log, torch.log(torch.arange(1, n + 1.0)).expand(routes * dim, n))
    torch.testing.assert_close(op.D, torch.ones(routes * dim))
    dt = F.softplus(op.dt_proj_bias)
    assert dt.shape == (routes * dim,)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001


@pytest.mark.parametrize("backend", ["ref", "cpu"])  # rows, and channel-last / route-major views
@pytest.mark.parametrize("order", ["causal", "bidir", "cross2d"])
def test_ssm_grouped_scan_equals_one_scan_per_route(order: str, backend: str) -> None:
    """All routes in one grouped selective_scan call == Mamba run route by route, then averaged."""
    dim, n = 12, 16
    op = SelectiveScanOperator(dim, order, backend=backend).eval()
    x = torch.randn(2, 3, 4, dim)
    with torch.no_grad():
        xs = op.front(x)  # (B, K, C, L), checked against the definition of the front below
        ref_front = scan_orders.split(x.permute(0, 3, 1, 2), order)
        w = op.front.weight.view(xs.shape[1], dim, 1, 4)
        bias = op.front.bias.view(xs.shape[1], dim)
        outs = []
        for k in range(xs.shape[1]):
            conv = F.conv1d(F.pad(ref_front[:, k], (3, 0)), w[k], bias[k], groups=dim)
            torch.testing.assert_close(xs[:, k], F.silu(conv), atol=1e-5, rtol=1e-5)
            x_dbl = op.x_proj_weight[k] @ xs[:, k]  # (B, R + 2N, L)
            dt, b, c = torch.split(x_dbl, [op.dt_rank, n, n], dim=1)
            sl = slice(k * dim, (k + 1) * dim)
            outs.append(
                selective_scan(
                    xs[:, k],
                    op.dt_proj_weight[k] @ dt,
                    -torch.exp(op.A_log[sl]),
                    b,
                    c,
                    op.D[sl],
                    delta_bias=op.dt_proj_bias[sl],
                    delta_softplus=True,
                    backend="ref",
                )
            )
        expected = scan_orders.merge(torch.stack(outs, 1), order, 3, 4) / len(outs)
        tolerance = 1e-5 if backend == "ref" else 2e-4  # the cpu kernels' float32 exp and sum order
        torch.testing.assert_close(op(x), expected.permute(0, 2, 3, 1), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("order", ["causal", "bidir", "cross2d"])
def test_ssm_layouts_give_the_same_outputs_and_gradients(order: str, monkeypatch) -> None:
    """The channel-last pipeline (the cpu scan reads strides) and the rows one (what the GPU scans
    get) compute the same function: outputs and every gradient agree on the same weights."""
    from visbench.backbones import mixers

    op = SelectiveScanOperator(12, order, backend="cpu").train()
    x = torch.randn(2, 5, 6, 12)
    results = []
    for channel_last in (True, False):
        monkeypatch.setattr(mixers, "reads_strided", lambda *args, flag=channel_last: flag)
        op.zero_grad()
        leaf = x.clone().requires_grad_(True)
        out = op(leaf)
        out.backward(torch.cos(torch.arange(out.numel(), dtype=out.dtype)).view(out.shape))
        results.append((out.detach(), leaf.grad, {k: p.grad.clone() for k, p in op.named_parameters()}))
    (out_cl, dx_cl, grads_cl), (out_rows, dx_rows, grads_rows) = results
    torch.testing.assert_close(out_cl, out_rows, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(dx_cl, dx_rows, atol=1e-5, rtol=1e-4)
    for name, grad in grads_rows.items():
        torch.testing.assert_close(
            grads_cl[name], grad, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize("order", ["causal", "bidir", "cross2d"])
def test_front_layouts(order: str) -> None:
    """channel_last=True writes the routes token-major, so conv1d and the scan read (B, K*C, L) with
    the dims unit-stride, without a copy; the values equal the rows front's."""
    front = SelectiveScanOperator(8, order).front
    x = torch.randn(2, 3, 4, 8)
    with torch.no_grad():
        cl, rows = front(x, channel_last=True), front(x, channel_last=False)
    torch.testing.assert_close(cl, rows)
    assert cl.stride(2) == 1 and cl.flatten(1, 2).stride(1) == 1
    if order != "causal":  # a causal route is a view of the (B, H, W, C) map in either case
        assert rows.stride(-1) == 1


@pytest.mark.parametrize("order", ["full", "causal"])
def test_attention_equals_explicit_softmax(order: str) -> None:
    dim, heads = 16, 2
    op = AttentionOperator(dim, order, head_dim=8).eval()
    assert op.num_heads == heads
    x = torch.randn(2, 3, 4, dim)
    with torch.no_grad():
        tokens = op.front(x)[:, 0].transpose(1, 2)  # (B, L, C)
        q, k, v = op.qkv(tokens).view(2, 12, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)
        if order == "causal":
            scores = scores.masked_fill(torch.ones(12, 12, dtype=torch.bool).triu(1), float("-inf"))
        expected = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 3, 4, dim)
        torch.testing.assert_close(op(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("dim", "heads"), [(48, 1), (96, 3), (288, 9), (576, 18)])
def test_attention_heads_are_32_channels_or_one_head(dim: int, heads: int) -> None:
    assert AttentionOperator(dim).num_heads == heads


def test_gated_block_equals_timm_gated_conv_block() -> None:
    timm_block = GatedConvBlock(24).eval()
    for p in timm_block.parameters():  # non-trivial values everywhere, LayerNorm included
        p.data.normal_(0, 0.2)
    ours = GatedBlock(24).eval()
    state = {k.replace("conv.", "mixer.conv."): v for k, v in timm_block.state_dict().items()}
    ours.load_state_dict(state)
    x = torch.randn(2, 5, 6, 24)
    torch.testing.assert_close(ours(x), timm_block(x), atol=1e-6, rtol=1e-6)
    assert ours.split_sizes == (64, 40, 24)  # hidden = int(8/3 * 24); conv on dim channels, as timm


@pytest.mark.parametrize(("mixer", "order"), [("ssm", "bidir"), ("attn", "causal")])
def test_gated_block_runs_the_chosen_operator_on_the_mixed_channels(mixer: str, order: str) -> None:
    block = GatedBlock(32, mixer=mixer, order=order, drop_path=0.1)
    assert block.mixer.order == order
    assert sum(p.numel() for p in block.mixer.parameters()) > 0
    x = torch.randn(2, 4, 4, 32, requires_grad=True)
    block(x).sum().backward()
    assert all(p.grad is not None for p in block.parameters())


@pytest.mark.parametrize("layout", ["rows", "channel_last"])
@pytest.mark.parametrize("length", [1, SHORT_SEQUENCE, SHORT_SEQUENCE + 1, 40])
def test_route_projection_matches_a_loop_over_samples_and_routes(length, layout):
    """Both formulations (per-route GEMMs over all tokens for channel-last input and short rows,
    route-batched matmuls for long rows): values and gradients against weight[k] @ x[b, k] written out
    sample by sample; the output keeps the input's unit stride (L for long rows, else the dims)."""
    gen = torch.Generator().manual_seed(length)
    weight = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 7, length, generator=gen, dtype=torch.float64, requires_grad=True)
    laid = x if layout == "rows" else x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    out = route_projection(weight, laid)
    rows_out = layout == "rows" and length > SHORT_SEQUENCE
    assert (out.stride(-1) == 1) if rows_out else (out.stride(2) == 1)
    want = torch.stack([torch.stack([weight[k] @ x[b, k] for k in range(3)]) for b in range(2)])
    torch.testing.assert_close(out, want)
    dout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    for got, ref in zip(
        torch.autograd.grad(out, (weight, x), dout), torch.autograd.grad(want, (weight, x), dout)
    ):
        torch.testing.assert_close(got, ref)
