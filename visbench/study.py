"""`visbench study`: every family on real Fashion-MNIST, as short images and long pixel sequences.

One command on 2 CPU cores (``configs/study/default.yaml``): for each part (``short``: tiny-width
hierarchical and isotropic bodies at 64x64; ``long``: 1-D bodies on the 784-pixel sequence) and each
seed, train and evaluate every model with the same recipe, then write ``summary.md`` (top-1 mean and
spread over seeds), ``summary.csv``, ``study.png`` and, through ``visbench.tables``, the project's
tables. Everything goes to ``runs/study-<UTC time>/``. Re-running with ``--resume`` skips runs that
have a ``result.json`` and continues interrupted runs from their checkpoints.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visbench.config import (
    ConfigError,
    apply_overrides,
    build_dataclass,
    closest_key_hint,
    config_from_dict,
    deep_merge,
    load_yaml_with_bases,
)
from visbench.resources import CONFIG_ROOT

DEFAULT_CONFIG = CONFIG_ROOT / "study" / "default.yaml"


@dataclass
class PartConfig:
    title: str = ""
    models: list = field(default_factory=list)
    # create_model kwargs per body ("hierarchical", "isotropic", "sequence"): equal for every family.
    kwargs: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)  # TrainConfig mapping merged over the study's common one


@dataclass
class StudyConfig:
    seeds: list = field(default_factory=lambda: [0, 1])
    time_budget_min: float = 20.0
    detection_budget_min: float = 5.0
    threads: int | None = 2
    train: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)
    detection: dict | None = None  # passed to visbench.detection.study.run_detection_part


@dataclass
class RunSpec:
    part: str
    model: str
    seed: int
    run_dir: Path
    raw: dict[str, Any]


def load_study_config(
    path: str | Path, overrides: list[str] | None = None
) -> tuple[StudyConfig, dict[str, PartConfig]]:
    """Read and validate the study config; every run's TrainConfig is validated here, before any training."""
    raw = apply_overrides(load_yaml_with_bases(path), overrides or [])
    try:
        study = build_dataclass(StudyConfig, raw, "")
        parts = {
            name: build_dataclass(PartConfig, value, f"parts.{name}") for name, value in study.parts.items()
        }
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    if not parts:
        raise ConfigError(f"{path}: 'parts' is empty; expected e.g. parts.short and parts.long")
    if not study.seeds:
        raise ConfigError(f"{path}: 'seeds' is empty")
    for name, part in parts.items():
        for body in part.kwargs:
            valid = ["hierarchical", "isotropic", "sequence"]
            if body not in valid:
                raise ConfigError(
                    f"{path}: unknown body 'parts.{name}.kwargs.{body}'{closest_key_hint(body, valid)}"
                )
        for model in part.models:
            # Fails early, naming the key, if a part's train mapping is wrong.
            config_from_dict(
                _train_mapping(study, part, model, study.seeds[0], Path("x")), f"{path} (parts.{name})"
            )
    return study, parts


def _body(model: str) -> str:
    """The body a model name stands for (``naming.describe_any``; ``unknown`` takes no body kwargs)."""
    from visbench.backbones.naming import describe_any

    return describe_any(model).body


def _train_mapping(
    study: StudyConfig, part: PartConfig, model: str, seed: int, run_dir: Path
) -> dict[str, Any]:
    raw = deep_merge(study.train, part.train)
    run = {
        "model": {"name": model, "kwargs": dict(part.kwargs.get(_body(model), {}))},
        "train": {"seed": seed, "output_dir": str(run_dir), "threads": study.threads},
    }
    return deep_merge(raw, run)


def plan_runs(study: StudyConfig, parts: dict[str, PartConfig], out_dir: Path) -> list[RunSpec]:
    """Seed-major order: each model gets its first seed before any gets a second (a cut study stays whole)."""
    runs = []
    for seed in study.seeds:
        for part_name, part in parts.items():
            for model in part.models:
                run_dir = out_dir / part_name / model / f"seed{seed}"
                runs.append(
                    RunSpec(
                        part_name, model, seed, run_dir, _train_mapping(study, part, model, seed, run_dir)
                    )
                )
    return runs


def _finished(run_dir: Path) -> dict[str, Any] | None:
    from visbench.results import ResultError, read_result

    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        return read_result(path)
    except (ResultError, ValueError, OSError):
        return None


def run_classification(
    study: StudyConfig, parts: dict[str, PartConfig], out_dir: Path, budget_s: float, say: Any = print
) -> list[Path]:
    """Train the planned runs in order (skipping finished ones) until the budget is spent."""
    from visbench.classification.trainer import train

    runs = plan_runs(study, parts, out_dir)
    start = time.perf_counter()
    done: list[Path] = []
    for index, spec in enumerate(runs, 1):
        label = f"[{index}/{len(runs)}] {spec.part}: {spec.model} seed {spec.seed}"
        if _finished(spec.run_dir) is not None:
            say(f"{label}: done earlier, skipped")
            done.append(spec.run_dir / "result.json")
            continue
        elapsed = time.perf_counter() - start
        if elapsed > budget_s:
            say(
                f"{label}: not started, the classification budget ({budget_s / 60:.1f} min) is spent; "
                f"re-run with --resume {out_dir} to continue"
            )
            continue
        say(f"{label}: training ({elapsed / 60:.1f} min into the study)")
        began = time.perf_counter()
        cfg = config_from_dict(spec.raw, f"{spec.part}/{spec.model}")
        outcome = train(cfg, resume="auto", log=lambda msg: say(f"    {msg}"))
        if outcome.status != "finished":
            say(f"{label}: {outcome.status}: {outcome.message}")
            if outcome.status == "interrupted":
                raise KeyboardInterrupt(outcome.message)
            continue
        top1 = outcome.result["metrics"]["top1"] if outcome.result else float("nan")
        say(f"{label}: top-1 {top1:.2f}% in {time.perf_counter() - began:.0f} s")
        done.append(spec.run_dir / "result.json")
    return done


# ------------------------------------------------------------------------------------------------ summary


def _fmt_count(value: int | None, unit: float, digits: int = 2) -> str:
    return "-" if value is None else f"{value / unit:.{digits}f}"


def summarize(
    out_dir: Path, parts: dict[str, PartConfig], study: StudyConfig
) -> tuple[str, list[dict[str, Any]]]:
    """Markdown summary (one table per part: top-1 mean ± sample std over seeds) and its rows."""
    from visbench.results import read_result

    rows: list[dict[str, Any]] = []
    lines = [f"# visbench study: {out_dir.name}", ""]
    for part_name, part in parts.items():
        lines += [f"## {part.title or part_name}", ""]
        lines += [
            "| model | family | mixer | order | body | tokens | params (M) | MACs (M) | top-1 % (mean ± std) "
            "| per seed | train s / run |",
            "|---|---|---|---|---|---:|---:|---:|---:|---|---:|",
        ]
        for model in part.models:
            results = []
            for seed in study.seeds:
                path = out_dir / part_name / model / f"seed{seed}" / "result.json"
                if path.is_file():
                    results.append(read_result(path))
            if not results:
                lines.append(f"| {model} | | | | | | | | not run | | |")
                continue
            top1 = [r["metrics"]["top1"] for r in results]
            mean = statistics.fmean(top1)
            std = statistics.stdev(top1) if len(top1) > 1 else float("nan")
            seconds = [
                (
                    dt.datetime.fromisoformat(r["end_time"]) - dt.datetime.fromisoformat(r["start_time"])
                ).total_seconds()
                for r in results
            ]
            first = results[0]
            row = {
                "part": part_name,
                "model": model,
                "family": first["family"],
                "mixer": first["mixer"],
                "order": first["order"],
                "body": first["body"],
                "tokens": first.get("tokens"),
                "params": first["params"],
                "macs": first["macs"],
                "top1_mean": mean,
                "top1_std": std,
                "top1_per_seed": top1,
                "seeds": [r["seed"] for r in results],
                "train_seconds_mean": statistics.fmean(seconds),
            }
            rows.append(row)
            spread = "" if math.isnan(std) else f" ± {std:.2f}"
            lines.append(
                f"| {model} | {row['family']} | {row['mixer']} | {row['order']} | {row['body']} | "
                f"{row['tokens'] or '-'} | {_fmt_count(row['params'], 1e6, 3)} | "
                f"{_fmt_count(row['macs'], 1e6, 1)} | "
                f"{mean:.2f}{spread} | {', '.join(f'{t:.2f}' for t in top1)} | "
                f"{row['train_seconds_mean']:.0f} |"
            )
        lines.append("")
    if rows:
        first = read_result(next(out_dir.glob("*/*/seed*/result.json")))
        lines += [
            f"Device: {first['device']}; seeds {study.seeds}; std: sample standard deviation over seeds.",
            "",
        ]
    return "\n".join(lines), rows


def _accumulate_wall_time(out_dir: Path, wall_s: float) -> tuple[float, int]:
    """Add this invocation's wall time to the folder's record, so a resumed study reports the whole."""
    record = out_dir / "wall_time.json"
    previous = json.loads(record.read_text()) if record.exists() else {"seconds": [], "invocations": 0}
    seconds = [*previous["seconds"], wall_s]
    record.write_text(json.dumps({"seconds": seconds, "invocations": len(seconds)}))
    return sum(seconds), len(seconds)


def write_summary(
    out_dir: Path, parts: dict[str, PartConfig], study: StudyConfig, wall_s: float
) -> list[Path]:
    text, rows = summarize(out_dir, parts, study)
    total_s, invocations = _accumulate_wall_time(out_dir, wall_s)
    text += f"Study wall time: {total_s / 60:.1f} min"
    text += f" over {invocations} invocations (resumed).\n" if invocations > 1 else ".\n"
    md = out_dir / "summary.md"
    md.write_text(text)
    written = [md]
    if rows:
        csv_path = out_dir / "summary.csv"
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        written.append(csv_path)
        written.append(_plot(rows, out_dir / "study.png"))
    return written


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    part_names = list(dict.fromkeys(r["part"] for r in rows))
    fig, axes = plt.subplots(1, len(part_names), figsize=(5 * len(part_names), 4), squeeze=False)
    colors = {"gated_cnn": "tab:green", "ssm": "tab:blue", "attention": "tab:orange"}
    for ax, part in zip(axes[0], part_names):
        sub = [r for r in rows if r["part"] == part]
        x = range(len(sub))
        ax.bar(
            x,
            [r["top1_mean"] for r in sub],
            yerr=[0 if math.isnan(r["top1_std"]) else r["top1_std"] for r in sub],
            color=[colors.get(r["family"], "tab:gray") for r in sub],
            capsize=3,
        )
        ax.set_xticks(list(x), [r["model"] for r in sub], rotation=45, ha="right", fontsize=8)
        low = min(r["top1_mean"] for r in sub)
        ax.set_ylim(max(0.0, low - 10), 100)
        ax.set_ylabel("top-1 % (mean ± std over seeds)")
        ax.set_title(part)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def call_tables(out_dir: Path) -> list[Path]:
    """The study's last step: ``visbench.tables.generate`` over this study's result files."""
    try:
        from visbench.tables import generate
    except ImportError as err:
        print(f"visbench.tables not available ({err}); summary.md holds the study's tables")
        return []
    return list(generate([out_dir], out_dir / "tables", skip_invalid=True))


def run_detection(study: StudyConfig, out_dir: Path, budget_s: float, say: Any = print) -> list[Path]:
    """The detection part (``visbench.detection.study``), given what is left of the budget."""
    try:
        from visbench.detection.study import run_detection_part
    except ImportError as err:
        say(f"detection part skipped: {err}")
        return []
    say(f"detection part: {budget_s / 60:.1f} min of budget left")
    try:
        return list(run_detection_part(out_dir, study.detection))
    except (ImportError, ModuleNotFoundError) as err:  # mmdet not installed (the `det` extra)
        say(f"detection part skipped: {err}")
        return []


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", nargs="?", default=str(DEFAULT_CONFIG), help=f"study config (default {DEFAULT_CONFIG})"
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. seeds=[0,1,2] parts.long.models=[...]"
    )
    parser.add_argument(
        "--set", dest="set_", action="append", default=[], metavar="KEY=VALUE", help="an override"
    )
    parser.add_argument("--out", type=Path, help="output folder (default runs/study-<UTC time>)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        help="continue a study folder (default: the newest runs/study-*); finished runs are skipped",
    )
    parser.add_argument("--parts", help="comma-separated subset of the config's parts to run")
    parser.add_argument("--no-detection", action="store_true", help="skip the detection part")


def _out_dir(args: argparse.Namespace) -> Path:
    if args.resume and args.resume != "latest":
        return Path(args.resume)
    if args.resume == "latest":
        studies = sorted(Path("runs").glob("study-*"))
        if not studies:
            raise ConfigError("--resume: no runs/study-* folder to continue")
        return studies[-1]
    if args.out is not None:
        return args.out
    return Path("runs") / f"study-{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}"


def run(args: argparse.Namespace) -> int:
    config, overrides = args.config, list(args.overrides)
    if "=" in config and not Path(config).exists():
        config, overrides = str(DEFAULT_CONFIG), [config, *overrides]
    overrides += args.set_
    # A ConfigError raises; `visbench` (cli.main) turns it into one line and exit 2.
    study, parts = load_study_config(config, overrides)
    if args.parts:
        wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
        for name in wanted:
            if name not in parts:
                raise ConfigError(f"--parts: unknown part '{name}'{closest_key_hint(name, list(parts))}")
        parts = {name: parts[name] for name in wanted}
    out_dir = _out_dir(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "study.yaml").write_text(
        yaml.safe_dump({"config": str(config), "overrides": overrides}, sort_keys=False)
    )
    say = print
    start = time.perf_counter()
    total_s = study.time_budget_min * 60
    detection_s = (
        0.0 if args.no_detection or study.detection_budget_min <= 0 else study.detection_budget_min * 60
    )
    n_runs = len(plan_runs(study, parts, out_dir))
    say(
        f"visbench study -> {out_dir}: {n_runs} classification runs "
        f"({', '.join(parts)}; seeds {study.seeds}); "
        f"budget {study.time_budget_min:.0f} min, {detection_s / 60:.0f} min of it kept for detection"
    )
    try:
        run_classification(study, parts, out_dir, total_s - detection_s, say)
        if detection_s > 0:
            run_detection(study, out_dir, total_s - (time.perf_counter() - start), say)
    except KeyboardInterrupt:
        say(f"study interrupted; continue with: visbench study --resume {out_dir}")
        return 130
    wall = time.perf_counter() - start
    written = write_summary(out_dir, parts, study, wall)
    written += call_tables(out_dir)
    print((out_dir / "summary.md").read_text())
    say(f"study finished in {wall / 60:.1f} min; wrote {', '.join(str(p) for p in written)}")
    return 0
