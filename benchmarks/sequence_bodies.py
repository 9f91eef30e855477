"""Issue 13's target 2: the 1-D bodies' train step at the study's settings, optionally across commits.

The bodies of the study's next-pixel part and the bidirectional SSM body (784 tokens, width 32, depth 2,
batch 64, 16 levels), one forward + backward of the bits-per-pixel loss per step, 2 threads:

    python benchmarks/sequence_bodies.py                      # this checkout
    python benchmarks/sequence_bodies.py --trees /tmp/old,.   # an old commit's worktree against this one

Each run starts one process per tree in turn, with the models timed round-robin inside it (the order
reversed every other round); the figure per model is the median step, and the table gives each
tree's median over runs plus its ratio to the first tree. The host moves between processes, so
alternate several runs (``--runs``). A tree is a checkout of this repository (``git worktree add DIR
COMMIT``); its packages are imported from it even though the environment holds an editable install
of this checkout (which would otherwise supply ``visbench.kernels`` and ``visbench.backbones``).
``--keep-freed-memory`` applies this checkout's allocator setting (``visbench/cpu_allocator.py``) in
every worker before torch loads, so commits older than that module can be timed with it too.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = (
    "seq_gated_cnn_tiny",
    "seq_ssm_causal_tiny",
    "seq_ssm_bidir_tiny",
    "seq_attn_causal_tiny",
    "seq_attn_tiny",
)
# pyproject.toml's package-dir: where each package of the ``visbench`` namespace lives in a tree.
PACKAGE_DIRS = {
    "visbench": "visbench",
    "visbench.kernels": "kernels",
    "visbench.backbones": "backbones",
    "visbench.configs": "configs",
}


class _TreeFinder(importlib.abc.MetaPathFinder):
    """Finds ``visbench`` and its mapped packages in one tree, ahead of any editable install; their
    submodules follow from the packages' ``__path__``."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree

    def find_spec(self, name, path=None, target=None):
        if name not in PACKAGE_DIRS:
            return None
        folder = self.tree / PACKAGE_DIRS[name]
        return importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def _import_from(tree: Path) -> None:
    """Make every later ``import visbench...`` load from ``tree``; fail if something already loaded."""
    loaded = [name for name in sys.modules if name == "visbench" or name.startswith("visbench.")]
    if loaded:
        raise RuntimeError(f"visbench was imported before the tree was chosen: {loaded[:3]}")
    sys.meta_path.insert(0, _TreeFinder(tree))


def _keep_freed_memory() -> str:
    """This checkout's allocator setting, its module (stdlib only) loaded by path: no ``visbench`` package
    may be imported before the tree is chosen, and the tree may predate the module."""
    path = Path(__file__).resolve().parents[1] / "visbench" / "cpu_allocator.py"
    spec = importlib.util.spec_from_file_location("_sequence_bodies_cpu_allocator", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.keep_freed_memory()


def _worker(args: argparse.Namespace) -> int:
    tree = Path(args.tree).resolve()
    allocator = _keep_freed_memory() if args.keep_freed_memory else "system default"
    _import_from(tree)
    import timm
    import torch
    import visbench.backbones  # noqa: F401  (registers the models with timm)

    from visbench.next_pixel import bits_per_pixel, next_pixel_logits

    sources = {
        name: getattr(module, "__file__", None) or ""
        for name, module in sys.modules.items()
        if name == "visbench" or name.startswith("visbench.")
    }
    stray = sorted(name for name, file in sources.items() if file and not file.startswith(str(tree)))
    if stray:
        raise RuntimeError(f"modules loaded from outside {tree}: {stray[:3]}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = args.side * args.side
    targets = torch.randint(0, args.levels, (args.batch_size, tokens))
    models = {
        name: timm.create_model(name, num_classes=args.levels, global_pool="", embed_dim=32, depth=2)
        for name in args.models
    }

    def step(model) -> None:
        bits_per_pixel(next_pixel_logits(model, targets, args.levels), targets).backward()

    for model in models.values():
        for _ in range(args.warmup):
            step(model)
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(args.rounds):
        for name in args.models if round_index % 2 == 0 else args.models[::-1]:
            for _ in range(args.steps):
                start = time.perf_counter()
                step(models[name])
                times[name].append(time.perf_counter() - start)
    commit = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({"tree": str(tree), "commit": commit, "allocator": allocator, "median_s": medians}))
    return 0


def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Median step per tree and model over the runs' processes: {tree: {model: [s per run]}}."""
    trees = [str(Path(tree).resolve()) for tree in args.trees.split(",")]
    env = dict(os.environ, PYTHONNOUSERSITE="1")
    results: dict[str, dict[str, list[float]]] = {tree: {name: [] for name in args.models} for tree in trees}
    commits: dict[str, str] = {}
    for _ in range(args.runs):
        for tree in trees:
            argv = [sys.executable, __file__, "--worker", "--tree", tree, "--models", ",".join(args.models)]
            argv += ["--rounds", str(args.rounds), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            argv += ["--batch-size", str(args.batch_size), "--side", str(args.side)]
            argv += ["--threads", str(args.threads), "--levels", str(args.levels)]
            argv += ["--keep-freed-memory"] if args.keep_freed_memory else []
            done = subprocess.run(argv, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise SystemExit(f"sequence_bodies: the worker for {tree} failed: {last}")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            commits[tree] = record["commit"]
            for name, seconds in record["median_s"].items():
                results[tree][name].append(seconds)
    first = trees[0]
    header = "| model | " + " | ".join(f"`{commits[t]}`" for t in trees)
    header += "".join(f" | `{commits[first]}` / `{commits[t]}`" for t in trees[1:]) + " |"
    print(header)
    print("|---" * (2 * len(trees)) + "|")  # the model, one time per tree, one ratio per later tree
    for name in args.models:
        cells = [f"{statistics.median(results[t][name]) * 1e3:.1f} ms" for t in trees]
        ratios = [
            f"{statistics.median(results[first][name]) / statistics.median(results[t][name]):.2f}x"
            for t in trees[1:]
        ]
        print(f"| {name} | " + " | ".join(cells + ratios) + " |")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = str(Path(__file__).resolve().parents[1])
    parser.add_argument("--trees", default=here, help="comma-separated checkouts, the baseline first")
    parser.add_argument("--models", type=lambda text: text.split(","), default=list(MODELS))
    parser.add_argument("--runs", type=int, default=2, help="processes per tree, alternated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--side", type=int, default=28, help="image side: side² tokens")
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep-freed-memory", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        sys.exit(_worker(arguments))
    run(arguments)
