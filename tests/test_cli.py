"""The `visbench` command: lists the subcommands whose modules exist; a user's mistake is one line."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from visbench import cli


def test_help_lists_every_available_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("    ")}
    for name, (module, _) in cli.SUBCOMMANDS.items():
        present = importlib.util.find_spec(module) is not None if _module_parent_exists(module) else False
        assert (name in listed) == present, (
            f"subcommand {name!r} ({module}): listed={name in listed}, present={present}"
        )


def test_unknown_subcommand_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "no-such-command" in capsys.readouterr().err


def _module_parent_exists(module: str) -> bool:
    parent = module.rpartition(".")[0]
    return not parent or importlib.util.find_spec(parent) is not None


# ------------------------------------------------------------------ a user's mistake: one line, exit 2


def _visbench(*argv: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "visbench", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
        check=False,
    )


def _assert_one_line(proc: subprocess.CompletedProcess[str], command: str, *named: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"visbench {command}: error: ") or lines[0].startswith("error: "), lines[0]
    for text in named:
        assert text in lines[0], lines[0]


REPO = Path(__file__).resolve().parent.parent
FASHION_CONFIG = str(REPO / "configs" / "fashion_mnist" / "gated_cnn_tiny.yaml")


def test_unknown_model_in_a_train_override_is_one_line(tmp_path: Path) -> None:
    proc = _visbench("train", FASHION_CONFIG, "model.name=gated_cnn_tiyn", tmp_path=tmp_path)
    _assert_one_line(proc, "train", "gated_cnn_tiyn", "gated_cnn_tiny")


def test_unknown_model_in_bench_is_one_line_with_close_names(tmp_path: Path) -> None:
    proc = _visbench("bench", "--models", "mambaout_tiyn", "--device", "cpu", tmp_path=tmp_path)
    _assert_one_line(proc, "bench", "unknown model 'mambaout_tiyn'", "did you mean", "'mambaout_tiny'")


def test_misspelt_config_key_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = _visbench("train", FASHION_CONFIG, "optim.lrr=0.1", tmp_path=tmp_path)
    _assert_one_line(proc, "train", "optim.lrr", "'lr'")


def test_missing_config_file_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = _visbench("study", "no_such_study.yaml", tmp_path=tmp_path)
    _assert_one_line(proc, "study", "no_such_study.yaml")


def test_missing_run_folder_for_tables_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = _visbench("tables", str(tmp_path / "no_such_runs"), tmp_path=tmp_path)
    _assert_one_line(proc, "tables", "no_such_runs")


def test_bad_value_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = _visbench("bench", "--models", "test_vit", "--sizes", "22x", tmp_path=tmp_path)
    _assert_one_line(proc, "bench", "size '22x'")


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    proc = _visbench("--debug", "tables", str(tmp_path / "no_such_runs"), tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "no_such_runs" in proc.stderr


def test_a_bug_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import types

    def broken_run(args: object) -> int:
        return int("not a number")  # Python's ValueError inside our code: a bug, not the user's mistake

    module = types.SimpleNamespace(add_arguments=lambda parser: None, run=broken_run)
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: module)
    with pytest.raises(ValueError, match="not a number"):
        cli.main(["tables"])


def test_user_errors_are_recognised_by_type() -> None:
    from visbench.config import ConfigError
    from visbench.results import ResultError

    assert cli.user_error_message(ConfigError("optim.lrr: unknown key")) == "optim.lrr: unknown key"
    assert cli.user_error_message(ResultError("r/result.json: field 'macs'")) == "r/result.json: field 'macs'"
    missing = FileNotFoundError(2, "No such file or directory", "x.yaml")
    assert cli.user_error_message(missing) == "No such file or directory: x.yaml"
    assert "did you mean 'vit_small'" in cli.user_error_message(RuntimeError("Unknown model (vit_smal)"))
    assert cli.user_error_message(RuntimeError("CUDA out of memory")) is None
    assert cli.user_error_message(KeyError("x")) is None
