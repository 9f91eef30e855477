"""Ops: selective scan (mamba-ssm semantics), causal conv1d, scan orders, the block's split and
concatenated projections.

``from kernels import selective_scan`` is a drop-in for mamba-ssm's ``selective_scan_fn``.
"""

from visbench.kernels import scan_orders
from visbench.kernels.causal_conv1d import causal_conv1d
from visbench.kernels.linear import concat_linear, split_linear
from visbench.kernels.selective_scan import available_backends, reads_strided, selective_scan

__all__ = [
    "available_backends",
    "causal_conv1d",
    "concat_linear",
    "reads_strided",
    "scan_orders",
    "selective_scan",
    "split_linear",
]
