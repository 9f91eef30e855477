"""The `visbench` command: one subcommand per experiment module.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``.
Modules are imported lazily, so ``visbench --help`` stays fast and lists only subcommands whose
module is present.

A user's mistake (unknown model, misspelt config key, missing file or folder, bad value) is one line on
stderr, ``visbench <command>: error: <what, naming it>``, and exit status 2; ``visbench --debug <command>``
shows the traceback instead. Only the project's user-error types are treated so (see
:func:`user_error_message`); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import linecache
import re
import sys
from collections.abc import Sequence

from visbench.cpu_allocator import keep_freed_memory

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
    "verdicts": ("visbench.verdicts", "paired CIs and declared-rule verdicts on claims, from result files"),
    "scan-bench": ("visbench.scan_bench", "time the selective-scan back ends against the reference"),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# The project's exception types that mean "the user asked for something wrong", by class name: matched on
# the class or a base defined in a visbench module, so a module that moves keeps its errors one line.
USER_ERROR_TYPES = (
    "ConfigError",
    "ResultError",
    "CheckpointError",
    "DatasetNotFoundError",
    "CocoFormatError",
)
_TIMM_UNKNOWN_MODEL = re.compile(r"^Unknown model \((?P<name>[^)]*)\)$")


def close_model_names(name: str, n: int = 3) -> list[str]:
    """The registered model names (ours first, then timm's) closest to ``name``, for "did you mean"."""
    import timm

    from visbench.backbones import list_models

    ours = list_models()
    close = difflib.get_close_matches(name, ours, n=n, cutoff=0.6)
    if len(close) < n:
        theirs = sorted(set(timm.list_models()) - set(ours))
        close += difflib.get_close_matches(name, theirs, n=n - len(close), cutoff=0.6)
    return close


def unknown_model_message(name: str) -> str:
    """``unknown model 'x'; did you mean 'a', 'b'?`` (or where to find the names when nothing is close)."""
    close = close_model_names(name)
    hint = (
        "did you mean " + ", ".join(repr(c) for c in close) + "?"
        if close
        else "visbench.backbones.list_models() lists ours, timm.list_models() timm's"
    )
    return f"unknown model {name!r}; {hint}"


def _raised_by_visbench_check(err: BaseException) -> bool:
    """True when ``err`` was raised by a ``raise`` statement in visbench's own code (an argument check).

    A ``ValueError`` from a library, or one Python raises itself inside our code (unpacking, ``int("x")``),
    is not a user error we vouch for: it keeps its traceback.
    """
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    if module != "visbench" and not module.startswith("visbench."):
        return False
    return linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip().startswith("raise")


def user_error_message(err: BaseException) -> str | None:
    """One line for an exception that is the user's mistake, or None for one that is a bug.

    User errors: the project's own types (``USER_ERROR_TYPES``: a bad config key or value, a malformed
    result file, a missing checkpoint or dataset), a missing file or folder (``FileNotFoundError``,
    ``NotADirectoryError``, ``IsADirectoryError``, ``PermissionError``), timm's ``Unknown model`` (named,
    with the closest registered names), and a ``ValueError`` (or ``ImportError``: an optional stack that is
    not installed) raised by visbench's own checks.
    """
    if any(
        cls.__name__ in USER_ERROR_TYPES and cls.__module__.startswith("visbench")
        for cls in type(err).__mro__
    ):
        return _one_line(err)
    if isinstance(err, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        if err.filename is not None and err.strerror:  # raised by the OS: "[Errno 2] ..." reads badly
            return f"{err.strerror}: {err.filename}"
        return _one_line(err)
    if isinstance(err, RuntimeError) and (match := _TIMM_UNKNOWN_MODEL.match(str(err))):
        return unknown_model_message(match["name"])
    if type(err) in (ValueError, ImportError) and _raised_by_visbench_check(err):
        return _one_line(err)
    return None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visbench", description="Does vision need Mamba? Controlled experiments."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error instead of its one-line message"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        if not _available(module):
            continue
        # Only the name is listed here; the subcommand's own arguments are defined by its module,
        # imported when that subcommand is run.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _run_subcommand(name: str, argv: list[str]) -> int:
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f"visbench {name}", description=help_text)
    module.add_arguments(sub_parser)
    return int(module.run(sub_parser.parse_args(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0] == "--debug":
        debug = True
        argv.pop(0)
    if argv and argv[0] in SUBCOMMANDS and _available(SUBCOMMANDS[argv[0]][0]):
        name = argv[0]
        keep_freed_memory()  # every subcommand is an experiment process: no page-fault storm per step
        try:
            return _run_subcommand(name, argv[1:])
        except KeyboardInterrupt:
            if debug:
                raise
            print(f"visbench {name}: interrupted", file=sys.stderr)
            return 130
        except Exception as err:
            message = None if debug else user_error_message(err)
            if message is None:
                raise
            print(f"visbench {name}: error: {message}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)  # prints help / an error naming the unknown subcommand
    parser.print_help()
    return 0 if args.command is None else 2


if __name__ == "__main__":
    sys.exit(main())
