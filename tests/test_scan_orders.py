"""visbench.kernels.scan_orders: each order's routes are as named, and merge is the adjoint of split."""

from __future__ import annotations

import pytest
import torch
from visbench.kernels import scan_orders
from visbench.kernels.scan_orders import ORDERS, merge, merge_reference, num_routes, routes_reference, split

SHAPES = [(3, 5), (5, 3), (4, 4), (1, 7), (6, 1), (1, 1)]


def _index_map(height: int, width: int) -> torch.Tensor:
    """(1, 1, H, W) map whose value at (i, j) is its row-major index i * W + j."""
    return torch.arange(height * width, dtype=torch.float64).reshape(1, 1, height, width)


def _expected_routes(order: str, height: int, width: int) -> list[list[int]]:
    """The index sequences each route visits, written out with loops (independent of the code)."""
    rows = [i * width + j for i in range(height) for j in range(width)]
    columns = [i * width + j for j in range(width) for i in range(height)]
    return {
        "causal": [rows],
        "bidir": [rows, rows[::-1]],
        "cross2d": [rows, columns, rows[::-1], columns[::-1]],
    }[order]


def test_number_of_routes():
    assert [num_routes(order) for order in ORDERS] == [1, 2, 4]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_routes_visit_pixels_in_the_named_order(order, height, width):
    routes = split(_index_map(height, width), order)
    assert routes.shape == (1, num_routes(order), 1, height * width)
    got = [routes[0, k, 0].long().tolist() for k in range(routes.shape[1])]
    assert got == _expected_routes(order, height, width)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_merge_is_the_adjoint_of_split(order, height, width):
    gen = torch.Generator().manual_seed(height * 10 + width)
    x = torch.randn(2, 3, height, width, generator=gen, dtype=torch.float64)
    y = torch.randn(2, num_routes(order), 3, height * width, generator=gen, dtype=torch.float64)
    lhs = (split(x, order) * y).sum()
    rhs = (x * merge(y, order, height, width)).sum()
    torch.testing.assert_close(lhs, rhs)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_merge_of_split_is_k_times_the_map(order, height, width):
    x = torch.randn(2, 3, height, width)
    torch.testing.assert_close(merge(split(x, order), order, height, width), num_routes(order) * x)


@pytest.mark.parametrize("order", ORDERS)
def test_autograd_of_split_is_merge(order):
    x = torch.randn(2, 3, 3, 5, requires_grad=True)
    y = torch.randn(2, num_routes(order), 3, 15)
    (grad,) = torch.autograd.grad(split(x, order), x, y)
    torch.testing.assert_close(grad, merge(y, order, 3, 5))


@pytest.mark.parametrize("order", ["bidir", "cross2d"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_adjoint_pair_matches_plain_autograd_and_finite_differences(order, channels_last):
    """split / merge's backward (each the other) against autograd of the copies and flips themselves,
    and against finite differences (gradcheck, and gradgradcheck for the backward's own backward)."""
    shape = (2, 3, 5, 3) if channels_last else (2, 3, 3, 5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    k = num_routes(order)
    y = torch.randn(
        (2, k, 15, 3) if channels_last else (2, k, 3, 15), dtype=torch.float64, requires_grad=True
    )
    routes = split(x, order, channels_last=channels_last)
    torch.testing.assert_close(
        routes, routes_reference(x, order, channels_last=channels_last), rtol=0, atol=0
    )
    dy = torch.randn_like(routes)
    torch.testing.assert_close(
        torch.autograd.grad(routes, x, dy)[0],
        torch.autograd.grad(routes_reference(x, order, channels_last=channels_last), x, dy)[0],
    )
    merged = merge(y, order, 3, 5, channels_last=channels_last)
    dm = torch.randn_like(merged)
    torch.testing.assert_close(
        torch.autograd.grad(merged, y, dm)[0],
        torch.autograd.grad(merge_reference(y, order, 3, 5, channels_last=channels_last), y, dm)[0],
    )
    for fn, arg in (
        (lambda t: split(t, order, channels_last=channels_last), x),
        (lambda t: merge(t, order, 3, 5, channels_last=channels_last), y),
    ):
        assert torch.autograd.gradcheck(fn, (arg,))
        assert torch.autograd.gradgradcheck(fn, (arg,))


@pytest.mark.parametrize("order", ORDERS)
def test_named_functions_match_dispatch(order):
    x = torch.randn(1, 2, 3, 5)
    named_split = getattr(scan_orders, f"{order}_split")
    named_merge = getattr(scan_orders, f"{order}_merge")
    assert torch.equal(named_split(x), split(x, order))
    y = split(x, order)
    assert torch.equal(named_merge(y, 3, 5), merge(y, order, 3, 5))


@pytest.mark.parametrize("order", ORDERS)
def test_channels_last_layout_matches_channel_first(order):
    x = torch.randn(2, 4, 3, 5)
    routes = split(x, order)
    routes_cl = split(x.permute(0, 2, 3, 1), order, channels_last=True)
    assert routes_cl.shape == (2, num_routes(order), 15, 4)
    torch.testing.assert_close(routes_cl, routes.transpose(-1, -2))
    merged_cl = merge(routes_cl, order, 3, 5, channels_last=True)
    torch.testing.assert_close(merged_cl, merge(routes, order, 3, 5).permute(0, 2, 3, 1))


@pytest.mark.parametrize("order", ORDERS)
def test_channels_last_memory_format_gives_the_same_routes(order):
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(split(x.contiguous(memory_format=torch.channels_last), order), split(x, order))


@pytest.mark.parametrize("order", ["bidir", "cross2d"])
def test_channels_last_routes_are_token_major(order):
    """(B, K, L, C) routes in (B, L, K, C) memory: flattening K and C of the (B, K, C, L) transpose is a
    view with the dims unit-stride, the layout the channel-last conv1d and the cpu scan read; merge's
    backward writes its gradient the same way."""
    bhwc = torch.randn(2, 3, 5, 4, requires_grad=True)
    routes = split(bhwc, order, channels_last=True)
    flat = routes.transpose(2, 3).flatten(1, 2)
    assert flat.data_ptr() == routes.data_ptr() and flat.stride(1) == 1
    seq = torch.randn(2, num_routes(order), 15, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(merge(seq, order, 3, 5, channels_last=True).sum(), seq)
    assert grad.transpose(1, 2).is_contiguous()


def test_causal_split_is_a_view_in_both_layouts():
    x = torch.randn(2, 4, 3, 5)
    assert split(x, "causal").data_ptr() == x.data_ptr()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert split(x_cl, "causal")._base is x_cl
    bhwc = x.permute(0, 2, 3, 1).contiguous()
    assert split(bhwc, "causal", channels_last=True)._base is bhwc


def test_routes_flatten_to_selective_scan_layout_without_copy():
    routes = split(torch.randn(2, 4, 3, 5), "cross2d")
    assert routes.is_contiguous()
    assert routes.flatten(1, 2).data_ptr() == routes.data_ptr()


def test_unknown_order_lists_valid_ones():
    with pytest.raises(ValueError, match=r"order must be one of \('causal', 'bidir', 'cross2d'\).*'zigzag'"):
        split(torch.randn(1, 1, 2, 2), "zigzag")
    with pytest.raises(ValueError, match="'zigzag'"):
        merge(torch.randn(1, 1, 1, 4), "zigzag", 2, 2)
    with pytest.raises(ValueError, match="'zigzag'"):
        num_routes("zigzag")


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 4, 5, 6)])
def test_split_of_a_non_map_names_the_shape(shape):
    with pytest.raises(ValueError, match=r"x must be a \(B, C, H, W\) map") as err:
        split(torch.randn(shape), "cross2d")
    assert str(shape) in str(err.value)


@pytest.mark.parametrize(
    ("y_shape", "height", "width", "match"),
    [
        ((2, 3, 4, 15), 3, 5, r"K=4 routes.*\(2, 3, 4, 15\)"),  # wrong K
        ((2, 4, 3, 16), 3, 5, r"L=height\*width=3\*5=15.*\(2, 4, 3, 16\)"),  # wrong L
        ((2, 4, 15), 3, 5, r"y must be a \(B, K, C, L\).*\(2, 4, 15\)"),  # wrong rank
        ((2, 4, 3, 15), 0, 5, r"height and width must be positive"),
    ],
)
def test_merge_of_wrong_shape_names_it(y_shape, height, width, match):
    with pytest.raises(ValueError, match=match):
        merge(torch.randn(y_shape), "cross2d", height, width)


@pytest.mark.parametrize("order", ["bidir", "cross2d"])
def test_traces_under_torch_compile_with_gradients(order):
    x = torch.randn(2, 3, 3, 5, requires_grad=True)
    compiled = torch.compile(
        lambda t: merge(split(t, order) * 2, order, 3, 5), backend="aot_eager", fullgraph=True
    )
    out = compiled(x)
    torch.testing.assert_close(out, 2 * num_routes(order) * x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, torch.full_like(x, 2.0 * num_routes(order)))
