"""Datasets: Fashion-MNIST subsets, the ImageFolder layout, and unreadable images skipped with a warning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train import tiny_config

from visbench.classification.trainer import train
from visbench.config import config_from_dict
from visbench.data.classification import DatasetNotFoundError, build_dataset, collate_skipping
from visbench.data.fashion_mnist import load_fashion_mnist
from visbench.results import read_result


def test_fashion_mnist_subset_is_fixed_and_class_balanced(fashion_mnist_dir: Path) -> None:
    cfg = tiny_config(Path("unused"), fashion_mnist_dir, data={"train_subset": 100})
    a, b = build_dataset(cfg.data, "train", None), build_dataset(cfg.data, "train", None)
    assert len(a) == 100 and np.array_equal(a.labels, b.labels) and np.array_equal(a.images, b.images)
    assert np.bincount(a.labels, minlength=10).tolist() == [10] * 10


def _image_folder(root: Path, fashion_mnist_dir: Path, corrupt: list[str]) -> None:
    images, labels = load_fashion_mnist(fashion_mnist_dir, "test")
    for split, offset in (("train", 0), ("val", 100)):
        for i in range(16 - (len(corrupt) if split == "train" else 0)):
            folder = root / split / f"class{labels[offset + i] % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[offset + i]).convert("RGB").save(folder / f"img{i}.png")
    good = next((root / "train" / "class0").glob("*.png"))
    for name in corrupt:
        path = root / "train" / "class0" / name
        if name.startswith("truncated"):
            path.write_bytes(good.read_bytes()[:60])
        else:
            path.write_bytes(b"this is not an image")


def test_unreadable_images_are_skipped_named_and_counted(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    _image_folder(tmp_path / "data", fashion_mnist_dir, corrupt=["garbage.png", "truncated.png"])
    raw = tiny_config(
        tmp_path / "run", tmp_path / "data", sched={"epochs": 2}, train={"batch_size": 4}
    ).to_dict()
    raw["data"].update(dataset="imagefolder", in_chans=3, num_classes=2, train_subset=None, val_subset=None)
    with pytest.warns(UserWarning) as caught:
        outcome = train(config_from_dict(raw), log=lambda *a: None)
    messages = " ".join(str(w.message) for w in caught)
    assert "skipping unreadable image" in messages
    assert "garbage.png" in messages and "truncated.png" in messages
    assert outcome.status == "finished"
    assert read_result(tmp_path / "run" / "result.json")["extra"]["skipped_images"] == 4  # 2 files x 2 epochs


def test_collate_drops_unreadable_samples_and_counts_them() -> None:
    import torch

    images, targets, skipped = collate_skipping([(torch.zeros(1, 2, 2), 3), None, (torch.ones(1, 2, 2), 4)])
    assert images.shape == (2, 1, 2, 2) and targets.tolist() == [3, 4] and skipped == 1


def test_empty_image_folder_names_the_layout(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    cfg = tiny_config(Path("unused"), tmp_path, data={"dataset": "imagefolder", "in_chans": 3})
    with pytest.raises(DatasetNotFoundError, match=r"train.*ImageFolder layout"):
        build_dataset(cfg.data, "train", None)
