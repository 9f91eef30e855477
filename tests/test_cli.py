"""The `visbench` command lists the subcommands whose modules exist."""

from __future__ import annotations

import importlib.util

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
