"""Read Fashion-MNIST's IDX files (as shipped by Debian's `dataset-fashion-mnist`) into numpy arrays."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path(os.environ.get("VISBENCH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file '{stem}[.gz]' not found in {root}. Expected the IDX files of "
        f"{', '.join(s for pair in _FILES.values() for s in pair)} there "
        "(Debian: apt-get install dataset-fashion-mnist; "
        "or set VISBENCH_FASHION_MNIST / the config's data path)."
    )


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 8:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes)")
    magic, count = struct.unpack(">II", data[:8])
    if magic != expected_magic:
        raise ValueError(f"{path}: IDX magic number {magic:#x}, expected {expected_magic:#x}")
    if expected_magic == 2051:  # images: count, rows, cols
        rows, cols = struct.unpack(">II", data[8:16])
        shape, offset = (count, rows, cols), 16
    else:  # labels
        shape, offset = (count,), 8
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        found = len(data) - offset
        raise ValueError(f"{path}: expected {expected} bytes of data for shape {shape}, found {found}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def load_fashion_mnist(
    root: str | Path = DEFAULT_ROOT, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 (N, 28, 28), labels int64 (N,))`` for ``split`` in {"train", "test"}."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    root = Path(root)
    image_stem, label_stem = _FILES[split]
    images = _read_idx(_find(root, image_stem), 2051)
    labels = _read_idx(_find(root, label_stem), 2049).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in split {split!r}")
    return images, labels
