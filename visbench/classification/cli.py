"""What ``visbench train`` and ``visbench eval`` share on the command line: the config and its errors.

Each subcommand keeps its own ``add_arguments(parser)`` / ``run(args)`` next to the code it runs
(``visbench.cli`` imports one module per subcommand): ``train`` in
:mod:`visbench.classification.trainer`, ``eval`` in :mod:`visbench.classification.evaluate`. Both take
``CONFIG [section.key=value ...]`` (see :mod:`visbench.config`). A user's mistake (a bad config,
missing data, an unusable checkpoint) is raised, and ``visbench.cli.main`` prints it as one line.
"""

from __future__ import annotations

import argparse
import os

from visbench.config import TrainConfig, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``CONFIG``, ``section.key=value`` overrides and ``--set KEY=VALUE``."""
    parser.add_argument(
        "config", nargs="?", help="YAML config (configs/imagenet/*.yaml, configs/fashion_mnist/*.yaml)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=1e-3 sched.epochs=10"
    )
    parser.add_argument(
        "--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="an override"
    )


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, str | None]:
    """The resolved config and its file; ``--output`` (when set) becomes ``train.output_dir``."""
    config_path, overrides = args.config, list(args.overrides)
    if config_path is not None and "=" in config_path and not os.path.exists(config_path):
        config_path, overrides = None, [args.config, *overrides]
    overrides += list(args.set_)
    if getattr(args, "output", None):
        overrides.append(f"train.output_dir={args.output}")
    return load_config(config_path, overrides), config_path
