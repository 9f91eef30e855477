"""The embedded detection sets: COCO files that pycocotools reads back exactly, and clear errors."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from visbench.data.coco import CocoFormatError, load_coco, mask_to_box, mask_to_rle, rle_to_mask
from visbench.embedded_data import (
    DEEPFOREST,
    DEFAULT_CACHE,
    STARDIST,
    Sample,
    fashion_canvases,
    make_deepforest,
    make_fashion_mnist,
    make_stardist,
    parse_size,
    parse_voc_boxes,
    split_held_out,
    tile_sample,
)


def _wheel_cache() -> Path:
    """The wheel cache, or a skip when the wheels are neither cached nor downloadable."""
    from visbench.embedded_data import fetch_wheel

    try:
        fetch_wheel(DEEPFOREST, DEFAULT_CACHE)
        fetch_wheel(STARDIST, DEFAULT_CACHE)
    except RuntimeError as err:  # pragma: no cover - offline machine without the cached wheels
        pytest.skip(f"deepforest / stardist wheels unavailable: {err}")
    return DEFAULT_CACHE


def _ground_truth_as_detections(ann_file: Path, with_masks: bool) -> dict[str, float]:
    """Score the ground truth itself as detections with pycocotools: every AP must be 1."""
    pycocotools = pytest.importorskip(
        "pycocotools", reason="pycocotools is installed by scripts/install_det.sh"
    )
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    del pycocotools
    gt = COCO(str(ann_file))
    results = {}
    for iou_type in ("bbox", "segm") if with_masks else ("bbox",):
        dets = []
        for ann in gt.dataset["annotations"]:
            det = {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": ann["bbox"],
                "score": 1.0,
            }
            if iou_type == "segm":
                h, w = ann["segmentation"]["size"]
                rle = mask_utils.frPyObjects(ann["segmentation"], h, w)
                rle["counts"] = rle["counts"].decode("ascii")
                det["segmentation"] = rle
            dets.append(det)
        evaluator = COCOeval(gt, gt.loadRes(dets), iou_type)
        evaluator.params.maxDets = [1, 10, 100]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        results[iou_type] = float(evaluator.stats[0])
    return results


def test_rle_round_trips_and_matches_pycocotools():
    rng = np.random.default_rng(0)
    mask = rng.random((13, 17)) > 0.6
    mask[0, 0] = True  # a run that starts with foreground
    rle = mask_to_rle(mask)
    assert np.array_equal(rle_to_mask(rle), mask)
    mask_utils = pytest.importorskip("pycocotools.mask")
    decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 13, 17))
    assert np.array_equal(decoded.astype(bool), mask)
    assert mask_to_box(mask) == [0.0, 0.0, 17.0, 13.0] or mask_to_box(mask)[:2] == [0.0, 0.0]


def test_tiles_clip_boxes_and_hold_out_whole_tiles():
    pixels = np.zeros((100, 150, 3), np.uint8)
    boxes = [[10.0, 10.0, 20.0, 20.0], [70.0, 40.0, 10.0, 10.0], [45.0, 45.0, 10.0, 10.0]]
    tiles = tile_sample(Sample("img", pixels, boxes, [0, 0, 0]), tile=50)
    assert len(tiles) == 6 and all(t.pixels.shape[:2] == (50, 50) for t in tiles)
    by_name = {t.name: t for t in tiles}
    assert by_name["img_r0_c0"].boxes == [[10.0, 10.0, 20.0, 20.0]]
    assert by_name["img_r0_c1"].boxes == [[20.0, 40.0, 10.0, 10.0]]  # moved into the tile's frame
    # the box across four tiles has a quarter in each: below min_visible=0.5, so it is in none
    assert sum(len(t.boxes) for t in tiles) == 2
    split = split_held_out(tiles, 0.34, seed=0)
    assert len(split["val"]) == 2 and len(split["train"]) == 4
    assert {t.name for t in split["val"]}.isdisjoint(t.name for t in split["train"])


def test_voc_parser_names_the_file_and_object_of_a_broken_box():
    xml = b"<annotation><object><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>9</xmax><ymax>8</ymax>"
    xml += b"</bndbox></object>"
    xml += b"<object><bndbox><xmin>1</xmin><ymin>x</ymin><xmax>9</xmax><ymax>8</ymax></bndbox></object>"
    xml += b"</annotation>"
    with pytest.raises(ValueError, match=r"trees\.xml: object 1"):
        parse_voc_boxes(xml, "trees.xml", (10, 10))
    assert parse_voc_boxes(
        xml.split(b"<object><bndbox><xmin>1</xmin><ymin>x")[0] + b"</annotation>", "t", (10, 10)
    ) == [[1.0, 2.0, 8.0, 6.0]]


def test_fashion_canvases_have_one_box_and_mask_per_item(fashion_mnist_dir):
    from visbench.data.fashion_mnist import load_fashion_mnist

    images, labels = load_fashion_mnist(fashion_mnist_dir, "test")
    samples = fashion_canvases(images[:200], labels[:200], 8, 96, 160, 5, seed=3, prefix="t")
    again = fashion_canvases(images[:200], labels[:200], 8, 96, 160, 5, seed=3, prefix="t")
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(samples, again))  # fixed seed
    for s in samples:
        assert s.pixels.shape == (96, 160) and 1 <= len(s.boxes) <= 5
        union = np.zeros((96, 160), int)
        for box, mask in zip(s.boxes, s.masks):
            assert mask_to_box(mask) == box
            union += mask
        assert union.max() == 1  # items never overlap
        assert np.array_equal(s.pixels > 0, union > 0) or (s.pixels[union == 0] == 0).all()


def test_fashion_set_round_trips_through_pycocotools(tmp_path, fashion_mnist_dir):
    set_dir = make_fashion_mnist(tmp_path, 64, 96, num_train=6, num_val=5, seed=0, root=fashion_mnist_dir)
    for split in ("train", "val"):
        coco = load_coco(set_dir / "annotations" / f"{split}.json")
        assert [c["name"] for c in coco["categories"]][:2] == ["T-shirt/top", "Trouser"]
        assert all((set_dir / split / img["file_name"]).is_file() for img in coco["images"])
    ap = _ground_truth_as_detections(set_dir / "annotations" / "val.json", with_masks=True)
    assert ap == {"bbox": pytest.approx(1.0), "segm": pytest.approx(1.0)}


def test_stardist_and_deepforest_sets_from_the_wheels(tmp_path):
    cache = _wheel_cache()
    df = make_deepforest(tmp_path, tile=400, cache_dir=cache)
    sd = make_stardist(tmp_path, tile=256, cache_dir=cache)
    df_counts = [len(load_coco(df / "annotations" / f"{s}.json")["annotations"]) for s in ("train", "val")]
    sd_counts = [len(load_coco(sd / "annotations" / f"{s}.json")["annotations"]) for s in ("train", "val")]
    # 951 trees and 125 nuclei in the packages; a few are lost where tiles cut them
    assert 900 <= sum(df_counts) <= 951 and min(df_counts) > 0
    assert 110 <= sum(sd_counts) <= 125 and min(sd_counts) > 0
    assert _ground_truth_as_detections(df / "annotations" / "val.json", with_masks=False)[
        "bbox"
    ] == pytest.approx(1.0)
    assert _ground_truth_as_detections(sd / "annotations" / "val.json", with_masks=True)[
        "segm"
    ] == pytest.approx(1.0)


def test_wheel_data_is_read_without_importing_the_package(tmp_path):
    from visbench.embedded_data import read_stardist

    cache = _wheel_cache()
    wheel = sorted(cache.glob("stardist-*.whl"))[0]
    sample = read_stardist(wheel)
    assert sample.pixels.dtype == np.uint8 and sample.pixels.shape == (512, 512)
    assert len(sample.masks) == 125
    import sys

    assert "stardist" not in sys.modules and "deepforest" not in sys.modules
    with zipfile.ZipFile(wheel) as z:
        image_bytes = z.read("stardist/data/images/img2d.tif")
    broken = tmp_path / "stardist-0.0-py3-none-any.whl"
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("stardist/data/images/img2d.tif", image_bytes)
    with pytest.raises(FileNotFoundError, match=r"stardist-0\.0-py3-none-any\.whl: no file .*mask2d\.tif"):
        read_stardist(broken)
    with zipfile.ZipFile(broken, "w") as z:
        z.writestr("stardist/data/images/img2d.tif", b"not a tiff")
    with pytest.raises(ValueError, match=r"img2d\.tif is not a readable image"):
        read_stardist(broken)


def test_malformed_annotation_file_names_file_and_record(tmp_path, fashion_mnist_dir):
    set_dir = make_fashion_mnist(tmp_path, 64, 64, num_train=3, num_val=3, seed=0, root=fashion_mnist_dir)
    good = json.loads((set_dir / "annotations" / "val.json").read_text())
    cases = {
        "bbox": ("bbox", [1, 2, 3], r"annotations\[1\] \(id 2\): 'bbox' must be"),
        "category": ("category_id", 99, r"annotations\[1\] \(id 2\): category_id 99"),
        "image": ("image_id", 1234, r"annotations\[1\] \(id 2\): image_id 1234"),
        "outside": (
            "bbox",
            [60.0, 0.0, 10.0, 10.0],
            r"annotations\[1\] \(id 2\): bbox .* leaves its 64x64 image",
        ),
    }
    for name, (key, value, message) in cases.items():
        bad = copy.deepcopy(good)
        if len(bad["annotations"]) < 2:
            bad["annotations"].append(dict(bad["annotations"][0], id=2))
        bad["annotations"][1][key] = value
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(CocoFormatError, match=rf"{path.name}: {message}"):
            load_coco(path)
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(CocoFormatError, match=r"broken\.json: not valid JSON"):
        load_coco(tmp_path / "broken.json")


def test_canvas_sizes_parse():
    assert parse_size("128") == (128, 128) and parse_size("96x160") == (96, 160)
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="canvas size 'big'"):
        parse_size("big")
