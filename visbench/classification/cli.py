"""What ``visbench train`` and ``visbench eval`` share on the command line: the config and its errors.

Each subcommand keeps its own ``add_arguments(parser)`` / ``run(args)`` next to the code it runs
(``visbench.cli`` imports one module per subcommand): ``train`` in
:mod:`visbench.classification.trainer`, ``eval`` in :mod:`visbench.classification.evaluate`. Both take
``CONFIG [section.key=value ...]`` (see :mod:`visbench.config`) and report a user mistake as one line
on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from visbench.classification.checkpoints import CheckpointError
from visbench.config import ConfigError, TrainConfig, load_config
from visbench.data.classification import DatasetNotFoundError

# A bad config, missing data or an unusable checkpoint: the user's to fix, so no traceback.
USER_ERRORS = (ConfigError, DatasetNotFoundError, CheckpointError)


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


def report_error(err: Exception) -> int:
    """One line on stderr; the exit code of a user mistake."""
    print(f"error: {err}", file=sys.stderr)
    return 2
