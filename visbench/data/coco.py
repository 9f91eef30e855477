"""COCO-format detection sets: write them, check them, and encode instance masks.

The embedded sets (``visbench make-data``) are written here and read by mmdetection's ``CocoDataset``
and pycocotools. :func:`load_coco` checks a file before a run starts, so a malformed annotation is an
error that names the file and the record instead of a traceback deep inside a data loader.
Masks are stored as COCO's *uncompressed* RLE (``{"counts": [...], "size": [h, w]}``, column-major
runs starting with background), which pycocotools and mmdetection both read; writing it needs
only numpy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visbench.atomic import atomic_write_text


class CocoFormatError(ValueError):
    """A COCO annotation file that does not follow the format; the message names the file and record."""


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Binary mask (H, W) -> COCO uncompressed RLE: run lengths over the column-major pixels, 0s first."""
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle: expected a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    # Positions where the value changes, plus both ends: the differences are the run lengths.
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]  # COCO's runs always start with background
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`mask_to_rle` for uncompressed RLE: -> bool (H, W)."""
    h, w = rle["size"]
    values = np.zeros(len(rle["counts"]), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    if flat.size != h * w:
        raise ValueError(f"rle_to_mask: counts sum to {flat.size}, expected {h}*{w}={h * w}")
    return flat.reshape((h, w), order="F")


def mask_to_box(mask: np.ndarray) -> list[float]:
    """Tight COCO box ``[x, y, w, h]`` (pixel edges) of a non-empty binary mask."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("mask_to_box: the mask is empty")
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def make_coco(
    images: Sequence[dict[str, Any]],
    annotations: Sequence[dict[str, Any]],
    categories: Sequence[str],
    description: str,
) -> dict[str, Any]:
    """Assemble a COCO dict; category ids are 1-based in the order given, annotation ids are assigned."""
    anns = []
    for i, ann in enumerate(annotations, start=1):
        ann = dict(ann)
        ann["id"] = i
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
        anns.append(ann)
    return {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": list(images),
        "annotations": anns,
        "categories": [
            {"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(categories, 1)
        ],
    }


def write_coco(path: Path, coco: dict[str, Any]) -> Path:
    """Check ``coco`` and write it to ``path`` atomically (:mod:`visbench.atomic`)."""
    path = Path(path)
    validate_coco(coco, source=f"{path} (not written)")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(coco, separators=(",", ":")))
    return path


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def validate_coco(coco: Any, source: str = "annotations") -> dict[str, Any]:
    """Check the parts of COCO's format that training and evaluation rely on.

    ``CocoFormatError`` names ``source`` and the record at fault (``annotations[12] (id 13)``) and says
    what was expected. Returns ``coco`` unchanged.
    """
    if not isinstance(coco, dict):
        raise CocoFormatError(f"{source}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise CocoFormatError(f"{source}: key {key!r} missing or not a list")

    category_ids = set()
    for i, cat in enumerate(coco["categories"]):
        if (
            not isinstance(cat, dict)
            or not isinstance(cat.get("id"), int)
            or not isinstance(cat.get("name"), str)
        ):
            raise CocoFormatError(
                f"{source}: categories[{i}]: expected {{'id': int, 'name': str}}, got {cat!r}"
            )
        category_ids.add(cat["id"])

    sizes: dict[int, tuple[int, int]] = {}
    for i, img in enumerate(coco["images"]):
        where = f"{source}: images[{i}]"
        if not isinstance(img, dict):
            raise CocoFormatError(f"{where}: expected an object, got {img!r}")
        for key, kind in (("id", int), ("file_name", str), ("width", int), ("height", int)):
            if not isinstance(img.get(key), kind):
                raise CocoFormatError(f"{where}: field {key!r} must be {kind.__name__}, got {img.get(key)!r}")
        if img["width"] <= 0 or img["height"] <= 0:
            raise CocoFormatError(f"{where} (id {img['id']}): width and height must be positive")
        if img["id"] in sizes:
            raise CocoFormatError(f"{where}: duplicate image id {img['id']}")
        sizes[img["id"]] = (img["height"], img["width"])

    ann_ids = set()
    for i, ann in enumerate(coco["annotations"]):
        where = f"{source}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise CocoFormatError(f"{where}: expected an object, got {ann!r}")
        where += f" (id {ann.get('id')!r})"
        if not isinstance(ann.get("id"), int) or ann["id"] in ann_ids:
            raise CocoFormatError(f"{where}: 'id' must be a unique int")
        ann_ids.add(ann["id"])
        if ann.get("image_id") not in sizes:
            raise CocoFormatError(f"{where}: image_id {ann.get('image_id')!r} is not an image of this file")
        if ann.get("category_id") not in category_ids:
            raise CocoFormatError(
                f"{where}: category_id {ann.get('category_id')!r} is not one of {sorted(category_ids)}"
            )
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise CocoFormatError(f"{where}: 'bbox' must be [x, y, w, h] of 4 finite numbers, got {box!r}")
        h, w = sizes[ann["image_id"]]
        x, y, bw, bh = box
        if bw <= 0 or bh <= 0:
            raise CocoFormatError(f"{where}: bbox {box} has non-positive width or height")
        if x < 0 or y < 0 or x + bw > w + 1e-3 or y + bh > h + 1e-3:
            raise CocoFormatError(f"{where}: bbox {box} leaves its {w}x{h} image (id {ann['image_id']})")
        if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
            raise CocoFormatError(f"{where}: 'area' must be a non-negative number, got {ann['area']!r}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise CocoFormatError(f"{where}: 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
        seg = ann.get("segmentation")
        if seg is None or seg == []:
            continue
        if isinstance(seg, dict):
            if seg.get("size") != [h, w]:
                raise CocoFormatError(
                    f"{where}: segmentation size {seg.get('size')!r} is not the image's [{h}, {w}]"
                )
            counts = seg.get("counts")
            if isinstance(counts, list) and sum(counts) != h * w:
                raise CocoFormatError(f"{where}: RLE counts sum to {sum(counts)}, expected {h}*{w}")
            if not isinstance(counts, (list, str)):
                raise CocoFormatError(f"{where}: RLE 'counts' must be a list or a string")
        elif isinstance(seg, list):
            for poly in seg:
                if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0):
                    raise CocoFormatError(f"{where}: polygon must be a flat list of >= 3 (x, y) pairs")
        else:
            raise CocoFormatError(
                f"{where}: 'segmentation' must be polygons or RLE, got {type(seg).__name__}"
            )
    return coco


def load_coco(path: Path) -> dict[str, Any]:
    """Read and check a COCO annotation file; errors name the file (and the record at fault)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CocoFormatError(f"{path}: cannot read annotation file ({err.strerror or err})") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CocoFormatError(f"{path}: not valid JSON at line {err.lineno} column {err.colno}") from err
    return validate_coco(data, source=str(path))
