"""Run mamba-ssm's own scan test (``tests/ops/test_selective_scan.py``) against a visbench back end.

mamba-ssm's PyPI source package leaves its ``tests/ops`` out, so this takes the file from a checkout
(``git clone https://github.com/state-spaces/mamba``) and changes three things in a copy of it, nothing
in its assertions, inputs or tolerances:

- its ``selective_scan_fn`` is visbench's ``selective_scan`` with ``backend=`` this script's choice,
  and its ``selective_scan_ref`` is mamba-ssm's, imported without the CUDA extension;
- ``device = 'cuda'`` becomes ``--device``;
- only ``test_selective_scan`` runs (``test_mamba_inner_fn`` needs causal-conv1d's CUDA build).

``--full-grid`` also restores the grid its authors commented out (every sequence length from 8 to 4096
and both values of every flag), keeping the dtype lines as they are.

    python scripts/mamba_scan_tests.py ~/mamba/tests/ops/test_selective_scan.py --backend cpu --full-grid
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

IMPORTS = (
    "from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref\n",
    "from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, mamba_inner_ref\n",
)
SHIM = """from visbench.kernels import selective_scan as _visbench_scan
from visbench.kernels.checks import import_without_cuda_extensions

_interface = import_without_cuda_extensions("mamba_ssm.ops.selective_scan_interface")
selective_scan_ref = _interface.selective_scan_ref


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    return _visbench_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          return_last_state=return_last_state, backend={backend!r})
"""
# Commented-out parametrize lines that --full-grid leaves commented: the dtypes (complex A and half
# inputs are outside the float32 grid this script checks).
KEEP_COMMENTED = ("wtype", "itype")
# A parametrize line, commented ("# @pytest...") or not, and the name of its parameter.
_PARAMETRIZE = re.compile(r"""(# )?@pytest\.mark\.parametrize\(['"](\w+)['"]""")


def patch(source: str, backend: str, device: str, full_grid: bool) -> str:
    """mamba-ssm's test file with the back end swapped in; ValueError if the file is not the one expected."""
    for line in IMPORTS:
        if line not in source:
            raise ValueError(f"not mamba-ssm's test_selective_scan.py: no line {line.strip()!r}")
        source = source.replace(line, "")
    if "device = 'cuda'" not in source:
        raise ValueError("not mamba-ssm's test_selective_scan.py: no line \"device = 'cuda'\"")
    source = source.replace("device = 'cuda'", f"device = {device!r}")
    source = SHIM.format(backend=backend) + source
    if full_grid:
        lines = source.split("\n")
        for i in range(len(lines) - 1):
            commented, active = _PARAMETRIZE.match(lines[i]), _PARAMETRIZE.match(lines[i + 1])
            if not (commented and commented.group(1) and active and not active.group(1)):
                continue
            name = commented.group(2)
            if name == active.group(2) and name not in KEEP_COMMENTED:  # "# full grid" over "its subset"
                lines[i], lines[i + 1] = lines[i][2:], "# " + lines[i + 1]
        source = "\n".join(lines)
    return source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("test_file", type=Path, help="mamba's tests/ops/test_selective_scan.py")
    parser.add_argument("--backend", default="cpu", help="visbench back end (default: cpu)")
    parser.add_argument("--device", default="cpu", help="device of the test's tensors (default: cpu)")
    parser.add_argument("--full-grid", action="store_true", help="restore the commented-out grid")
    args, pytest_args = parser.parse_known_args(argv)
    patched = patch(args.test_file.read_text(), args.backend, args.device, args.full_grid)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "test_mamba_selective_scan.py"
        target.write_text(patched)
        command = [
            sys.executable,
            "-m",
            "pytest",
            str(target),
            "-k",
            "test_selective_scan",
            "-p",
            "no:cacheprovider",
        ]
        return subprocess.call([*command, *pytest_args], cwd=tmp)


if __name__ == "__main__":
    sys.exit(main())
