"""Configs and reference data that ship inside the package (``visbench.configs``).

They are found through ``importlib.resources``, never through the repository path, so a wheel install
works from any directory. ``configs/`` in the repository is that package (see ``pyproject.toml``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CONFIG_ROOT = Path(str(resources.files("visbench.configs")))


def packaged_config(relative: str | Path) -> Path:
    """Path of a file or folder under the packaged configs, e.g. ``packaged_config("study/default.yaml")``.

    ``FileNotFoundError`` names the missing entry: an install without its data is an error, never an
    empty result.
    """
    path = CONFIG_ROOT / relative
    if not path.exists():
        raise FileNotFoundError(
            f"packaged config {str(relative)!r} is missing from {CONFIG_ROOT} (broken install?)"
        )
    return path


def resolve_config(path: str | Path) -> Path:
    """A config path given by a user: as given when it exists, else ``configs/<rest>`` from the package.

    So ``visbench train configs/fashion_mnist/gated_cnn_tiny.yaml`` works in the repository and, from a
    wheel install, in any directory. ``FileNotFoundError`` names the path when neither exists.
    """
    given = Path(path)
    if given.exists():
        return given
    parts = given.parts
    if len(parts) > 1 and parts[0] == "configs":
        packaged = CONFIG_ROOT.joinpath(*parts[1:])
        if packaged.exists():
            return packaged
    raise FileNotFoundError(
        f"config {str(path)!r} does not exist (nor under the packaged configs {CONFIG_ROOT})"
    )
