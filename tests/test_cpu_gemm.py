"""visbench.backbones.cpu_gemm: the inference paths' linear layers equal F.linear on every back end and route.

Which kernels ran is read with torch's profiler, which watches without changing the dispatch: inside
a dispatch mode (such as the tests' OpRecorder) the functions keep to aten ops on purpose.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
import visbench.backbones  # noqa: F401  (registers the model names with timm)
from op_recorder import OpRecorder
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.autograd import forward_ad
from visbench.backbones import cpu_gemm

ONEDNN_LINEAR = "mkldnn::_linear_pointwise"


def _kernels(fn) -> set[str]:
    """Names of the operators that ran in ``fn()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


def _operands(shape: tuple[int, ...], out_features: int, bias: bool = True):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    weight = torch.randn(out_features, shape[-1]) * shape[-1] ** -0.5
    return x, weight, torch.randn(out_features) if bias else None


SHAPES = [(5, 24), (2, 7, 24), (2, 3, 4, 24)]  # tokens, (B, L, C), channels-last maps


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_f_linear(shape: tuple[int, ...], bias: bool, gemm_backend: str) -> None:
    x, weight, b = _operands(shape, 40, bias)
    got: list[torch.Tensor] = []
    with torch.inference_mode():
        ran = _kernels(lambda: got.append(cpu_gemm.linear(x, weight, b)))
    torch.testing.assert_close(got[0], F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    assert (ONEDNN_LINEAR in ran) == (gemm_backend == "onednn")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_linear_gelu_equals_gelu_of_linear(approximate: str, gemm_backend: str) -> None:
    x, weight, b = _operands((2, 7, 24), 64)
    with torch.inference_mode():
        got = cpu_gemm.linear_gelu(x, weight, b, approximate)
    expected = F.gelu(F.linear(x, weight, b), approximate=approximate)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_add_leaves_the_residual_alone(bias: bool, gemm_backend: str) -> None:
    x, weight, b = _operands((2, 7, 64), 24, bias)
    residual = torch.randn(2, 7, 24)
    before = residual.clone()
    got: list[torch.Tensor] = []
    with torch.inference_mode():
        ran = _kernels(lambda: got.append(cpu_gemm.linear_add(x, weight, b, residual)))
    torch.testing.assert_close(got[0], residual + F.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    assert torch.equal(residual, before) and got[0].is_contiguous()
    assert (ONEDNN_LINEAR in ran) == (gemm_backend == "onednn")
    assert ("aten::addmm_" in ran) == (gemm_backend == "blas")


def test_strided_inputs(gemm_backend: str) -> None:
    """Views the blocks pass: a token slice and a channel slice of a wider buffer; and biases that
    are not dense vectors, which oneDNN would read as if they were."""
    x, weight, b = _operands((2, 9, 48), 24)
    tokens, channels = x[:, :1], x[..., :24]
    weight_rows = torch.randn(64, 24)[16:40]
    strided_bias, broadcast_bias = torch.randn(48)[::2], torch.randn(1)
    with torch.inference_mode():
        torch.testing.assert_close(cpu_gemm.linear(tokens, weight, b), F.linear(tokens, weight, b))
        torch.testing.assert_close(
            cpu_gemm.linear_add(channels, weight_rows, None, tokens[..., :24].expand(2, 9, 24)),
            tokens[..., :24] + F.linear(channels, weight_rows),
        )
        for bias in (strided_bias, broadcast_bias):
            torch.testing.assert_close(cpu_gemm.linear(x, weight, bias), F.linear(x, weight, bias))
            torch.testing.assert_close(
                cpu_gemm.linear_gelu(x, weight, bias), F.gelu(F.linear(x, weight, bias))
            )


@pytest.mark.parametrize("gemm_backend", ["onednn"], indirect=True)
def test_only_plain_eager_float32_without_autograd_reaches_onednn(gemm_backend: str) -> None:
    """oneDNN's ops have no autograd formula, ignore autocast, and neither fake tensors nor FLOP
    counters know them: such calls take F.linear / addmm_."""
    x, weight, b = _operands((3, 24), 8)
    residual = torch.randn(3, 8)
    with torch.no_grad():
        assert ONEDNN_LINEAR in _kernels(lambda: cpu_gemm.linear_add(x, weight, b, residual))

    leaf = x.clone().requires_grad_()
    assert ONEDNN_LINEAR not in _kernels(lambda: cpu_gemm.linear(leaf, weight, b).sum().backward())
    assert leaf.grad is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert ONEDNN_LINEAR not in _kernels(lambda: cpu_gemm.linear_gelu(x, weight, b))
        assert cpu_gemm.linear_gelu(x, weight, b).dtype == torch.bfloat16
    with torch.no_grad():
        assert ONEDNN_LINEAR not in _kernels(lambda: cpu_gemm.linear(x.double(), weight.double()))
        with OpRecorder() as ops:
            cpu_gemm.linear_add(x, weight, b, residual)
        assert "addmm_" in ops.ops and "_linear_pointwise" not in ops.ops
        with FakeTensorMode() as mode:  # oneDNN's fused add has no fake kernel: this would raise
            fake = cpu_gemm.linear_add(*(mode.from_tensor(t) for t in (x, weight, b, residual)))
        assert isinstance(fake, FakeTensor) and fake.shape == (3, 8)


@pytest.mark.parametrize("gemm_backend", ["onednn"], indirect=True)
def test_forward_mode_derivatives_and_tracing_keep_to_aten_ops(gemm_backend: str) -> None:
    """Without gradients, jvp / dual numbers still need derivative formulas, which oneDNN's ops lack:
    their tangents would silently come back as zeros. jit.trace cannot record those ops either."""
    x, weight, b = _operands((3, 24), 8)
    tangent = torch.randn(3, 24)
    with torch.no_grad():
        _, jvp_out = torch.func.jvp(lambda t: cpu_gemm.linear_gelu(t, weight, b), (x,), (tangent,))
        with forward_ad.dual_level():
            dual = cpu_gemm.linear(forward_ad.make_dual(x, tangent), weight, b)
            dual_tangent = forward_ad.unpack_dual(dual).tangent
        traced = torch.jit.trace(lambda t: cpu_gemm.linear(t, weight, b), (x,))
    with torch.enable_grad():
        _, expected = torch.func.jvp(lambda t: F.gelu(F.linear(t, weight, b)), (x,), (tangent,))
    torch.testing.assert_close(jvp_out, expected)
    torch.testing.assert_close(dual_tangent, F.linear(tangent, weight))
    torch.testing.assert_close(traced(x), F.linear(x, weight, b))


@pytest.mark.parametrize("name", ["gated_cnn_femto", "vit_tiny"])
def test_models_run_their_gemms_on_the_chosen_backend(name: str, gemm_backend: str) -> None:
    model = timm.create_model(name, img_size=64, num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ran = _kernels(lambda: model(x))
    assert (ONEDNN_LINEAR in ran) == (gemm_backend == "onednn")
    assert ("aten::addmm_" in ran) == (gemm_backend == "blas")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")
def test_backend_choice_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_gemm.BACKEND_ENV, "blas")
    assert cpu_gemm.gemm_backend() == "blas"
    monkeypatch.setenv(cpu_gemm.BACKEND_ENV, "mkl")
    with pytest.raises(ValueError, match="VISBENCH_CPU_GEMM='mkl': expected one of auto, onednn, blas"):
        cpu_gemm.gemm_backend()
    monkeypatch.setattr(cpu_gemm, "_X86_64", False)  # auto keeps oneDNN to where it was measured
    monkeypatch.setenv(cpu_gemm.BACKEND_ENV, "auto")
    assert cpu_gemm.gemm_backend() == "blas"
    monkeypatch.setenv(cpu_gemm.BACKEND_ENV, "onednn")
    assert cpu_gemm.gemm_backend() == "onednn"
    monkeypatch.setattr(cpu_gemm, "_X86_64", True)
    with torch.backends.mkldnn.flags(enabled=False):
        monkeypatch.setenv(cpu_gemm.BACKEND_ENV, "auto")
        assert cpu_gemm.gemm_backend() == "blas"
        monkeypatch.setenv(cpu_gemm.BACKEND_ENV, "onednn")
        with pytest.raises(RuntimeError, match="VISBENCH_CPU_GEMM=onednn"):
            cpu_gemm.gemm_backend()


def test_linear_add_names_a_mismatched_residual() -> None:
    x, weight, b = _operands((2, 7, 64), 24)
    with pytest.raises(ValueError, match=r"residual of shape \(2, 7, 32\) does not match .* 64->24"):
        cpu_gemm.linear_add(x, weight, b, torch.zeros(2, 7, 32))
