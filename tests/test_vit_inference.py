"""ViT's inference path (backbones.isotropic): ViTBlock.forward_inference and the class-token-only last block.

Every check uses random, non-zero biases: the path drops the key bias and folds the value bias into
``proj``, and timm's init (zero biases) would hide a mistake there.
"""

from __future__ import annotations

import pytest
import timm
import torch
import visbench.backbones.isotropic as iso
from op_recorder import OpRecorder
from torch import nn
from visbench.backbones.complexity import count_macs

SIZE = 64  # 4x4 patches + class token = 17 tokens


def _randomize(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.1)
    return module.eval()


def _block(causal: bool = False, qkv_bias: bool = True) -> iso.ViTBlock:
    return _randomize(iso.ViTBlock(48, num_heads=3, qkv_bias=qkv_bias, causal=causal))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("qkv_bias", [True, False])
def test_block_inference_path_equals_autograd_path(causal: bool, qkv_bias: bool, gemm_backend: str) -> None:
    block = _block(causal, qkv_bias)
    x = torch.randn(3, 11, 48)
    x_before = x.clone()
    expected = block(x).detach()  # gradients on: the plain path
    with torch.no_grad():
        got = block(x)
    with torch.inference_mode():
        got_inference = block(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_inference, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, x_before), "the inference path must not write into its input"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_queries", [1, 4])
def test_block_with_fewer_queries_gives_the_first_tokens(
    causal: bool, num_queries: int, gemm_backend: str
) -> None:
    block = _block(causal)
    x = torch.randn(2, 9, 48)
    expected = block(x).detach()[:, :num_queries]
    with torch.no_grad():
        got = block.forward_inference(x, num_queries=num_queries)
    assert got.shape == (2, num_queries, 48) and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_key_bias_really_is_ignored_and_value_bias_really_is_folded(gemm_backend: str) -> None:
    """Guard against a test that cannot fail: a changed key bias leaves the output alone, a changed
    value bias does not, on both paths."""
    block = _block()
    x = torch.randn(2, 7, 48)
    with torch.no_grad():
        before = block(x)
        block.attn.qkv.bias[48:96] += 1.0  # key bias
        torch.testing.assert_close(block(x), before, rtol=1e-5, atol=1e-5)
        block.attn.qkv.bias[96:] += 1.0  # value bias
        moved = block(x)
    assert (moved - before).abs().max() > 1e-2
    torch.testing.assert_close(moved, block(x).detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(moved, _with_grad(block, x), rtol=1e-5, atol=1e-5)


def _with_grad(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        return module(x).detach()


@pytest.mark.parametrize(
    ("name", "pool", "reference_kwargs"),
    [
        ("vit_tiny", "token", {}),
        ("vit_tiny", "avg", dict(global_pool="avg", fc_norm=False)),
        ("vit_causal_tiny", "avg", dict(global_pool="avg", fc_norm=False)),
    ],
)
def test_model_inference_equals_timm_and_the_autograd_path(
    name: str, pool: str, reference_kwargs: dict, gemm_backend: str
) -> None:
    model = _randomize(timm.create_model(name, img_size=SIZE, global_pool=pool))
    reference = timm.create_model("vit_tiny_patch16_224", img_size=SIZE, **reference_kwargs).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.inference_mode():
        got = model(x)
        expected = reference(x, is_causal=model.causal)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, _with_grad(model, x), rtol=1e-5, atol=1e-5)


def test_class_token_path_runs_the_last_block_on_one_token() -> None:
    model = _randomize(timm.create_model("vit_tiny", img_size=SIZE, depth=3))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode(), OpRecorder() as ops:
        model(x)
    # GELU runs in place in every block, on 17 tokens in the first two and on the class token in the last
    assert ops.shapes("gelu_") == [(2, 17, 768), (2, 17, 768), (2, 1, 768)]
    assert "addmm_" in ops.ops
    with torch.inference_mode(), OpRecorder() as features:
        model.forward_features(x)
    assert features.shapes("gelu_") == [(2, 17, 768)] * 3  # forward_features keeps every token
    with OpRecorder() as grad_on:
        model(x)
    assert not grad_on.shapes("gelu_") and not grad_on.shapes("addmm_")
    assert grad_on.shapes("gelu") == [(2, 17, 768)] * 3


def test_hook_on_the_last_block_sees_every_token() -> None:
    model = _randomize(timm.create_model("vit_tiny", img_size=SIZE, depth=2))
    x = torch.randn(2, 3, SIZE, SIZE)
    expected = _with_grad(model, x)
    seen: list[tuple[int, ...]] = []
    handle = model.blocks[-1].register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    with torch.inference_mode():
        got = model(x)
    handle.remove()
    assert seen == [(2, 17, 192)]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_hooks_training_and_swapped_layers_keep_the_plain_path() -> None:
    block = _block()
    x = torch.randn(2, 5, 48)
    seen: list[torch.Tensor] = []
    handle = block.attn.proj.register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        block(x)
    handle.remove()
    assert len(seen) == 1, "a hook on proj must fire"

    block.train()
    with torch.no_grad(), OpRecorder() as ops:
        block(x)
    assert not ops.shapes("addmm_"), "train mode (dropout) must take the plain path"
    block.eval()

    class CountingLinear(nn.Linear):
        calls = 0

        def forward(self, inp: torch.Tensor) -> torch.Tensor:
            CountingLinear.calls += 1
            return super().forward(inp)

    swapped = CountingLinear(48, 48 * 4)
    swapped.load_state_dict(block.mlp.fc1.state_dict())
    block.mlp.fc1 = swapped
    with torch.no_grad():
        block(x)
    assert CountingLinear.calls == 1


def test_autocast_keeps_the_plain_path_and_its_dtypes() -> None:
    model = _randomize(timm.create_model("vit_tiny", img_size=SIZE, depth=2))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = _with_grad(model, x)
        with torch.inference_mode(), OpRecorder() as ops:
            got = model(x)
    assert not ops.shapes("addmm_")
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


def test_macs_count_every_token_of_every_block() -> None:
    """FlopCounterMode's hooks turn the inference path off: MACs are the architecture's, not the
    class-token shortcut's (ViT-S: 4.6 GMACs, as published)."""
    model = timm.create_model("vit_small").eval()
    macs = count_macs(model, (3, 224, 224))
    assert macs == pytest.approx(4.6e9, rel=0.01)
    with torch.inference_mode():
        assert count_macs(model, (3, 224, 224)) == macs


def test_inference_path_runs_on_the_meta_device() -> None:
    """``meta`` has no autocast: asking about it must not fail (timm builds models on meta)."""
    with torch.device("meta"):
        model = timm.create_model("vit_tiny", img_size=SIZE, depth=2).eval()
        x = torch.empty(2, 3, SIZE, SIZE)
    assert model.blocks[0].inference_path_applies(torch.empty(1, device="meta")) is False  # grad on
    with torch.inference_mode():
        assert model.blocks[0].inference_path_applies(x)
        assert model(x).shape == (2, 1000)


def test_dropout_switched_back_on_after_eval_keeps_the_plain_path() -> None:
    """MC dropout: ``model.eval()``, then the dropout layers back in train mode."""
    model = _randomize(timm.create_model("vit_tiny", img_size=SIZE, depth=2, proj_drop_rate=0.5))
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad(), OpRecorder() as ops:
        first, second = model(x), model(x)
    assert not ops.shapes("addmm_")
    assert (first - second).abs().max() > 1e-3, "dropout must still sample"


def test_hook_on_norm2_sees_the_residual_stream_after_attention() -> None:
    """norm2's input is the stream the inference path writes to later: a hook keeping it turns it off."""
    block = _block()
    x = torch.randn(2, 5, 48)
    captured: list[torch.Tensor] = []
    block.norm2.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
    expected_output = block(x).detach()
    with torch.no_grad():
        output = block(x)
    torch.testing.assert_close(captured[1], captured[0].detach())
    torch.testing.assert_close(output, expected_output)
    assert not torch.allclose(captured[1], output)


def test_replaced_layers_and_patched_forwards_keep_the_plain_path() -> None:
    class Scale(nn.Module):  # e.g. a LayerScale put into a drop-path slot
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return 0.5 * t

    block = _block()
    block.drop_path1 = Scale()
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _with_grad(block, x))

    block = _block()
    calls: list[int] = []
    plain_forward = block.attn.forward
    block.attn.forward = lambda h: calls.append(1) or plain_forward(h)  # how attention maps get read
    with torch.no_grad():
        block(x)
    assert calls == [1]


def test_class_token_path_honours_subclasses_and_patched_pieces() -> None:
    class PromptTuned(iso.VisionTransformer):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward_features(x) + 1.0

    kwargs = dict(img_size=SIZE, embed_dim=48, depth=2, num_heads=3, num_classes=5)
    model = _randomize(PromptTuned(**kwargs))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))

    class TokenMixingNorm(nn.Module):  # a final norm over tokens must see all of them
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t - t.mean(dim=1, keepdim=True)

    mixed_norm = _randomize(iso.VisionTransformer(**kwargs))
    mixed_norm.norm = TokenMixingNorm()
    with torch.inference_mode():
        torch.testing.assert_close(mixed_norm(x), mixed_norm.forward_head(mixed_norm.forward_features(x)))

    plain = _randomize(iso.VisionTransformer(**kwargs))
    plain_features = plain.forward_features
    plain.forward_features = lambda t: plain_features(t) + 1.0
    with torch.inference_mode():
        torch.testing.assert_close(plain(x), plain.forward_head(plain.forward_features(x)))


def test_graph_traced_without_grad_still_trains() -> None:
    """``torch.jit.trace`` keeps the path it saw; under tracing the block takes the plain one."""
    block = _block()
    x = torch.randn(2, 5, 48)
    with torch.no_grad():
        traced = torch.jit.trace(block, x)
    y = x.clone().requires_grad_()
    traced(y).sum().backward()
    expected = x.clone().requires_grad_()
    block(expected).sum().backward()
    torch.testing.assert_close(y.grad, expected.grad)
