"""visbench.gpu_check on CPU: arguments, budget, summary, the no-GPU path, and its check functions.

The GPU check's numerical checks are the functions of ``visbench.kernels.checks`` that the kernel tests
call; here they run on CPU (the Triton scan under ``TRITON_INTERPRET=1``, in a fresh process when this one
imported triton in compiled mode), together with the model-level checks on small inputs, and are shown
to fail on a wrong result. Nothing here is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from visbench.kernels import checks, scan_cpu

from visbench import gpu_check
from visbench.gpu_check import Budget, Record, format_summary, parse_args, write_summary

REPO = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _python(args: list[str], env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ----------------------------------------------------------------------------- arguments


def test_defaults_run_every_section_in_order_within_eight_minutes() -> None:
    args = parse_args([])
    assert args.sections == list(gpu_check.SECTIONS)
    assert args.device == "cuda" and not args.quick and not args.skip_install
    assert args.budget_s == 480.0 and sum(gpu_check.SECTIONS.values()) <= args.budget_s


def test_sections_are_put_in_run_order_and_options_parse() -> None:
    args = parse_args(
        ["--sections", "bench,scan", "--quick", "--skip-install", "--budget-s", "60", "--out", "x"]
    )
    assert args.sections == ["scan", "bench"]
    assert args.quick and args.skip_install and args.budget_s == 60.0 and args.out == Path("x")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sections", "scan,gpu"], "--sections: unknown ['gpu']"),
        (["--sections", ","], "--sections: unknown empty"),
        (["--budget-s", "0"], "--budget-s: expected a positive"),
        (["--install-budget-s", "-1"], "--install-budget-s: expected >= 0"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


# ----------------------------------------------------------------------------- no GPU


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [gpu_check.NO_GPU_LINE] and err == ""
    assert not any(tmp_path.iterdir())


def test_the_script_without_a_gpu_prints_one_line_and_exits_0() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--skip-install"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.splitlines()) == 1 and "no CUDA GPU" in result.stdout


# ----------------------------------------------------------------------------- records, budget, summary


def test_record_status_is_checked() -> None:
    with pytest.raises(ValueError, match="status 'ok'"):
        Record("scan", "x", "ok")


def test_one_line_errors() -> None:
    assert gpu_check.one_line(ValueError("a\n  b")) == "ValueError: a b"
    assert gpu_check.one_line(RuntimeError()) == "RuntimeError"
    assert len(gpu_check.one_line(ValueError("x" * 1000), limit=50)) == 50


def test_a_section_deadline_is_its_cap_or_the_budget_end_whichever_is_first() -> None:
    clock = FakeClock()
    budget = Budget(100.0, {"a": 30.0, "b": 90.0}, clock)
    assert budget.section_deadline("a") == 130.0
    clock.now = 150.0
    assert budget.section_deadline("b") == 200.0  # the budget's end, not 150 + 90
    assert budget.elapsed() == 50.0 and budget.left(200.0) == 50.0


def test_items_past_the_deadline_are_skipped_and_errors_recorded_in_one_line() -> None:
    clock = FakeClock()

    def slow() -> dict:
        clock.now += 10
        return {"loss": 1.5}

    def broken() -> dict:
        clock.now += 10
        raise AssertionError("loss is nan\nsee above")

    items = [("slow", slow), ("broken", broken), ("late", slow)]
    records = list(gpu_check._items("train", items, deadline=125.0, clock=clock))
    assert [(r.name, r.status) for r in records] == [("slow", "pass"), ("broken", "fail"), ("late", "skip")]
    assert records[0].seconds == 10 and records[0].values == {"loss": 1.5} and records[0].detail == "loss 1.5"
    assert records[1].detail == "AssertionError: loss is nan see above"
    assert records[2].detail == "skipped: time"


def test_a_section_that_raises_is_recorded_and_keeps_what_it_did() -> None:
    def section():
        yield Record("conv", "first", "pass")
        raise RuntimeError("CUDA error: an illegal memory access")

    records: list[Record] = []
    gpu_check._run_section("conv", section(), records.append)
    assert [(r.name, r.status) for r in records] == [("first", "pass"), ("conv section", "fail")]
    assert records[1].detail == "RuntimeError: CUDA error: an illegal memory access"


@pytest.mark.parametrize(
    ("done", "failures", "status", "detail"),
    [
        (5, [], "pass", "5 cases"),
        (3, [], "pass", "3/5 cases (2 skipped: time)"),
        (0, [], "skip", "skipped: time"),
        (
            4,
            ["AssertionError: out", "AssertionError: dB"],
            "fail",
            "2/4 cases failed; first: AssertionError: out",
        ),
    ],
)
def test_grid_records(done, failures, status, detail) -> None:
    record = gpu_check._grid_record("scan", "triton vs ref float32", done, 5, failures, 1.0)
    assert (record.status, record.detail) == (status, detail)
    assert record.values == {"cases_run": done, "cases": 5, "cases_failed": len(failures)}


def _made_up_records() -> list[Record]:
    return [
        Record("install", "selective_scan_cuda imports", "pass", "already built"),
        Record("scan", "triton vs ref float32", "pass", "32 cases", 12.5, {"cases_run": 32, "cases": 32}),
        Record(
            "scan", "cuda vs ref bfloat16", "fail", "AssertionError: cuda b2-d4 dB: 3 / 64 mismatched", 3.0
        ),
        Record("train", "vim_tiny", "skip", "skipped: time"),
        Record(
            "scan_timing",
            "scan fwd L=196",
            "pass",
            "triton 0.1 ms, cuda 0.05 ms",
            1.0,
            {
                "mode": "fwd",
                "L": 196,
                "shape": "b2 d192 N16",
                "triton_ms": 0.1,
                "cuda_ms": 0.05,
                "triton_over_cuda": 2.0,
            },
        ),
        Record(
            "bench",
            "bench gated_cnn_tiny",
            "pass",
            "",
            9.0,
            {
                "family": "gated_cnn",
                "train_img_per_s": 1500.0,
                "img_per_s": 5000.0,
                "batch": 64,
                "peak_mib": 8000,
            },
        ),
    ]


def test_summary_table_shows_each_check_with_its_result_and_the_timings() -> None:
    meta = {"gpu": "NVIDIA H200", "torch": "2.14.1", "wall_s": 400.0, "budget_s": 480.0, "complete": True}
    text = format_summary(_made_up_records(), meta)
    lines = text.splitlines()
    assert lines[0] == "## GPU check: NVIDIA H200"
    assert "4 pass, 1 fail, 1 skipped; checks took 400 s of a 480 s budget" in text
    header = lines.index("| section | check | result | s | detail |")
    rows = lines[header + 2 : header + 8]
    assert all(row.startswith("| ") and row.count(" | ") == 4 for row in rows)
    assert (
        "| scan | cuda vs ref bfloat16 | FAIL | 3.0 | AssertionError: cuda b2-d4 dB: 3 / 64 mismatched |"
        in rows
    )
    assert "| scan | triton vs ref float32 | PASS | 12.5 | 32 cases |" in rows
    assert "| train | vim_tiny | skip | 0.0 | skipped: time |" in rows
    assert "| fwd | 196 | 0.1 | 0.05 | 2.0 |" in lines
    assert "| gated_cnn_tiny | gated_cnn | 1500.0 | 5000.0 | 8000 |" in lines


def test_an_incomplete_run_says_so() -> None:
    text = format_summary([], {"complete": False, "wall_s": 10, "budget_s": 480})
    assert "(incomplete)" in text and "0 pass, 0 fail, 0 skipped" in text


def test_summary_json_and_markdown_are_written(tmp_path) -> None:
    records = _made_up_records()
    meta = {"gpu": "NVIDIA H200", "wall_s": 1.0, "budget_s": 480.0}
    path = write_summary(records, meta, tmp_path / "out")
    payload = json.loads(path.read_text())
    assert payload["schema"] == gpu_check.SCHEMA and payload["meta"] == meta
    assert payload["counts"] == {"pass": 4, "fail": 1, "skip": 1}
    assert len(payload["records"]) == len(records)
    failed = [r for r in payload["records"] if r["status"] == "fail"]
    assert [r["name"] for r in failed] == ["cuda vs ref bfloat16"]
    assert set(payload["records"][0]) == {"section", "name", "status", "detail", "seconds", "values"}
    assert (tmp_path / "out" / "gpu_check.md").read_text() == format_summary(records, meta)


# ----------------------------------------------------------------------------- plan and set-up


def test_the_cuda_plan_covers_the_issue_grid() -> None:
    plan = gpu_check.make_plan("cuda")
    lengths = {case.length for case in plan.scan_cases}
    assert min(lengths) == 1 and max(lengths) == 4096 and 2049 in lengths
    assert {case.bc_layout for case in plan.scan_cases} == {"shared", "grouped"}
    assert set(plan.scan_dtypes) == {"float32", "bfloat16", "float16"}
    assert plan.train_size == plan.bench_size == 224
    assert min(plan.timing_lengths) == 196 and max(plan.timing_lengths) == 16384
    quick = gpu_check.make_plan("cuda", quick=True)
    assert len(quick.scan_cases) < len(plan.scan_cases) and max(c.length for c in quick.scan_cases) == 4096


def test_every_family_has_a_tiny_model_to_train_and_the_images_are_timed() -> None:
    from visbench.backbones.naming import MODEL_FAMILIES, describe

    names = gpu_check.tiny_models()
    assert {describe(n).family for n in names} == {f.family for f in MODEL_FAMILIES.values()}
    assert {describe(n).body for n in names} == {"hierarchical", "isotropic", "sequence"}
    assert gpu_check.image_models() == [n for n in names if describe(n).body != "sequence"]


def test_install_commands_build_the_cuda_extensions_mamba_keeping_its_scan() -> None:
    commands = gpu_check.install_commands(
        ["selective_scan_cuda", "causal_conv1d_cuda"], python="py", arch="9.0"
    )
    (conv, conv_env), (mamba, mamba_env) = commands  # causal-conv1d first
    for command in (conv, mamba):
        assert command[:4] == ["py", "-m", "pip", "install"]
        assert {"--no-build-isolation", "--no-deps", "--no-cache-dir", "--force-reinstall"} <= set(command)
    assert conv[-1].startswith("causal-conv1d") and mamba[-1].startswith("mamba-ssm")
    assert mamba_env["MAMBA_KEEP_CUDA_BUILD"] == "TRUE" and mamba_env["MAMBA_FORCE_BUILD"] == "TRUE"
    assert conv_env["CAUSAL_CONV1D_FORCE_BUILD"] == "TRUE"
    if "TORCH_CUDA_ARCH_LIST" not in os.environ:
        assert mamba_env["TORCH_CUDA_ARCH_LIST"] == "9.0"
    assert gpu_check.install_commands(["causal_conv1d_cuda"], python="py")[0][0][-1].startswith(
        "causal-conv1d"
    )


def test_install_step_reports_rather_than_fails(monkeypatch) -> None:
    monkeypatch.setattr(gpu_check, "extension_import_error", lambda module: None)
    records = list(gpu_check.install_section(100.0, "9.0"))
    assert [(r.name, r.status) for r in records] == [
        ("causal_conv1d_cuda imports", "pass"),
        ("selective_scan_cuda imports", "pass"),
    ]
    monkeypatch.setattr(gpu_check, "extension_import_error", lambda module: f"ModuleNotFoundError: {module}")
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    records = list(gpu_check.install_section(100.0, "9.0"))
    assert [r.status for r in records] == ["skip", "skip"] and "no nvcc" in records[0].detail


def test_a_missing_extension_is_probed_in_a_fresh_process() -> None:
    assert gpu_check.extension_import_error("json") is None
    assert "No module named" in gpu_check.extension_import_error("visbench_no_such_extension")


# ----------------------------------------------------------------------------- the check functions on CPU


def test_scan_check_passes_for_a_right_backend_and_names_a_wrong_one(monkeypatch) -> None:
    case = checks.ScanCase(2, 8, 4, 9, "grouped", True, True, True, True, True)
    checks.assert_backend_matches_ref("cpu", case, torch.bfloat16, "cpu", ref_device=None)
    original = scan_cpu.selective_scan_fwd

    def off_by_a_little(*args, **kwargs):
        out, *rest = original(*args, **kwargs)  # (out, last_state[, saved states])
        return (out + 0.05, *rest)

    monkeypatch.setattr(scan_cpu, "selective_scan_fwd", off_by_a_little)
    with pytest.raises(
        AssertionError, match=r"^cpu b2-d8-n4-L9-grouped-last-.* out: Tensor-likes are not close"
    ) as err:
        checks.assert_backend_matches_ref("cpu", case, torch.float32, "cpu")
    assert "\n" not in str(err.value)


def test_scan_section_aggregates_cases_and_keeps_going_after_a_failure(monkeypatch) -> None:
    plan = gpu_check.make_plan("cpu", quick=True)
    monkeypatch.setattr("visbench.kernels.scan_triton.is_available", lambda device: True)
    calls = []

    def fake_check(backend, case, dtype, device, ref_device="cpu"):
        calls.append((backend, case.length, dtype))
        if case.length == 65 and dtype == torch.bfloat16:
            raise AssertionError(f"{backend} {case} dB: mismatch")

    monkeypatch.setattr(checks, "assert_backend_matches_ref", fake_check)
    records = list(gpu_check.scan_section("cpu", float("inf"), plan))
    by_name = {r.name: r for r in records}
    assert by_name["cuda vs ref"].status == "skip"
    assert by_name["triton vs ref float32"].status == "pass"
    assert by_name["triton vs ref bfloat16"].status == "fail"
    assert by_name["triton vs ref bfloat16"].detail.startswith(
        "2/4 cases failed; first: AssertionError: triton"
    )
    assert "dB: mismatch" in by_name["triton vs ref bfloat16"].detail
    assert len(calls) == len(plan.scan_cases) * len(
        plan.scan_dtypes
    )  # every case ran, also after the failure


def test_triton_scan_and_conv_checks_run_on_cpu_through_the_command(tmp_path) -> None:
    """The script itself, end to end on CPU: Triton in its interpreter against ref, the conv kernels."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_INTERPRET"] = "1"
    args = [
        "-m",
        "visbench.gpu_check",
        "--device",
        "cpu",
        "--quick",
        "--sections",
        "scan,conv",
        "--out",
        str(tmp_path),
    ]
    result = _python(args, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = {r["name"]: r["status"] for r in payload["records"]}
    assert statuses["triton vs ref float32"] == "pass" and statuses["triton vs ref bfloat16"] == "pass"
    assert statuses["CPU kernels vs reference float32"] == "pass"
    assert payload["meta"]["complete"] is True and payload["counts"]["fail"] == 0
    assert "| scan | triton vs ref float32 | PASS |" in result.stdout


def test_conv_check_passes_and_names_a_wrong_kernel(monkeypatch) -> None:
    checks.assert_causal_conv1d_matches_reference(
        8, 4, 37, torch.float32, "cpu", "silu", True, channel_last=True
    )
    checks.assert_causal_conv1d_matches_reference(8, 2, 5, torch.bfloat16, "cpu", None, False)
    original = checks.causal_conv1d
    monkeypatch.setattr(checks, "causal_conv1d", lambda x, *a: original(x, *a) * 1.01)
    with pytest.raises(AssertionError, match="causal_conv1d dim8-w4-L37-float32-silu-bias out"):
        checks.assert_causal_conv1d_matches_reference(8, 4, 37, torch.float32, "cpu")


@pytest.mark.parametrize("name", ["vit_tiny", "seq_ssm_causal_tiny"])
def test_train_step_check_on_cpu(name) -> None:
    values = gpu_check.train_step_check(name, "cpu", size=32, batch_size=2)
    assert values["logits_dtype"] == "bfloat16" and values["loss"] > 0
    assert values["input"] == ("2x3x32x32" if name == "vit_tiny" else "2x1x28x28")


def test_train_step_check_fails_on_a_non_finite_loss(monkeypatch) -> None:
    class Broken(torch.nn.Module):
        num_classes = 10

        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan")) * self.weight

    monkeypatch.setattr("visbench.bench.build_model", lambda *args, **kwargs: Broken())
    with pytest.raises(AssertionError, match="broken_tiny: loss is nan"):
        gpu_check.train_step_check("broken_tiny", "cpu", size=32)


def test_mask_rcnn_iteration_check_on_cpu() -> None:
    pytest.importorskip("mmdet", reason="mmdetection is not installed (scripts/install_det.sh)")
    pytest.importorskip("mmcv.ops", reason="mmcv's compiled ops are not installed (scripts/install_det.sh)")
    values = gpu_check.mask_rcnn_iteration_check("cpu", "ssm_cross2d_tiny", side=64)
    assert {"loss", "loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"} <= set(values)
