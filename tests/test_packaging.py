"""The install: one import namespace (``visbench``), data inside the package, other projects untouched.

Top-level ``kernels`` (Hugging Face) and ``backbones`` are other PyPI projects' import names. visbench
installs nothing under them, so with those projects present both they and visbench import. A wheel
(not editable) install carries the configs and the published reference rows, found through
``importlib.resources`` from any directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CHECK_VISBENCH = """
import timm, visbench.backbones, visbench.kernels
model = timm.create_model("gated_cnn_femto", num_classes=3)
assert type(model).__module__ == "visbench.backbones.hierarchical", type(model).__module__
assert callable(visbench.kernels.selective_scan)
"""


def _run(code: str, cwd: Path, extra_path: list[Path] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from ``cwd`` (not the repository), with ``extra_path`` first."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in extra_path)
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _standin(root: Path, name: str) -> None:
    """A top-level package ``name`` that says who owns it, as another project's would."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(f"OWNER = 'another project: {name}'\n")


def test_nothing_installs_top_level_kernels_or_backbones(tmp_path: Path) -> None:
    code = (
        "import importlib.util as u\n"
        "for n in ('kernels', 'backbones'):\n"
        "    s = u.find_spec(n)\n"
        "    print(s.origin if s else None)"
    )
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    for origin in out.stdout.split():  # absent, or another project's: never this repository's folders
        assert origin == "None" or not origin.startswith((str(REPO / "kernels"), str(REPO / "backbones"))), (
            origin
        )


def test_visbench_and_other_top_level_kernels_and_backbones_both_import(tmp_path: Path) -> None:
    other = tmp_path / "other_projects"
    _standin(other, "kernels")
    _standin(other, "backbones")
    code = CHECK_VISBENCH + (
        "import kernels, backbones\n"
        "assert kernels.OWNER == 'another project: kernels', kernels.__file__\n"
        "assert backbones.OWNER == 'another project: backbones', backbones.__file__\n"
    )
    out = _run(code, tmp_path, [other])
    assert out.returncode == 0, out.stderr


def test_hugging_face_kernels_and_visbench_share_an_environment(tmp_path: Path) -> None:
    # The dev extra installs Hugging Face's `kernels` (PyPI's `backbones` needs Python >= 3.12, so the
    # stand-in above plays it). Import order must not matter: both ways round.
    probe = _run("import kernels; print(kernels.__file__)", tmp_path)
    if probe.returncode != 0:
        pytest.skip(f"Hugging Face's `kernels` is not installed (dev extra): {probe.stderr.strip()[-200:]}")
    assert "site-packages" in probe.stdout and str(REPO / "kernels") not in probe.stdout, probe.stdout
    for code in (CHECK_VISBENCH + "import kernels\n", "import kernels\n" + CHECK_VISBENCH):
        code += "assert hasattr(kernels, 'get_kernel'), dir(kernels)\n"
        out = _run(code, tmp_path)
        assert out.returncode == 0, out.stderr


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel .`` then the wheel unpacked into a clean folder (what ``pip install .`` lays out)."""
    # Built from a copy of the checkout's files (tracked and not ignored), so a stale build/ folder in
    # the repository cannot leak old modules into the wheel.
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for relative in listed.stdout.splitlines():
        if (REPO / relative).is_file():
            (source / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / relative, source / relative)
    build = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(build)]
    proc = subprocess.run([*cmd, str(source)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = build.glob("visbench_mamba-*.whl")
    target = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(target)
    assert not any(n.startswith(("kernels/", "backbones/", "configs/")) for n in names), names
    return target


def test_wheel_holds_the_study_config_and_the_reference_rows(wheel_install: Path) -> None:
    configs = wheel_install / "visbench" / "configs"
    assert (configs / "study" / "default.yaml").is_file()
    assert sorted(p.name for p in (configs / "reference").glob("*.yaml"))
    assert (configs / "coco" / "_base_" / "default_runtime.py").is_file()
    assert (configs / "fashion_mnist" / "gated_cnn_tiny.yaml").is_file()


def test_wheel_install_runs_tables_analyze_and_the_study_config_from_any_folder(
    wheel_install: Path, tmp_path: Path
) -> None:
    code = f"""
import json, sys
import visbench, visbench.kernels, visbench.backbones
assert visbench.__file__.startswith({str(wheel_install)!r}), visbench.__file__
assert visbench.kernels.__file__.startswith({str(wheel_install)!r}), visbench.kernels.__file__
from visbench import cli, study
cfg, parts = study.load_study_config(study.DEFAULT_CONFIG)
assert parts, "the packaged study config has no parts"
assert cli.main(["tables", "--out", "tables", "."]) == 0
assert cli.main(["analyze", "--models", "gated_cnn_tiny", "--sizes", "224", "--no-measure",
                 "--format", "json"]) == 0
"""
    out = _run(code, tmp_path, [wheel_install])
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "tables" / "classification.md").read_text()
    assert "MambaOut-Tiny" in table  # a published row, read from the wheel's reference data
    analysis = json.loads(out.stdout[out.stdout.index("[") :]) if "[" in out.stdout else None
    assert analysis, out.stdout


def test_missing_reference_data_is_an_error_not_an_empty_table(tmp_path: Path) -> None:
    from visbench import tables

    with pytest.raises(FileNotFoundError, match="reference data"):
        tables.load_reference(tmp_path)
