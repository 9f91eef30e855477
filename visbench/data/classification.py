"""Classification datasets and loaders: ImageFolder (ImageNet layout) and Fashion-MNIST, with timm transforms.

Unreadable images are skipped, not fatal: the dataset returns ``None`` for them (after a warning that
names the file) and :func:`collate_skipping` drops them and counts them, so the count reaches the
training metrics even from loader worker processes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from visbench.config import AugConfig, DataConfig
from visbench.data.fashion_mnist import load_fashion_mnist

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
_SUBSET_SEED = 0  # the subset is a property of the data config, not of the run's seed


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not where the config says; the message names the path and the expected layout."""


class SkippingImageFolder(ImageFolder):
    """torchvision ImageFolder returning ``None`` (with a warning naming the file) for unreadable images."""

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except Exception as err:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError)
            warnings.warn(f"skipping unreadable image {path}: {type(err).__name__}: {err}", stacklevel=2)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, target


class ArrayImageDataset(Dataset):
    """uint8 (N, H, W) images + labels as PIL images through a transform (grayscale, or RGB if asked)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None, mode: str = "L"):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform, self.mode = images, labels, transform, mode
        self.classes = [str(c) for c in range(int(labels.max()) + 1)] if len(labels) else []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index], mode="L")
        if self.mode != "L":
            image = image.convert(self.mode)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def collate_skipping(
    batch: Sequence[tuple[torch.Tensor, int] | None],
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Default collation of the readable samples; returns ``(images, targets, number skipped)``."""
    kept = [sample for sample in batch if sample is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images = torch.stack([sample[0] for sample in kept])
    targets = torch.tensor([sample[1] for sample in kept], dtype=torch.long)
    return images, targets, skipped


def normalization(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if cfg.mean is not None and cfg.std is not None:
        return tuple(cfg.mean), tuple(cfg.std)
    if cfg.dataset == "fashion_mnist":
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    else:
        mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    if len(mean) != cfg.in_chans:
        mean, std = (sum(mean) / len(mean),) * cfg.in_chans, (sum(std) / len(std),) * cfg.in_chans
    return tuple(mean), tuple(std)


def build_transform(data: DataConfig, aug: AugConfig, is_training: bool) -> Callable:
    """timm's ImageNet transforms; ``aug.simple`` is resize + flip (small images such as Fashion-MNIST)."""
    size = tuple(data.input_size)
    mean, std = normalization(data)
    if aug.simple or data.dataset == "fashion_mnist" and not is_training:
        steps: list[Callable] = [T.Resize(size, interpolation=T.InterpolationMode.BILINEAR, antialias=True)]
        if is_training and aug.hflip > 0:
            steps.append(T.RandomHorizontalFlip(aug.hflip))
        steps += [T.ToTensor(), T.Normalize(mean, std)]
        if is_training and aug.reprob > 0:
            steps.append(T.RandomErasing(p=aug.reprob, value=0))
        return T.Compose(steps)
    return create_transform(
        input_size=(data.in_chans, *size),
        is_training=is_training,
        scale=tuple(aug.scale),
        hflip=aug.hflip,
        color_jitter=aug.color_jitter,
        auto_augment=aug.auto_augment,
        interpolation=data.interpolation,
        mean=mean,
        std=std,
        re_prob=aug.reprob,
        re_mode=aug.remode,
        crop_pct=data.crop_pct,
    )


def _subset_indices(n: int, subset: int | None, labels: np.ndarray | None = None) -> np.ndarray | None:
    """A fixed (seed 0) subset of ``subset`` indices, stratified by label when labels are known."""
    if subset is None or subset >= n:
        return None
    rng = np.random.RandomState(_SUBSET_SEED)
    if labels is None:
        return np.sort(rng.permutation(n)[:subset])
    order = rng.permutation(n)
    classes = np.unique(labels)
    per_class = [order[labels[order] == c] for c in classes]
    # Round-robin over classes in the shuffled order keeps the subset balanced.
    picked: list[int] = []
    depth = 0
    while len(picked) < subset:
        for members in per_class:
            if depth < len(members) and len(picked) < subset:
                picked.append(int(members[depth]))
        depth += 1
    return np.sort(np.asarray(picked))


def build_dataset(data: DataConfig, split: str, transform: Callable | None) -> Dataset:
    """The ``train`` or ``val`` split named by the config, with its subset applied."""
    is_train = split == "train"
    subset = data.train_subset if is_train else data.val_subset
    if data.dataset == "fashion_mnist":
        root = Path(data.root)
        try:
            images, labels = load_fashion_mnist(root, "train" if is_train else "test")
        except FileNotFoundError as err:
            raise DatasetNotFoundError(f"data.root={root}: {err}") from None
        idx = _subset_indices(len(labels), subset, labels)
        if idx is not None:
            images, labels = images[idx], labels[idx]
        mode = "L" if data.in_chans == 1 else "RGB"
        return ArrayImageDataset(images, labels, transform, mode)
    folder = Path(data.root) / (data.train_split if is_train else data.val_split)
    layout = (
        f"expected ImageFolder layout: {data.root}/{data.train_split}/<class>/<image> and "
        f"{data.root}/{data.val_split}/<class>/<image>"
    )
    if not folder.is_dir():
        raise DatasetNotFoundError(f"data.root: dataset folder {folder} not found ({layout})")
    try:
        dataset = SkippingImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, OSError) as err:
        raise DatasetNotFoundError(f"data.root: {folder}: {err} ({layout})") from None
    if len(dataset.classes) != data.num_classes:
        warnings.warn(
            f"{folder}: {len(dataset.classes)} class folders but data.num_classes={data.num_classes}",
            stacklevel=2,
        )
    idx = _subset_indices(len(dataset), subset, np.asarray(dataset.targets))
    if idx is not None:
        return torch.utils.data.Subset(dataset, idx.tolist())
    return dataset
