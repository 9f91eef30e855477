"""scripts/mamba_scan_tests.py: mamba-ssm's own scan test, rewritten to call a visbench back end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mamba_scan_tests.py"
_spec = importlib.util.spec_from_file_location("mamba_scan_tests", _SCRIPT)
mamba_scan_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mamba_scan_tests)

# The shape of mamba-ssm's file (its header, a full grid commented above the subset that runs, the
# device line), with a body of our own: a test of the rewrite, not a copy of theirs.
_LIKE_MAMBAS = """import torch
import pytest

from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref
from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, mamba_inner_ref


# @pytest.mark.parametrize('itype', [torch.float32, torch.float16])
@pytest.mark.parametrize('itype', [torch.float32])
# @pytest.mark.parametrize('seqlen', [8, 16, 4096])
@pytest.mark.parametrize('seqlen', [128])
# @pytest.mark.parametrize("has_z", [False, True])
@pytest.mark.parametrize("has_D", [True])
def test_selective_scan(itype, seqlen, has_D):
    device = 'cuda'
    u = torch.randn(2, 4, seqlen, device=device, dtype=itype, requires_grad=True)
    delta = (0.5 * torch.rand(2, 4, seqlen, device=device)).requires_grad_()
    A = (-0.5 * torch.rand(4, 8, device=device)).requires_grad_()
    B, C = torch.randn(2, 8, seqlen, device=device), torch.randn(2, 8, seqlen, device=device)
    D = torch.randn(4, device=device) if has_D else None
    out = selective_scan_fn(u, delta, A, B, C, D, delta_softplus=True)
    ref = selective_scan_ref(u, delta, A, B, C, D, delta_softplus=True)
    assert torch.allclose(out, ref, rtol=6e-4, atol=2e-3)
"""


def test_the_rewrite_swaps_the_back_end_and_device_only():
    patched = mamba_scan_tests.patch(_LIKE_MAMBAS, backend="cpu", device="cpu", full_grid=False)
    assert "from mamba_ssm.ops.selective_scan_interface import" not in patched
    assert "device = 'cpu'" in patched and "device = 'cuda'" not in patched
    assert "backend='cpu'" in patched
    assert "@pytest.mark.parametrize('seqlen', [128])" in patched  # the grid as it ships
    assert "# @pytest.mark.parametrize('seqlen', [8, 16, 4096])" in patched


def test_the_full_grid_restores_commented_values_of_the_same_parameter():
    patched = mamba_scan_tests.patch(_LIKE_MAMBAS, backend="cpu", device="cpu", full_grid=True)
    assert "\n@pytest.mark.parametrize('seqlen', [8, 16, 4096])" in patched
    assert "# @pytest.mark.parametrize('seqlen', [128])" in patched
    assert "\n@pytest.mark.parametrize('itype', [torch.float32])" in patched  # dtypes stay as shipped
    # A commented line over another parameter's decorator is not a subset: both stay as they are.
    assert '# @pytest.mark.parametrize("has_z", [False, True])' in patched
    assert '\n@pytest.mark.parametrize("has_D", [True])' in patched


def test_the_rewritten_file_runs_and_passes_on_the_cpu_back_end(tmp_path):
    pytest.importorskip("einops")  # mamba-ssm's reference module imports it
    from conftest import import_mamba_reference

    import_mamba_reference("mamba_ssm.ops.selective_scan_interface")  # skips with a reason when absent
    source = tmp_path / "test_selective_scan.py"
    source.write_text(_LIKE_MAMBAS)
    assert mamba_scan_tests.main([str(source), "--full-grid", "-q"]) == 0


def test_a_file_that_is_not_mambas_is_refused_with_the_line_it_lacks():
    with pytest.raises(ValueError, match="selective_scan_fn, selective_scan_ref"):
        mamba_scan_tests.patch("import torch\n", backend="cpu", device="cpu", full_grid=False)
