"""Parameters and MACs of a model, counted by ``torch.utils.flop_counter.FlopCounterMode``.

MACs = FLOPs / 2 (one multiply-add = 2 FLOPs, FlopCounterMode's convention for matmul and conv).
Only matmuls, convolutions, attention and ops with a registered formula count (our ``selective_scan``
and ``causal_conv1d`` custom ops register theirs); norms, activations and element-wise gating are
left out, as in fvcore and the papers' tables.

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
from typing import Any

import torch
from torch import nn
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


def _run_counted(model: nn.Module, x: torch.Tensor, backward: bool) -> FlopCounterMode:
    was_training = model.training
    model.train(backward)
    counter = flop_counter()
    try:
        with _forward_context(model, x) as forward, counter:
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


def count_macs(model: nn.Module, input_size: Sequence[int] | torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (FLOPs / 2) for the batch in ``input_size`` (default 1)."""
    return count_flops(model, input_size) // 2


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
