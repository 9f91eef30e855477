"""The one atomic writer: a crash mid-write leaves the old content, and no temporary file stays behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from visbench.atomic import TMP_PREFIX, atomic_directory, atomic_write_bytes, atomic_write_text

REPO = Path(__file__).resolve().parent.parent


def test_write_replaces_the_content_and_leaves_only_the_target(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    assert atomic_write_text(target, "new ✓") == target
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_new_file_gets_the_umask_mode_not_a_private_one(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o644


def test_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "annotations.json"
    target.write_text("old")

    def no_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["annotations.json"]


_KILLED_MID_WRITE = """
import os, signal, sys
from visbench.atomic import atomic_write_bytes

os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # die after the bytes, before the rename
atomic_write_bytes(sys.argv[1], b"new" * 100_000)
"""


def test_process_killed_mid_write_leaves_the_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_MID_WRITE, str(target)], env=env, timeout=120)
    assert proc.returncode == -9
    assert target.read_text() == "old"
    # A killed writer cannot clean up; what it leaves is a hidden temporary, never the target's name.
    assert all(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir() if p != target)


def test_directory_appears_whole_and_replaces_an_older_one(tmp_path: Path) -> None:
    target = tmp_path / "epoch0001"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    with atomic_directory(target) as tmp:
        assert not target.joinpath("model.bin").exists()
        (tmp / "model.bin").write_bytes(b"weights")
        (tmp / "state.pt").write_bytes(b"state")
    assert sorted(p.name for p in target.iterdir()) == ["model.bin", "state.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["epoch0001"]


def test_directory_block_that_fails_leaves_the_old_folder_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "epoch0001"
    target.mkdir()
    (target / "model.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"), atomic_directory(target) as tmp:
        (tmp / "model.bin").write_bytes(b"half")
        raise RuntimeError("killed while saving")
    assert (target / "model.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["epoch0001"]


def test_visbench_atomic_is_the_only_code_that_renames_files_into_place() -> None:
    import re

    pattern = re.compile(r"\bos\.(replace|rename)\(|\bmkstemp\(")
    sources = [p for folder in ("visbench", "backbones", "kernels") for p in (REPO / folder).rglob("*.py")]
    writers = {
        str(p.relative_to(REPO))
        for p in sources
        if p.name != "atomic.py" and pattern.search(p.read_text(encoding="utf-8"))
    }
    assert not writers, f"use visbench.atomic instead of a private atomic writer in {writers}"
