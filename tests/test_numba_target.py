"""numba's CPU target for the cpu kernels (visbench.kernels._numba_target)."""

from __future__ import annotations

import subprocess
import sys

import pytest

numba = pytest.importorskip("numba", reason="the cpu kernels' target is numba's")
llvm = pytest.importorskip("llvmlite.binding", reason="numba's LLVM binding")

from visbench.kernels import _numba_target  # noqa: E402


class _Features(dict):
    def flatten(self) -> str:
        return ",".join(("+" if on else "-") + name for name, on in self.items())


@pytest.mark.parametrize("avx512", [True, False])
def test_wide_vectors_only_on_avx512_hosts(avx512, monkeypatch):
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    monkeypatch.delenv(_numba_target.WIDE_VECTORS_ENV, raising=False)
    monkeypatch.setattr(llvm, "get_host_cpu_features", lambda: _Features(avx2=True, avx512f=avx512))
    _numba_target.configure()
    if avx512:
        assert numba.config.CPU_FEATURES == "+avx2,+avx512f,-prefer-256-bit"
        assert _numba_target.wide_vectors()
    else:
        assert numba.config.CPU_FEATURES is None and not _numba_target.wide_vectors()


def test_a_users_features_and_the_off_switch_win(monkeypatch):
    monkeypatch.setattr(llvm, "get_host_cpu_features", lambda: _Features(avx512f=True))
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2")
    _numba_target.configure()
    assert numba.config.CPU_FEATURES == "+avx2"
    monkeypatch.setattr(numba.config, "CPU_FEATURES", None)
    monkeypatch.setenv(_numba_target.WIDE_VECTORS_ENV, "0")
    _numba_target.configure()
    assert numba.config.CPU_FEATURES is None


def test_the_kernels_module_configures_numba_before_its_first_njit():
    """In a fresh process, importing the kernels leaves numba's JIT compiling for the configured
    features (the setting must come before numba's first compiled function, or it has no effect)."""
    code = (
        "from visbench.kernels import _scan_cpu_numba, _numba_target\n"
        "from numba.core.registry import cpu_target\n"
        "import numba\n"
        "features = cpu_target.target_context.codegen()._tm_features\n"
        "assert (numba.config.CPU_FEATURES is None) or features == numba.config.CPU_FEATURES, features\n"
        "print(_numba_target.wide_vectors())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(bool(llvm.get_host_cpu_features().get("avx512f")))
