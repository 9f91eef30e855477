"""benchmarks/sequence_bodies.py: its worker imports the tree it is given and times every body."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "sequence_bodies.py"
TINY = ["--rounds", "1", "--steps", "1", "--warmup", "0", "--batch-size", "1", "--side", "28"]
TINY += ["--threads", "1"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_worker_times_every_body_from_this_tree():
    models = "seq_gated_cnn_tiny,seq_ssm_bidir_tiny,seq_attn_causal_tiny"
    done = _run("--worker", "--tree", str(ROOT), "--models", models, *TINY)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["tree"] == str(ROOT)
    assert set(record["median_s"]) == set(models.split(","))
    assert all(seconds > 0 for seconds in record["median_s"].values())
    assert record["allocator"] == "system default"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's mallopt")
def test_worker_keeps_freed_memory_with_this_checkouts_setting():
    done = _run(
        "--worker", "--tree", str(ROOT), "--models", "seq_gated_cnn_tiny", "--keep-freed-memory", *TINY
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["allocator"].startswith("glibc, freed memory kept"), record["allocator"]


def test_worker_imports_the_given_tree_not_the_installed_one(tmp_path):
    """A tree whose visbench package differs from the installed one is the one imported."""
    for package in ("visbench", "kernels", "backbones", "configs"):
        (tmp_path / package).mkdir()
    (tmp_path / "visbench" / "__init__.py").write_text("raise ImportError('the fake tree was imported')\n")
    for package in ("kernels", "backbones", "configs"):
        (tmp_path / package / "__init__.py").write_text("")
    done = _run("--worker", "--tree", str(tmp_path), "--models", "seq_gated_cnn_tiny", *TINY)
    assert done.returncode != 0
    assert "the fake tree was imported" in done.stderr


def test_table_compares_trees():
    done = _run("--trees", f"{ROOT},{ROOT}", "--runs", "1", "--models", "seq_gated_cnn_tiny", *TINY)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("| model |") and lines[0].count("/") == 1
    assert lines[-1].startswith("| seq_gated_cnn_tiny |") and lines[-1].endswith("x |")
