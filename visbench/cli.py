"""The `visbench` command: one subcommand per experiment module.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported lazily, so ``visbench --help`` stays fast and lists only subcommands whose
module is present.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

# name -> (module, one-line help). Order is the order shown by --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "study": ("visbench.study", "run the one-command study on the embedded data and write the tables"),
    "train": ("visbench.classification.trainer", "train a classifier from a YAML config"),
    "eval": ("visbench.classification.evaluate", "evaluate a classifier checkpoint"),
    "detect": ("visbench.detection.cli", "train / test a detector through mmdetection"),
    "make-data": ("visbench.embedded_data", "build the embedded detection sets from packaged data"),
    "bench": ("visbench.bench", "params, MACs, throughput and peak memory of models"),
    "analyze": ("visbench.analyze", "tokens per stage, r = L / 6D, and where each model turns 'long'"),
    "tables": ("visbench.tables", "Markdown / LaTeX / CSV tables and plots from result files"),
    "scan-bench": ("visbench.scan_bench", "time the selective-scan back ends against the reference"),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visbench", description="Does vision need Mamba? Controlled experiments."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        if not _available(module):
            continue
        # Only the name is listed here; the subcommand's own arguments are defined by its module,
        # imported when that subcommand is run.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS and _available(SUBCOMMANDS[argv[0]][0]):
        name = argv[0]
        module_name, help_text = SUBCOMMANDS[name]
        module = importlib.import_module(module_name)
        sub_parser = argparse.ArgumentParser(prog=f"visbench {name}", description=help_text)
        module.add_arguments(sub_parser)
        return int(module.run(sub_parser.parse_args(argv[1:])) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)  # prints help / an error naming the unknown subcommand
    parser.print_help()
    return 0 if args.command is None else 2


if __name__ == "__main__":
    sys.exit(main())
