"""Layers import downward only: visbench (experiments) -> visbench.backbones -> visbench.kernels.

Also: nothing imports a top-level ``kernels`` or ``backbones`` (other projects' names on PyPI).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# folder -> the visbench packages its modules may import
ALLOWED = {
    "kernels": ("visbench.kernels",),
    "backbones": ("visbench.kernels", "visbench.backbones"),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((REPO / folder).rglob("*.py"))]


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_a_layer_imports_only_itself_and_the_layers_below(folder: str) -> None:
    upward = [
        f"{path.relative_to(REPO)}: {name}"
        for path in _sources(folder)
        for name in _imports(path)
        if (name == "visbench" or name.startswith("visbench."))
        and not any(name == a or name.startswith(a + ".") for a in ALLOWED[folder])
    ]
    assert not upward, upward


def test_no_code_imports_a_top_level_kernels_or_backbones() -> None:
    top_level = [
        f"{path.relative_to(REPO)}: {name}"
        for path in _sources("kernels", "backbones", "visbench", "tests", "benchmarks", "configs")
        for name in _imports(path)
        if name.split(".")[0] in ("kernels", "backbones")
    ]
    assert not top_level, top_level
