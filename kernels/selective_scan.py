"""Selective scan with mamba-ssm's ``selective_scan_fn`` semantics, behind several back ends.

``selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
return_last_state=False, *, backend="auto")`` is a drop-in for
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` (real case):

    dt_t  = softplus(delta_t + delta_bias)      (softplus only when delta_softplus)
    x_t   = exp(dt_t * A) * x_{t-1} + dt_t * B_t * u_t      x_{-1} = 0, per (batch, dim, state)
    y_t   = <C_t, x_t> + D * u_t
    out_t = y_t * silu(z_t)                      (when z is given)

Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L), grouped (batch, G, N, L) with dim
split into G consecutive groups, or constant (dim, N); D, delta_bias (dim,). An extension of
mamba-ssm's shapes: u, delta, z may also come grouped, (batch, G, dim / G, L), each group in strides of
its own (a multi-route mixer's route-major projections), and ``out`` then has that shape too; a back end
that reads strides (``cpu``) takes such views as they are, the others get them flattened to (batch, dim,
L) (a copy where the strides need one). Inputs may be float32,
float16, bfloat16 or float64 (each input its own dtype; computation is float32, or float64 when u is
float64 and the back end supports it: ``ref`` and ``cpu``). ``out`` has u's dtype (as mamba's CUDA
kernel); ``last_state`` (batch, dim, N) is float32 (float64 in that case). Every input gets a gradient
in its own dtype. As in mamba-ssm's CUDA path, ``last_state`` is not differentiable: it is marked so,
and back-propagating through it alone raises. A complex A is not supported.

Back ends: ``ref`` (sequential definition, the source of truth), ``cpu`` (fused numba kernels with a
recomputing backward; a pure-PyTorch chunked fallback without numba), ``triton`` (GPU, or CPU under
``TRITON_INTERPRET=1``), ``cuda`` (mamba-ssm's kernel), ``auto``: on CUDA cuda, then triton, then
ref; on CPU cpu, then ref. With ``backend="auto"`` the environment variable ``VISBENCH_SCAN_BACKEND``
forces one; an explicit ``backend=`` argument wins over it. :func:`resolve_backend` says which runs.

The op is ``torch.ops.visbench.selective_scan_fwd`` (a ``torch.library`` custom op with a fake
implementation, autograd through ``torch.ops.visbench.selective_scan_bwd``, and FLOP formulas for
``torch.utils.flop_counter``), so FlopCounterMode and ``torch.compile(fullgraph=True)`` see one node.

Back-end contract (``visbench.kernels.scan_cpu``, ``.scan_triton``, ``.scan_cuda``; ``ref`` is
called directly, since it differentiates by autograd, which is off inside a custom op), module-level
functions:

    is_available(device: torch.device) -> bool          # never raises
    selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool) -> (out, last_state)
    selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool)
        -> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)   # None for an input that was None

A back end whose module sets ``SAVES_STATES = True`` also has ``saved_states_shape(batch, dim, L, N)``,
and, when a gradient will be needed, its forward is called with ``save_states=True`` and returns a third
tensor of that shape, which the op keeps and hands to its backward as ``saved_states=`` (the ``cpu``
one saves the state at every checkpoint of its backward, as mamba-ssm's CUDA forward saves its chunk
states, so that the backward does not walk the forward again).

Inputs are normalised by this front end: float32 (float64 only for a back end whose module sets
``SUPPORTS_FLOAT64 = True`` and float64 u), contiguous (left in their strides for a back end whose
module sets ``STRIDED_INPUTS = True``: it reads any layout, and copies what it cannot use as it is;
``dout`` too); u, delta, z: (b, d, l); A: (d, n); B, C:
ALWAYS grouped (b, g, n, l) (g=1 for the ungrouped case; B and C with the same g; a grouped u's G divides
g, and u, delta, z come (b, G, d/G, l) only to a back end with ``STRIDED_INPUTS``); D, delta_bias:
(d,) or None; z may be None.
out (b, d, l) includes the D skip and the z gate silu(z) * y exactly as mamba; last_state (b, d, n).
Gradients come back in the compute dtype with the normalised shapes; this front end reshapes and casts
them back (dB of an ungrouped B as (b, n, l)) through ordinary autograd of its casts and reshapes.
"""

import functools
import importlib
import math
import os
from types import ModuleType

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula
from visbench.kernels import scan_ref
from visbench.kernels.layouts import in_layout_of

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "available_backends",
    "reads_strided",
    "resolve_backend",
    "selective_scan",
]

BACKENDS = ("ref", "cpu", "triton", "cuda")
BACKEND_ENV = "VISBENCH_SCAN_BACKEND"
_MODULES = {
    "ref": "visbench.kernels.scan_ref",
    "cpu": "visbench.kernels.scan_cpu",
    "triton": "visbench.kernels.scan_triton",
    "cuda": "visbench.kernels.scan_cuda",
}
# Preference of `auto` per device type; `ref` runs everywhere and ends every list.
_AUTO_ORDER = {"cuda": ("cuda", "triton", "ref"), "cpu": ("cpu", "ref")}
_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------- back-end choice


@functools.cache
def _backend_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError:  # e.g. triton not installed: that back end is simply unavailable
        return None


def _is_available(name: str, device: torch.device) -> bool:
    module = _backend_module(name)
    if module is None:
        return False
    try:
        return bool(module.is_available(device))
    except Exception:
        return False


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Back ends that can run tensors on ``device``, fastest first (the order `auto` tries)."""
    device = torch.device(device)
    order = _AUTO_ORDER.get(device.type, ("ref",))
    ordered = list(order) + [name for name in BACKENDS if name not in order]
    return [name for name in ordered if _is_available(name, device)]


def resolve_backend(device: torch.device | str, backend: str = "auto") -> str:
    """The back end that ``selective_scan(..., backend=backend)`` runs for tensors on ``device``.

    Raises ValueError for an unknown name, or one that cannot run on ``device``.
    """
    device = torch.device(device)
    if backend not in (*BACKENDS, "auto"):
        raise ValueError(f"selective_scan: backend={backend!r}; expected one of {(*BACKENDS, 'auto')}")
    if device.type == "meta":
        # Shapes only: the custom op's fake implementation runs whatever the back end, so meta
        # tensors go through the op (and FlopCounterMode sees its formula) rather than through ref.
        return "cpu" if backend in ("auto", "ref") else backend
    source = f"backend={backend!r}"
    if backend == "auto":
        forced = os.environ.get(BACKEND_ENV, "").strip().lower()
        if forced and forced != "auto":
            if forced not in BACKENDS:
                raise ValueError(f"selective_scan: {BACKEND_ENV}={forced!r}; expected one of {BACKENDS}")
            backend, source = forced, f"{BACKEND_ENV}={forced!r}"
    if backend == "auto":
        for name in _AUTO_ORDER.get(device.type, ("ref",)):
            if _is_available(name, device):
                return name
        return "ref"
    if not _is_available(backend, device):
        hints = {
            "cuda": "it needs CUDA tensors and mamba-ssm's compiled selective_scan_cuda",
            "triton": "it needs CUDA tensors and triton (or TRITON_INTERPRET=1 on CPU)",
            "cpu": "it needs CPU tensors",
        }
        raise ValueError(
            f"selective_scan: {source} is not available for tensors on {device} ({hints.get(backend, '')}); "
            f"available here: {available_backends(device)}"
        )
    return backend


# Under torch.compile the choice is made once, at trace time (it reads the environment and imports
# back-end modules, which Dynamo does not trace), and baked into the graph.
@torch.compiler.assume_constant_result
def _resolve_constant(device: torch.device, backend: str) -> str:
    return resolve_backend(device, backend)


@torch.compiler.assume_constant_result
def _supports_float64(name: str) -> bool:
    return bool(getattr(_backend_module(name), "SUPPORTS_FLOAT64", False))


@torch.compiler.assume_constant_result
def _strided_inputs(name: str) -> bool:
    """Whether back end ``name`` reads inputs of any strides (module flag ``STRIDED_INPUTS``)."""
    return bool(getattr(_backend_module(name), "STRIDED_INPUTS", False))


def reads_strided(device: torch.device | str, backend: str = "auto") -> bool:
    """Whether the back end ``selective_scan`` runs for tensors on ``device`` reads u, delta, z (and
    dout) in any strides, channel-last and grouped (b, G, d/G, L) views included, without copying them
    (the ``cpu`` back end). A caller can then hand it what its own ops write, instead of rows."""
    return _strided_inputs(_resolve_constant(torch.device(device), backend))


# ----------------------------------------------------------------------------- validation


def _check_tensor(name: str, t: object, ndims: tuple[int, ...], device: torch.device) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise ValueError(f"selective_scan: {name} has layout {t.layout}; only dense (strided) tensors")
    if t.is_complex():
        raise ValueError(f"selective_scan: {name} is complex ({t.dtype}); only the real case is supported")
    if t.dtype not in _DTYPES:
        raise ValueError(f"selective_scan: {name} has dtype {t.dtype}; expected one of {_DTYPES}")
    if t.device != device:
        raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {device}")
    if t.dim() not in ndims:
        raise ValueError(
            f"selective_scan: {name} must have {' or '.join(map(str, ndims))} dims, "
            f"got shape {tuple(t.shape)}"
        )


def _validate(u, delta, A, B, C, D, z, delta_bias) -> None:
    if not isinstance(u, Tensor):
        raise ValueError(f"selective_scan: u must be a torch.Tensor, got {type(u).__name__}")
    device = u.device
    _check_tensor("u", u, (3, 4), device)
    batch, length = u.shape[0], u.shape[-1]
    dim = math.prod(u.shape[1:-1])
    _check_tensor("A", A, (2,), device)
    if A.shape[0] != dim:
        raise ValueError(
            f"selective_scan: A must be (dim, N) = ({dim}, N), got {tuple(A.shape)} (u is {tuple(u.shape)})"
        )
    dstate = A.shape[1]
    for name, t in (("delta", delta), ("z", z)):
        if t is None and name == "z":
            continue
        _check_tensor(name, t, (u.dim(),), device)
        if t.shape != u.shape:
            raise ValueError(
                f"selective_scan: {name} must have u's shape {tuple(u.shape)}, got {tuple(t.shape)}"
            )
    for name, t in (("B", B), ("C", C)):
        _check_tensor(name, t, (2, 3, 4), device)
        if t.dim() == 2:
            expected = (dim, dstate)
        elif t.dim() == 3:
            expected = (batch, dstate, length)
        else:
            groups = t.shape[1]
            if groups < 1 or dim % groups:
                raise ValueError(
                    f"selective_scan: {name} {tuple(t.shape)} has {groups} groups, "
                    f"which do not divide dim={dim}"
                )
            expected = (batch, groups, dstate, length)
        if tuple(t.shape) != expected:
            raise ValueError(
                f"selective_scan: {name} must be (dim, N), (batch, N, L) or (batch, G, N, L); with u "
                f"{tuple(u.shape)} and A {tuple(A.shape)} expected {expected}, got {tuple(t.shape)}"
            )
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is None:
            continue
        _check_tensor(name, t, (1,), device)
        if t.shape[0] != dim:
            raise ValueError(f"selective_scan: {name} must be (dim,) = ({dim},), got {tuple(t.shape)}")


def _normalise_bc(t: Tensor, batch: int, length: int, dtype: torch.dtype, strided: bool) -> Tensor:
    """B or C -> (batch, G, N, L) in ``dtype``; a constant (dim, N) becomes G = dim groups.

    Contiguous unless ``strided`` (the back end reads strides: then a view wherever one exists).
    """
    t = t.to(dtype)
    if t.dim() == 2:
        t = t[None, :, :, None].expand(batch, -1, -1, length)
    elif t.dim() == 3:
        t = t.unsqueeze(1)
    return t if strided else t.contiguous()


# ----------------------------------------------------------------------------- the custom ops


# The (b, d, L) inputs whose outputs and gradients follow their layout (visbench.kernels.layouts): a
# channel-last u gives a channel-last out and du. The others' gradients are contiguous.
_LAYOUT_FOLLOWS = ("u", "delta", "z")
_INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _saves_states(name: str, save_states: bool) -> bool:
    return save_states and bool(getattr(_backend_module(name), "SAVES_STATES", False))


def _saved_states_shape(name: str, u: Tensor, A: Tensor, save_states: bool) -> tuple[int, ...]:
    """What back end ``name``'s forward saves for its backward ((0,): nothing)."""
    if not _saves_states(name, save_states):
        return (0,)
    return tuple(_backend_module(name).saved_states_shape(u.shape[0], A.shape[0], u.shape[-1], A.shape[1]))


@torch.library.custom_op("visbench::selective_scan_fwd", mutates_args=())
def _scan_fwd_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    save_states: bool,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, last_state, saved): saved is what a back end with ``SAVES_STATES`` keeps for its backward
    when ``save_states`` (a gradient will be needed), else an empty tensor."""
    module = _backend_module(backend)
    if _saves_states(backend, save_states):
        out, last_state, saved = module.selective_scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states=True
        )
    else:
        out, last_state = module.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        saved = u.new_empty(0)
    return in_layout_of(u, out.to(u.dtype)), last_state.to(u.dtype).contiguous(), saved


@_scan_fwd_op.register_fake
def _scan_fwd_fake(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save_states, backend):
    # The real outputs' strides: out in u's layout (visbench.kernels.layouts), the others contiguous.
    saved = u.new_empty(_saved_states_shape(backend, u, A, save_states))
    return torch.empty_like(u), u.new_empty(u.shape[0], A.shape[0], A.shape[1]), saved


@torch.library.custom_op("visbench::selective_scan_bwd", mutates_args=())
def _scan_bwd_op(
    dout: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
    saved: Tensor,
    backend: str,
) -> list[Tensor]:
    """Gradients for (u, delta, A, B, C, D, z, delta_bias); a (0,)-shaped tensor for an absent input.
    ``saved``: what the forward saved (empty: nothing)."""
    module = _backend_module(backend)
    if not getattr(module, "STRIDED_INPUTS", False):
        dout = dout.contiguous()
    kept = {"saved_states": saved} if saved.numel() else {}
    grads = module.selective_scan_bwd(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, **kept)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return [
        u.new_empty(0) if x is None else _grad_layout(name, x, g.to(x.dtype).reshape(x.shape))
        for name, g, x in zip(_INPUT_NAMES, grads, inputs, strict=True)
    ]


def _grad_layout(name: str, x: Tensor, grad: Tensor) -> Tensor:
    """Input ``name``'s gradient in its layout (u, delta, z) or contiguous (the rest)."""
    return in_layout_of(x, grad) if name in _LAYOUT_FOLLOWS else grad.contiguous()


@_scan_bwd_op.register_fake
def _scan_bwd_fake(dout, u, delta, A, B, C, D, z, delta_bias, delta_softplus, saved, backend):
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return [
        u.new_empty(0) if x is None else _grad_layout(name, x, x.new_empty(x.shape))
        for name, x in zip(_INPUT_NAMES, inputs, strict=True)
    ]


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, _, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend
    ctx.mark_non_differentiable(output[1], output[2])  # last_state as in mamba-ssm's CUDA path; saved


def _backward(ctx, dout, _dlast_state, _dsaved):
    u, delta, A, B, C, D, z, delta_bias, saved = ctx.saved_tensors
    grads = torch.ops.visbench.selective_scan_bwd(
        dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, saved, ctx.backend
    )
    present = (u, delta, A, B, C, D, z, delta_bias)
    return (*(None if x is None else g for g, x in zip(grads, present)), None, None, None)


_scan_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# FLOPs as mamba-ssm's authors count them (state-spaces/mamba issue #110, used by VMamba's
# flops_selective_scan_fn for fvcore): 9 * batch * L * dim * N for the recurrence and output
# (exp(dt A), dt B u, the state update, and <C, x>), plus batch * dim * L for the D skip and as much
# again for the z gate. softplus, casts and the bias add are not counted there, nor here.
def _forward_flops(u_shape, A_shape, has_D: bool, has_z: bool) -> int:
    batch, dim, length = u_shape[0], math.prod(u_shape[1:-1]), u_shape[-1]
    flops = 9 * batch * length * dim * A_shape[1]
    if has_D:
        flops += batch * dim * length
    if has_z:
        flops += batch * dim * length
    return flops


@register_flop_formula(torch.ops.visbench.selective_scan_fwd)
def _scan_fwd_flop(u, delta, A, B, C, D, z, delta_bias, *args, out_shape=None, **kwargs) -> int:
    return _forward_flops(u, A, D is not None, z is not None)


# Backward = 2 x forward, the same convention FlopCounterMode uses for matmuls (one product for
# each of the two operands' gradients): the adjoint recurrence costs about one forward, and the
# gradients of its inputs (dt, A, B, C, u) about another. Recomputation is not counted.
@register_flop_formula(torch.ops.visbench.selective_scan_bwd)
def _scan_bwd_flop(dout, u, delta, A, B, C, D, z, delta_bias, *args, out_shape=None, **kwargs) -> int:
    return 2 * _forward_flops(u, A, D is not None, z is not None)


# ----------------------------------------------------------------------------- public entry point


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba's selective scan; see the module docstring. Returns out, or (out, last_state)."""
    _validate(u, delta, A, B, C, D, z, delta_bias)
    name = _resolve_constant(u.device, backend)
    wide = u.dtype == torch.float64 and _supports_float64(name)
    dtype = torch.float64 if wide else torch.float32
    batch, length = u.shape[0], u.shape[-1]

    strided = _strided_inputs(name)
    grouped_u = u.dim() == 4

    def prep(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        t = t.to(dtype)
        if t.dim() == 4 and not strided:
            t = t.flatten(1, 2)
        return t if strided else t.contiguous()

    B4 = _normalise_bc(B, batch, length, dtype, strided)
    C4 = _normalise_bc(C, batch, length, dtype, strided)
    # back ends take one group count: refine B and C to the lcm of theirs (and of a grouped u's)
    groups = math.lcm(B4.shape[1], C4.shape[1], u.shape[1] if grouped_u and strided else 1)
    if B4.shape[1] != groups:
        B4 = B4.repeat_interleave(groups // B4.shape[1], dim=1)
    if C4.shape[1] != groups:
        C4 = C4.repeat_interleave(groups // C4.shape[1], dim=1)
    args = (prep(u), prep(delta), prep(A), B4, C4, prep(D), prep(z), prep(delta_bias), bool(delta_softplus))
    if name == "ref":  # plain autograd through the definition (see visbench.kernels.scan_ref)
        out, last_state = scan_ref.scan(*args)
        last_state = last_state.detach()
    else:
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        save_states = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
        out, last_state, _ = torch.ops.visbench.selective_scan_fwd(*args, save_states, name)
    out = out.to(u.dtype)
    if out.shape != u.shape:  # a grouped u that a back end took flattened
        out = out.unflatten(1, u.shape[1:3])
    return (out, last_state) if return_last_state else out
