"""Scan orders: turn a 2-D map into K token sequences ("routes") and merge K outputs back.

An order names the routes a sequence mixer (selective scan, causal attention) runs over a map:

=========  ===  ==================================================================================
order       K   routes, in this index order
=========  ===  ==================================================================================
causal      1   row-major (left to right, top to bottom)
bidir       2   row-major, row-major reversed (Vim)
cross2d     4   row-major, column-major, row-major reversed, column-major reversed (VMamba SS2D's
                CrossScan / CrossMerge)
=========  ===  ==================================================================================

``split(x, order)`` maps (B, C, H, W) to (B, K, C, H*W); ``merge(y, order, height, width)`` maps each
route's sequence back to its pixel and sums the K routes, giving (B, C, H, W). ``merge`` is the adjoint
(transpose) of ``split``, so ``merge(split(x)) == K * x`` and autograd of one is the other. Both are
built from flatten / transpose / flip, so ``torch.compile`` and any device work; the multi-route
orders' ``split`` and ``merge`` are one ``torch.autograd.Function`` pair whose backward is the other
(their adjoint), not autograd of the copies into slices, whose backward zero-fills a full (B, K, C, L)
gradient and copies it slice by slice (about 4 % of a cross-2d train step on CPU).
For the selective scan, ``split(x, order).flatten(1, 2)`` gives its (batch, K * C, L) layout as a view.

Channels-last callers: pass ``channels_last=True`` to work on (B, H, W, C) maps and (B, K, H*W, C)
sequences (token layout for attention) without permuting to channel-first and back. Cost: causal
``split`` is a view (no copy) in either layout, and so is a (B, C, H, W) input in
``torch.channels_last`` memory format; the other orders write each route once (plus one temporary for
the reversed routes, as ``flip`` cannot be a view); ``merge`` reads each route once. Outputs of
``split`` are contiguous (B, K, C, L) tensors, except the causal view; with ``channels_last=True`` they
are (B, K, L, C) views of token-major (B, L, K, C) memory, so that ``.transpose(2, 3).flatten(1, 2)``
is a (B, K * C, L) channel-last view (the layout causal conv1d and the ``cpu`` scan read as it is).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "ORDERS",
    "bidir_merge",
    "bidir_split",
    "causal_merge",
    "causal_split",
    "cross2d_merge",
    "cross2d_split",
    "merge",
    "merge_reference",
    "num_routes",
    "routes_reference",
    "split",
]

ORDERS = ("causal", "bidir", "cross2d")
_NUM_ROUTES = {"causal": 1, "bidir": 2, "cross2d": 4}


def num_routes(order: str) -> int:
    """Number of sequences K an order makes from one map: causal 1, bidir 2, cross2d 4."""
    _check_order(order)
    return _NUM_ROUTES[order]


# --------------------------------------------------------------------------- checks and layout helpers


def _check_order(order: str) -> None:
    if order not in _NUM_ROUTES:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def _check_map(x: Tensor, channels_last: bool) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        layout = "(B, H, W, C)" if channels_last else "(B, C, H, W)"
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a {layout} map, got shape {shape}")


def _check_sequences(y: Tensor, routes: int, height: int, width: int, channels_last: bool) -> None:
    layout = "(B, K, L, C)" if channels_last else "(B, K, C, L)"
    if not (isinstance(height, int) and isinstance(width, int) and height >= 1 and width >= 1):
        raise ValueError(f"height and width must be positive integers, got {height!r} and {width!r}")
    if not isinstance(y, Tensor) or y.dim() != 4:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be a {layout} tensor of sequences, got shape {shape}")
    length = y.shape[2] if channels_last else y.shape[3]
    if y.shape[1] != routes or length != height * width:
        raise ValueError(
            f"y must be {layout} with K={routes} routes and L=height*width={height}*{width}="
            f"{height * width}, got shape {tuple(y.shape)}"
        )


def _seq_dim(channels_last: bool) -> int:
    """Dimension of L in a (B, K, C, L) / (B, K, L, C) stack."""
    return -2 if channels_last else -1


def _rows(x: Tensor, channels_last: bool) -> Tensor:
    """Row-major sequence of a map: (B, C, L) or (B, L, C); a view whenever strides allow."""
    return x.flatten(1, 2) if channels_last else x.flatten(2, 3)


def _columns(x: Tensor, channels_last: bool) -> Tensor:
    """Column-major sequence of a map: (B, C, L) or (B, L, C)."""
    return x.transpose(1, 2).flatten(1, 2) if channels_last else x.transpose(2, 3).flatten(2, 3)


def _unrows(s: Tensor, height: int, width: int, channels_last: bool) -> Tensor:
    """Inverse of ``_rows``: a row-major sequence back to a map (a view)."""
    return s.unflatten(1, (height, width)) if channels_last else s.unflatten(-1, (height, width))


def _uncolumns(s: Tensor, height: int, width: int, channels_last: bool) -> Tensor:
    """Inverse of ``_columns``: a column-major sequence back to a map (a view)."""
    if channels_last:
        return s.unflatten(1, (width, height)).transpose(1, 2)
    return s.unflatten(-1, (width, height)).transpose(-2, -1)


# --------------------------------------------------------------------------- the orders


def causal_split(x: Tensor, *, channels_last: bool = False) -> Tensor:
    """Row-major route, K=1: (B, C, H, W) -> (B, 1, C, H*W). A view when the map's strides allow it."""
    _check_map(x, channels_last)
    return _rows(x, channels_last).unsqueeze(1)


def causal_merge(y: Tensor, height: int, width: int, *, channels_last: bool = False) -> Tensor:
    """Adjoint of ``causal_split``: (B, 1, C, H*W) -> (B, C, H, W) (a view)."""
    _check_sequences(y, 1, height, width, channels_last)
    return _unrows(y[:, 0], height, width, channels_last)


def bidir_split(x: Tensor, *, channels_last: bool = False) -> Tensor:
    """Row-major and reversed row-major routes (Vim), K=2: (B, C, H, W) -> (B, 2, C, H*W)."""
    _check_map(x, channels_last)
    return _Split.apply(x, "bidir", channels_last)


def _bidir_routes(x: Tensor, channels_last: bool) -> Tensor:
    return _with_reversed((_rows(x, channels_last),), channels_last)


def bidir_merge(y: Tensor, height: int, width: int, *, channels_last: bool = False) -> Tensor:
    """Adjoint of ``bidir_split``: route 0 plus route 1 reversed, (B, 2, C, H*W) -> (B, C, H, W)."""
    _check_sequences(y, 2, height, width, channels_last)
    return _Merge.apply(y, "bidir", height, width, channels_last)


def _bidir_sum(y: Tensor, height: int, width: int, channels_last: bool) -> Tensor:
    seq = y[:, 0] + y[:, 1].flip(_seq_dim(channels_last))
    return _unrows(seq, height, width, channels_last)


def cross2d_split(x: Tensor, *, channels_last: bool = False) -> Tensor:
    """VMamba's four routes, K=4: row-major, column-major, and the two reversed. -> (B, 4, C, H*W)."""
    _check_map(x, channels_last)
    return _Split.apply(x, "cross2d", channels_last)


def _cross2d_routes(x: Tensor, channels_last: bool) -> Tensor:
    return _with_reversed((_rows(x, channels_last), _columns(x, channels_last)), channels_last)


def cross2d_merge(y: Tensor, height: int, width: int, *, channels_last: bool = False) -> Tensor:
    """Adjoint of ``cross2d_split`` (VMamba's CrossMerge): (B, 4, C, H*W) -> (B, C, H, W)."""
    _check_sequences(y, 4, height, width, channels_last)
    return _Merge.apply(y, "cross2d", height, width, channels_last)


def _cross2d_sum(y: Tensor, height: int, width: int, channels_last: bool) -> Tensor:
    pair = y[:, 0:2] + y[:, 2:4].flip(_seq_dim(channels_last))
    return _unrows(pair[:, 0], height, width, channels_last) + _uncolumns(
        pair[:, 1], height, width, channels_last
    )


def _with_reversed(routes: tuple[Tensor, ...], channels_last: bool) -> Tensor:
    """Stack k routes and then the same k reversed along L: k x (B, ., .) -> (B, 2k, ., .).

    Writes into one fresh tensor (as VMamba's CrossScan does) instead of stack + cat, which would
    write the forward routes twice; ``copy_`` into slices is differentiable, so autograd still works.
    """
    k = len(routes)
    first = routes[0]
    if channels_last:  # (B, 2k, L, C) in token-major memory: see the module docstring
        out = first.new_empty((first.shape[0], first.shape[1], 2 * k, first.shape[2])).transpose(1, 2)
    else:
        out = first.new_empty((first.shape[0], 2 * k, *first.shape[1:]))
    for i, route in enumerate(routes):
        out[:, i].copy_(route)
    out[:, k:].copy_(out[:, :k].flip(_seq_dim(channels_last)))
    return out


# --------------------------------------------------------------------------- the adjoint pair
# The differentiable implementations above, by order; ``routes_reference`` / ``merge_reference`` expose
# them (plain autograd through the copies) for the tests that check the pair against them.
_ROUTES = {"bidir": _bidir_routes, "cross2d": _cross2d_routes}
_SUMS = {"bidir": _bidir_sum, "cross2d": _cross2d_sum}


class _Split(torch.autograd.Function):
    """A multi-route ``split`` whose backward is ``merge`` (its adjoint), itself differentiable."""

    @staticmethod
    def forward(x: Tensor, order: str, channels_last: bool) -> Tensor:
        return _ROUTES[order](x, channels_last)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, ctx.order, ctx.channels_last = inputs
        ctx.height, ctx.width = (x.shape[1], x.shape[2]) if ctx.channels_last else (x.shape[2], x.shape[3])

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():  # create_graph: the gradient must be differentiable in turn
            return _Merge.apply(grad, ctx.order, ctx.height, ctx.width, ctx.channels_last), None, None
        return _SUMS[ctx.order](grad, ctx.height, ctx.width, ctx.channels_last), None, None


class _Merge(torch.autograd.Function):
    """A multi-route ``merge`` whose backward is ``split`` (its adjoint), itself differentiable."""

    @staticmethod
    def forward(y: Tensor, order: str, height: int, width: int, channels_last: bool) -> Tensor:
        return _SUMS[order](y, height, width, channels_last)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ctx.order, _, _, ctx.channels_last = inputs

    @staticmethod
    def backward(ctx, grad: Tensor):
        if torch.is_grad_enabled():  # create_graph: the gradient must be differentiable in turn
            return _Split.apply(grad, ctx.order, ctx.channels_last), None, None, None, None
        return _ROUTES[ctx.order](grad, ctx.channels_last), None, None, None, None


def routes_reference(x: Tensor, order: str, *, channels_last: bool = False) -> Tensor:
    """``split`` through plain autograd of its copies (no adjoint pair): the tests' reference."""
    _check_order(order)
    if order == "causal":
        return causal_split(x, channels_last=channels_last)
    _check_map(x, channels_last)
    return _ROUTES[order](x, channels_last)


def merge_reference(y: Tensor, order: str, height: int, width: int, *, channels_last: bool = False) -> Tensor:
    """``merge`` through plain autograd of its flips and sums (no adjoint pair): the tests' reference."""
    _check_order(order)
    if order == "causal":
        return causal_merge(y, height, width, channels_last=channels_last)
    _check_sequences(y, num_routes(order), height, width, channels_last)
    return _SUMS[order](y, height, width, channels_last)


# --------------------------------------------------------------------------- dispatch by name

_SPLITS = {"causal": causal_split, "bidir": bidir_split, "cross2d": cross2d_split}
_MERGES = {"causal": causal_merge, "bidir": bidir_merge, "cross2d": cross2d_merge}


def split(x: Tensor, order: str, *, channels_last: bool = False) -> Tensor:
    """(B, C, H, W) -> (B, K, C, H*W) along the routes of ``order`` (see ``ORDERS``).

    With ``channels_last=True``: (B, H, W, C) -> (B, K, H*W, C).
    """
    _check_order(order)
    return _SPLITS[order](x, channels_last=channels_last)


def merge(y: Tensor, order: str, height: int, width: int, *, channels_last: bool = False) -> Tensor:
    """(B, K, C, H*W) -> (B, C, H, W): each route mapped back to its pixels, the K routes summed.

    The adjoint of ``split``. With ``channels_last=True``: (B, K, H*W, C) -> (B, H, W, C).
    """
    _check_order(order)
    return _MERGES[order](y, height, width, channels_last=channels_last)
