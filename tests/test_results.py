"""The result.json schema: round trip, atomic write, and every malformed input named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visbench import results as R


def _result(**overrides) -> dict:
    base = R.make_result(
        model="gated_cnn_tiny",
        task="classification",
        dataset="fashion_mnist",
        input_size=(64, 64),
        params=1234,
        macs=56789,
        metrics={"top1": 81.25, "top5": 99.0},
        start_time=R.now_iso(),
        seed=0,
    )
    base.update(overrides)
    return base


def test_round_trip_fills_version_and_names(tmp_path: Path) -> None:
    result = _result()
    del result["schema_version"]
    path = R.write_result(tmp_path / "run", result)
    back = R.read_result(path)
    assert path.name == "result.json"
    assert back["schema_version"] == R.SCHEMA_VERSION
    assert (back["family"], back["mixer"], back["order"], back["body"]) == (
        "gated_cnn",
        "conv",
        "full",
        "hierarchical",
    )
    assert back["metrics"] == {"top1": 81.25, "top5": 99.0}
    assert not [p for p in (tmp_path / "run").iterdir() if p.name != "result.json"], "temp file left behind"


def test_write_refuses_invalid_result_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="metrics.top1"):
        R.write_result(tmp_path, _result(metrics={"top5": 90.0}))
    assert not (tmp_path / "result.json").exists()


def test_environment_info_records_threads_tf32_and_versions() -> None:
    env = R.environment_info(amp="bf16")
    assert env["device"].startswith(("cpu:", "cuda:"))
    assert {"torch", "timm", "visbench", "python"} <= set(env["versions"])
    for key in ("threads", "tf32_matmul", "tf32_cudnn", "cuda", "float32_matmul_precision"):
        assert key in env["environment"]
    assert env["environment"]["amp"] == "bf16"


def test_git_commit_is_none_outside_a_repository(tmp_path: Path) -> None:
    assert R.git_commit(tmp_path) == (None, None)


def test_config_hash_of_path_equals_hash_of_its_text(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: vit_small\n")
    assert R.config_hash(cfg) == R.config_hash("model: vit_small\n")
    assert R.config_hash(cfg) != R.config_hash("model: vit_base\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        R.config_hash(tmp_path / "missing.yaml")


def test_mmdet_metrics_become_percent_and_minus_one_becomes_null() -> None:
    got = R.coco_metrics_from_mmdet(
        {"coco/bbox_mAP": 0.374, "coco/bbox_mAP_s": -1.0, "coco/segm_mAP_50": 0.5}
    )
    assert got == {"bbox_mAP": 37.4, "bbox_mAP_s": None, "segm_mAP_50": 50.0}


def test_timm_names_are_described() -> None:
    assert R.describe_model("mambaout_femto") == dict(
        family="gated_cnn", mixer="conv", order="full", body="hierarchical"
    )
    assert R.describe_model("vit_small_patch16_224")["body"] == "isotropic"
    assert R.describe_model("some_unknown_net")["family"] == "unknown"


def test_model_facts_are_naming_s() -> None:
    from visbench.backbones.naming import describe

    d = describe("gated_cnn_tiny")
    assert R.describe_model("gated_cnn_tiny") == dict(
        family=d.family, mixer=d.mixer, order=d.order, body=d.body
    )


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty result file"),
        ('{"schema_version": 1, "model": "vit_sm', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_half_written_or_non_object_files_name_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        R.read_result(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema_version": 99}, "schema_version"),
        ({"task": "segmentation"}, "task"),
        ({"input_size": [64]}, "input_size"),
        ({"params": -1}, "params"),
        ({"params": 1.5}, "params"),
        ({"macs": "many"}, "macs"),
        ({"seed": "zero"}, "seed"),
        ({"metrics": {"top1": 181.0}}, "metrics.top1"),
        ({"metrics": {"top1": 50.0, "loss": "nan"}}, "metrics.loss"),
        ({"throughput": {"img_per_s": 0, "batch_size": 1, "device": "cpu"}}, "throughput.img_per_s"),
        ({"end_time": "yesterday"}, "end_time"),
        ({"end_time": "2000-01-01T00:00:00+00:00"}, "end_time"),
        ({"top1": 50.0}, "top1"),
    ],
)
def test_malformed_field_is_named(tmp_path: Path, change: dict, field: str) -> None:
    data = _result()
    data.update(change)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"field '{field}'") as info:
        R.read_result(path)
    assert str(path) in str(info.value)


def test_missing_field_is_named(tmp_path: Path) -> None:
    data = _result()
    del data["dataset"]
    path = tmp_path / "result.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="field 'dataset': missing"):
        R.read_result(path)


def test_detection_requires_bbox_map_and_segmentation_requires_segm_map() -> None:
    R.validate_result(_result(task="detection", metrics={"bbox_mAP": 10.0}))
    with pytest.raises(ValueError, match="metrics.segm_mAP"):
        R.validate_result(_result(task="instance_segmentation", metrics={"bbox_mAP": 10.0}))


def test_load_results_skips_invalid_only_when_asked(tmp_path: Path) -> None:
    R.write_result(tmp_path / "good", _result())
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "result.json").write_text("{")
    with pytest.raises(ValueError, match="bad"):
        R.load_results([tmp_path])
    good, bad = R.load_results([tmp_path], skip_invalid=True)
    assert [p.parent.name for p, _ in good] == ["good"]
    assert [p.parent.name for p, _ in bad] == ["bad"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        R.load_results([tmp_path / "nowhere"])
