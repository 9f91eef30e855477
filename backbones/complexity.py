"""Parameters and MACs of a model, counted by ``torch.utils.flop_counter.FlopCounterMode``.

MACs = FLOPs / 2 (one multiply-add = 2 FLOPs, FlopCounterMode's convention for matmul and conv).
Two conventions (``count_macs(..., convention=...)``):

- ``"torch"`` (the default): only matmuls, convolutions, attention and ops with a registered formula
  count (our ``selective_scan`` and ``causal_conv1d`` custom ops register theirs); norms, activations,
  pooling and element-wise gating are left out.
- ``"fvcore"``: the same, plus what fvcore's ``FlopCountAnalysis`` counts and FlopCounterMode does not,
  with fvcore's own handles (``fvcore/nn/jit_handles.py``): LayerNorm / GroupNorm / InstanceNorm 5 per
  element with an affine transform, 4 without (``norm_flop_counter``); BatchNorm 2 (1 without affine)
  in eval, 5 (4) in training; ``adaptive_avg_pool2d`` 1 per input element; nearest / bilinear 2-D
  upsampling 1 / 4 per output element, ``grid_sample`` 4. This is the convention of MambaOut's and
  timm's published tables (MambaOut-Femto 1.16 G; ``"torch"`` reads 1.148 G). Activations, element-wise
  products and ``mean`` count in neither, as in fvcore. Unlike fvcore run on a model that calls
  ``F.scaled_dot_product_attention`` (which it does not count), attention counts in both conventions,
  as the matmuls it replaces do; the scan / causal-conv formulas also count in both.

The known trap this module fixes: FlopCounterMode has no formula for the attention ops that
``F.scaled_dot_product_attention`` dispatches to on CPU
(``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward; on Apple GPUs
``_scaled_dot_product_attention_math_for_mps``), so on CPU it silently counts attention as zero
(timm's vit_small: 8.48 GFLOPs instead of 9.2). :data:`EXTRA_FLOP_FORMULAS` supplies the same
formula torch uses for the CUDA kernels, passed as ``custom_mapping`` (no global registry change).
Causal attention is counted as full attention (``4·B·H·L²·E``), like torch's CUDA formulas.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from math import prod
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _sdpa_forward_flop(
    query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_backward_flop(
    grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _missing_attention_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas for the SDPA back ends FlopCounterMode does not know (only those this torch has)."""
    from torch.utils.flop_counter import flop_registry

    forward = (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_attention_math_for_mps",
        "_scaled_dot_product_fused_attention_overrideable",
    )
    backward = (
        "_scaled_dot_product_flash_attention_for_cpu_backward",
        "_scaled_dot_product_fused_attention_overrideable_backward",
    )
    formulas: dict[Any, Callable[..., int]] = {}
    for names, formula in ((forward, _sdpa_forward_flop), (backward, _sdpa_backward_flop)):
        for name in names:
            op = getattr(aten, name, None)
            if op is not None and op not in flop_registry:  # a later torch may count it itself
                formulas[op] = formula
    return formulas


EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = _missing_attention_formulas()


def flop_counter(display: bool = False) -> FlopCounterMode:
    """A ``FlopCounterMode`` that also counts CPU / MPS attention."""
    return FlopCounterMode(display=display, custom_mapping=EXTRA_FLOP_FORMULAS)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _example_input(model: nn.Module, input_size: Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(input_size, torch.Tensor):
        return input_size
    size = tuple(int(s) for s in input_size)
    if len(size) == 3:
        size = (1, *size)
    if len(size) != 4 or min(size) <= 0:
        raise ValueError(f"input_size: expected (C, H, W) or (B, C, H, W), positive, got {input_size}")
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.dtype.is_floating_point else torch.float32
    return torch.zeros(size, device=device, dtype=dtype)


def _is_meta(model: nn.Module) -> bool:
    ref = next(model.parameters(), None)
    return ref is not None and ref.device.type == "meta"


@contextlib.contextmanager
def _forward_context(model: nn.Module, x: torch.Tensor) -> Iterator[Callable[[], Any]]:
    """Yield a callable running ``model(x)``; meta models run on fake CPU tensors instead.

    A meta-device model computes nothing, but device-dependent code (our ``selective_scan`` picks its
    back end from the tensor's device) would take a different path on ``meta`` than on CPU. Fake
    tensors that claim to be on the CPU follow the CPU path, through the custom ops' fake kernels and
    their FLOP formulas, still without computing or allocating.
    """
    if not (_is_meta(model) or x.device.type == "meta"):
        yield lambda: model(x)
        return
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call

    mode = FakeTensorMode()
    cpu = torch.device("cpu")

    def fake(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "meta":
            return mode.fake_tensor_converter.from_meta_and_device(mode, t, cpu)
        return mode.from_tensor(t)

    state = {name: fake(t) for name, t in (*model.named_parameters(), *model.named_buffers())}
    fake_x = fake(x)
    with mode:
        yield lambda: functional_call(model, state, (fake_x,), strict=False)


def _run_counted(
    model: nn.Module, x: torch.Tensor, backward: bool, extra: TorchFunctionMode | None = None
) -> FlopCounterMode:
    was_training = model.training
    model.train(backward)
    counter = flop_counter()
    try:
        with _forward_context(model, x) as forward, counter, extra or contextlib.nullcontext():
            if backward:
                loss = sum(t.float().sum() for t in _tensors(forward()))
                loss.backward()
            else:
                with torch.no_grad():
                    forward()
    finally:
        model.train(was_training)
        if backward:
            model.zero_grad(set_to_none=True)
    return counter


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def count_flops(model: nn.Module, input_size: Sequence[int] | torch.Tensor, backward: bool = False) -> int:
    """FLOPs of one forward pass (plus backward when asked) on ``input_size`` = (C, H, W) or (B, C, H, W).

    The input is zeros on the model's device; a model on the ``meta`` device counts without computing
    (on fake CPU tensors, so it takes the same code path as on the CPU).
    A tensor may be passed instead of a size (for inputs that are not images).
    """
    return int(_run_counted(model, _example_input(model, input_size), backward).get_total_flops())


Convention = Literal["torch", "fvcore"]
CONVENTIONS: tuple[str, ...] = ("torch", "fvcore")


def _numel(t: Any) -> int:
    return prod(t.shape) if isinstance(t, torch.Tensor) else 0


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _norm_macs(weight_index: int) -> Callable[..., int]:
    """fvcore's ``norm_flop_counter``: 5 per input element with an affine weight, 4 without."""

    def macs(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
        affine = _arg(args, kwargs, weight_index, "weight") is not None
        return _numel(args[0]) * (5 if affine else 4)

    return macs


def _batch_norm_macs(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """fvcore's ``batchnorm_flop_jit``: as a norm in training, 2 (affine) or 1 per element in eval."""
    if _arg(args, kwargs, 5, "training"):
        return _norm_macs(3)(args, kwargs, out)
    return _numel(args[0]) * (2 if _arg(args, kwargs, 3, "weight") is not None else 1)


def _interpolate_macs(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    """fvcore counts ``upsample_nearest2d`` (1 per output element) and ``upsample_bilinear2d`` (4) only."""
    mode = _arg(args, kwargs, 3, "mode") or "nearest"
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        return 0
    return {"nearest": 1, "bilinear": 4}.get(mode, 0) * _numel(out)


# What fvcore counts that FlopCounterMode does not, by the Python-level function that runs it (fvcore
# reads the traced graph, where these are single ops; below them torch decomposes differently per back
# end, e.g. a 1x1 adaptive average pool becomes ``mean``). Argument positions as in torch.nn.functional.
_FVCORE_EXTRAS: dict[Callable[..., Any], Callable[..., int]] = {
    F.layer_norm: _norm_macs(2),
    torch.layer_norm: _norm_macs(2),
    F.group_norm: _norm_macs(2),
    torch.group_norm: _norm_macs(2),
    F.instance_norm: _norm_macs(3),
    F.batch_norm: _batch_norm_macs,
    F.adaptive_avg_pool2d: lambda args, kwargs, out: _numel(args[0]),
    F.interpolate: _interpolate_macs,
    F.grid_sample: lambda args, kwargs, out: 4 * _numel(out),
}


class _FvcoreExtras(TorchFunctionMode):
    """Adds up the MACs of the calls in :data:`_FVCORE_EXTRAS` (a function seen inside another one, as
    ``F.layer_norm`` calling ``torch.layer_norm``, runs with this mode off and counts once)."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rule = _FVCORE_EXTRAS.get(func)
        if rule is not None:
            self.macs += int(rule(args, kwargs, out))
        return out


def count_macs(
    model: nn.Module, input_size: Sequence[int] | torch.Tensor, *, convention: Convention = "torch"
) -> int:
    """Multiply-accumulates of one forward pass for the batch in ``input_size`` (default 1).

    ``convention="torch"``: FlopCounterMode's FLOPs / 2; ``"fvcore"``: plus norms, adaptive pooling
    and upsampling as fvcore counts them (the published tables' convention; see the module docstring).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {', '.join(CONVENTIONS)}, got {convention!r}")
    extras = _FvcoreExtras() if convention == "fvcore" else None
    counter = _run_counted(model, _example_input(model, input_size), backward=False, extra=extras)
    return int(counter.get_total_flops()) // 2 + (extras.macs if extras else 0)


def count_macs_by_module(model: nn.Module, input_size: Sequence[int] | torch.Tensor) -> dict[str, int]:
    """MACs of one forward pass per module name (``Global`` is the whole model; names as ``named_modules``,
    each counting itself and its children)."""
    counter = _run_counted(model, _example_input(model, input_size), backward=False)
    root = type(model).__name__
    out: dict[str, int] = {}
    for name, per_op in counter.get_flop_counts().items():
        # FlopCounterMode prefixes module names with the root's class name ("VisionTransformer.blocks.0").
        if name == root:
            continue
        key = name.split(".", 1)[1] if name.startswith(root + ".") else name
        out[key] = sum(per_op.values()) // 2
    return out


def vit_block_flops(dim: int, tokens: int, mlp_ratio: float = 4.0) -> int:
    """Closed-form FLOPs of one ViT block (MambaOut Eq. 6 for ``mlp_ratio`` 4): ``24·D²·L + 4·D·L²``.

    Linear layers: qkv 3D², projection D², MLP 2·ratio·D², each ·2·L FLOPs; attention: ``Q·Kᵀ`` and
    ``A·V`` each ``2·L²·D`` FLOPs.
    """
    linear = 2 * tokens * dim * dim * (4 + 2 * mlp_ratio)
    return int(round(linear)) + 4 * dim * tokens * tokens


# --------------------------------------------------------------------------- MACs by kind of mixing

TOKEN_MIXING = "token_mixing"
CHANNEL_MIXING = "channel_mixing"
OTHER = "other"

_ATTENTION_OPS = {
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward",
    "_efficient_attention_forward",
    "bmm",
    "baddbmm",
}


def _kind(func: Any, args: tuple[Any, ...]) -> str:
    """Token mixing (attention, depthwise conv, scans), channel mixing (linear, 1x1 conv), or other."""
    name = func._overloadpacket.__name__
    namespace = func.namespace
    if namespace == "visbench":  # selective_scan, causal_conv1d
        return TOKEN_MIXING
    if name in _ATTENTION_OPS:
        return TOKEN_MIXING
    if name in ("mm", "addmm", "matmul", "linear"):
        return CHANNEL_MIXING
    if name in ("convolution", "_convolution", "conv2d", "conv1d"):
        weight = args[1]
        groups = int(args[8]) if len(args) > 8 else 1
        kernel = tuple(weight.shape[2:])
        if all(k == 1 for k in kernel) and groups == 1:
            return CHANNEL_MIXING
        in_channels = weight.shape[1] * groups
        if groups > 1 and groups == in_channels:
            return TOKEN_MIXING
        return OTHER
    return OTHER


def count_macs_by_kind(model: nn.Module, input_size: Sequence[int] | torch.Tensor) -> dict[str, int]:
    """Forward MACs split into ``token_mixing`` / ``channel_mixing`` / ``other`` by the op that spends them.

    token mixing: attention (SDPA back ends, ``bmm``), depthwise convolutions, our scan / causal-conv ops;
    channel mixing: ``mm`` / ``addmm`` (linear layers) and dense 1x1 convolutions; other: dense spatial
    convolutions (stem, downsampling, patch embedding). The three sum to :func:`count_macs`.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    registry = flop_counter().flop_registry
    totals = {TOKEN_MIXING: 0, CHANNEL_MIXING: 0, OTHER: 0}

    class _ByKind(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
            kwargs = kwargs or {}
            packet = func._overloadpacket
            if packet not in registry and func.namespace == "aten":
                decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
            out = func(*args, **kwargs)
            if packet in registry:
                totals[_kind(func, args)] += int(registry[packet](*args, **kwargs, out_val=out))
            return out

    x = _example_input(model, input_size)
    was_training = model.training
    model.eval()
    try:
        with _forward_context(model, x) as forward, torch.no_grad(), _ByKind():
            forward()
    finally:
        model.train(was_training)
    return {k: v // 2 for k, v in totals.items()}
