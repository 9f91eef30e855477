"""Sequence operators: the token mixer that sits on the conv channels of a Gated CNN block.

MambaOut's Figure 1 is the spec: the Mamba block is the Gated CNN block with an SSM as its token
operator. So one block (``visbench.backbones.blocks.GatedBlock``) takes one of these operators, picked with
plain keywords::

    create_sequence_operator("conv", "full", dim)      # depthwise 7x7: the Gated CNN / MambaOut
    create_sequence_operator("ssm", "cross2d", dim)    # Mamba's selective SSM along 4 routes (VMamba SS2D)
    create_sequence_operator("attn", "causal", dim)    # multi-head self-attention, causal mask

Every operator maps a channels-last map ``(B, H, W, C)`` to the same shape; an ``H = 1`` map is a
1-D sequence. Orders say how the 2-D map is read as sequences (``visbench.kernels.scan_orders``):
``causal`` (one row-major route), ``bidir`` (row-major forward and backward, as Vim),
``cross2d`` (row- and column-major, each both ways, as VMamba's SS2D) and, for the operators that
are not scans, ``full`` (every token sees every token).

The SSM and attention operators share their front: a route-wise causal depthwise conv1d
(width 4) + SiLU, as in Mamba. So ``ssm`` and ``attn`` differ only in the operator that follows.
Neither includes the 7x7 depthwise conv of ``conv``, which is not causal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from visbench.backbones.param_tags import exclude_from_weight_decay
from visbench.kernels import causal_conv1d, reads_strided, scan_orders, selective_scan

__all__ = [
    "MIXER_ORDERS",
    "SHORT_SEQUENCE",
    "AttentionOperator",
    "DepthwiseConvOperator",
    "SelectiveScanOperator",
    "create_sequence_operator",
    "default_order",
    "route_projection",
]

# mixer -> the orders it supports; the first is its default.
MIXER_ORDERS: dict[str, tuple[str, ...]] = {
    "conv": ("full",),
    "ssm": ("cross2d", "bidir", "causal"),
    "attn": ("full", "causal"),
}

# order -> the scan_orders route set used by the conv1d front (attention reads tokens row-major).
_FRONT_ROUTES = {"causal": "causal", "bidir": "bidir", "cross2d": "cross2d", "full": "causal"}


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class DepthwiseConvOperator(nn.Module):
    """Depthwise k x k conv: the token mixer of the Gated CNN block (MambaOut). Not causal."""

    def __init__(self, dim: int, order: str = "full", kernel_size: int = 7) -> None:
        super().__init__()
        self.order = order
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _channels_last(self.conv(_channels_first(x)))


class RouteConvFront(nn.Module):
    """Mamba's causal depthwise conv1d + SiLU, applied along each route of ``order``.

    Input ``(B, H, W, C)``; output ``(B, K, C, L)`` with ``K`` routes and ``L = H * W``, each route
    with its own conv weights. ``channel_last`` picks the memory the routes are written in: token-major
    ``(B, L, K, C)`` (dims unit-stride: what the ``cpu`` scan and conv1d read fastest) or rows
    ``(B, K, C, L)`` (what the GPU kernels read); the values are the same. A causal order is a view of
    the map either way.
    """

    def __init__(self, dim: int, order: str, d_conv: int = 4) -> None:
        super().__init__()
        self.routes = _FRONT_ROUTES[order]
        self.num_routes = scan_orders.num_routes(self.routes)
        channels = self.num_routes * dim
        self.weight = nn.Parameter(torch.empty(channels, d_conv))
        self.bias = nn.Parameter(torch.empty(channels))
        bound = 1.0 / math.sqrt(d_conv)  # nn.Conv1d's default init for a depthwise conv
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, channel_last: bool = True) -> torch.Tensor:
        if channel_last:
            xs = scan_orders.split(x, self.routes, channels_last=True).transpose(2, 3)
        else:
            xs = scan_orders.split(_channels_first(x), self.routes)
        routes = xs.shape[1]  # (B, K, C, L), either memory; flattening K and C is a view of both
        xs = causal_conv1d(xs.flatten(1, 2), self.weight, self.bias, "silu")
        return xs.unflatten(1, (routes, -1))


# Row-layout sequences longer than this take the B * K GEMMs in route_projection.
SHORT_SEQUENCE = 16


def route_projection(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-route projection ``out[b, k] = weight[k] @ x[b, k]``: (K, O, I) x (B, K, I, L) -> (B, K, O, L).

    The output follows the input's layout. Rows (L unit-stride, longer than SHORT_SEQUENCE): B * K
    GEMMs of O x I x L, output rows too (what the GPU scans read). Otherwise (channel-last tokens, or
    short rows: a hierarchical model's last stages): one GEMM per route over all B * L tokens, the
    output a view of route-major (K, B, L, O) memory, dims unit-stride, which the ``cpu`` scan reads
    as it is. B * K GEMMs with few columns run far below the GEMM rate: measured at one thread, fwd +
    bwd, B 128, K 4: L = 4, I = 64: 3.5 -> 0.7 ms; L = 1, I = 96: 7.4 -> 0.3 ms.
    """
    batch, routes, _, length = x.shape
    if x.stride(-1) == 1 and length > SHORT_SEQUENCE:
        return torch.matmul(weight, x)
    tokens = x.permute(1, 0, 3, 2).reshape(routes, batch * length, x.shape[2])  # a view unless rows
    out = torch.bmm(tokens, weight.transpose(1, 2))  # (K, B * L, O)
    return out.view(routes, batch, length, -1).permute(1, 0, 3, 2)


class SelectiveScanOperator(nn.Module):
    """Mamba's selective SSM along the routes of ``order``, all routes in one scan call.

    Per route: causal conv1d + SiLU, ``x_proj`` to ``(dt, B, C)``, ``dt_proj`` with Mamba's dt bias
    init, ``A = -exp(A_log)`` with ``A_log = log(1..N)``, ``D = 1``. The K routes go to one
    ``selective_scan`` as ``u (b, K*C, L)`` with grouped ``B``/``C`` ``(b, K, N, L)`` (as VMamba);
    route outputs are merged back onto the map and averaged (Vim's ``if_devide_out``), so the output
    scale does not depend on the order.
    """

    def __init__(
        self,
        dim: int,
        order: str = "cross2d",
        d_state: int = 16,
        dt_rank: int | None = None,
        d_conv: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.order = order
        self.d_state = d_state
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(dim / 16)
        self.backend = backend
        self.front = RouteConvFront(dim, order, d_conv)
        k, r, n = self.front.num_routes, self.dt_rank, d_state

        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, dim))
        nn.init.uniform_(self.x_proj_weight, -(dim**-0.5), dim**-0.5)  # nn.Linear's default bound
        self.dt_proj_weight = nn.Parameter(torch.empty(k, dim, r))
        nn.init.uniform_(self.dt_proj_weight, -(r**-0.5), r**-0.5)  # Mamba: dt_init="random", dt_scale=1
        # dt bias: softplus(bias) is log-uniform in [dt_min, dt_max] (Mamba's inverse-softplus init)
        dt = torch.exp(torch.rand(k * dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_proj_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * dim, 1))
        self.D = nn.Parameter(torch.ones(k * dim))
        exclude_from_weight_decay(self.A_log, self.D)  # as Mamba: the state matrix and skip are not decayed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        # The layout the scan's back end reads best: channel-last and route-major views for `cpu`,
        # rows for the GPU kernels. The same values either way (tests/test_mixers.py).
        xs = self.front(x, channel_last=reads_strided(x.device, self.backend))  # (B, K, C, L)
        k, r, n = xs.shape[1], self.dt_rank, self.d_state
        x_dbl = route_projection(self.x_proj_weight, xs)  # (B, K, R + 2N, L)
        dts, bs, cs = torch.split(x_dbl, [r, n, n], dim=2)
        dts = route_projection(self.dt_proj_weight, dts)  # (B, K, C, L)
        y = selective_scan(  # grouped (B, K, C, L) views; B, C copied at most once (`cpu`: in place)
            xs,
            dts,
            -torch.exp(self.A_log.float()),
            bs,
            cs,
            self.D.float(),
            delta_bias=self.dt_proj_bias.float(),
            delta_softplus=True,
            backend=self.backend,
        )
        y = scan_orders.merge(y.transpose(2, 3).to(x.dtype), self.front.routes, h, w, channels_last=True)
        return y / k if k > 1 else y


class AttentionOperator(nn.Module):
    """Multi-head self-attention (SDPA) over the row-major tokens, behind the same conv1d front.

    ``order="full"``: every token attends to every token; ``"causal"``: token t attends to
    tokens <= t in row-major order. Heads have ``head_dim`` channels (32, as Swin/VMamba), or
    one head when ``dim < head_dim``. The output projection is the block's ``fc2``.
    """

    def __init__(
        self, dim: int, order: str = "full", head_dim: int = 32, d_conv: int = 4, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        self.order = order
        self.num_heads = max(1, dim // head_dim)
        if dim % self.num_heads:
            raise ValueError(f"dim={dim} is not divisible into {self.num_heads} heads of head_dim={head_dim}")
        self.front = RouteConvFront(dim, order, d_conv)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        tokens = self.front(x)[:, 0].transpose(1, 2)  # (B, L, C), row-major
        q, k, v = self.qkv(tokens).view(b, h * w, 3, self.num_heads, c // self.num_heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=self.order == "causal"
        )
        return y.transpose(1, 2).reshape(b, h, w, c)


_OPERATORS: dict[str, type[nn.Module]] = {
    "conv": DepthwiseConvOperator,
    "ssm": SelectiveScanOperator,
    "attn": AttentionOperator,
}


def default_order(mixer: str) -> str:
    """The order a mixer uses when none is given (``conv``: full, ``ssm``: cross2d, ``attn``: full)."""
    _check_mixer(mixer)
    return MIXER_ORDERS[mixer][0]


def _check_mixer(mixer: str) -> None:
    if mixer not in MIXER_ORDERS:
        raise ValueError(f"unknown mixer={mixer!r}; valid mixers: {', '.join(MIXER_ORDERS)}")


def create_sequence_operator(mixer: str, order: str | None, dim: int, **kwargs) -> nn.Module:
    """Build the token operator ``mixer`` reading tokens in ``order``; ``(B, H, W, dim)`` in and out.

    ``order=None`` takes the mixer's default. Extra keywords go to the operator class
    (``kernel_size`` for conv; ``d_state``, ``dt_rank``, ``d_conv``, ``backend`` for ssm;
    ``head_dim``, ``d_conv`` for attn).
    """
    _check_mixer(mixer)
    order = order if order is not None else default_order(mixer)
    if order not in MIXER_ORDERS[mixer]:
        valid = ", ".join(f"{m}: {'/'.join(o)}" for m, o in MIXER_ORDERS.items())
        raise ValueError(f"order={order!r} is not valid for mixer={mixer!r}; valid (mixer: orders): {valid}")
    return _OPERATORS[mixer](dim, order=order, **kwargs)
