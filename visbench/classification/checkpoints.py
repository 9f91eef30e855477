"""Atomic, resumable training checkpoints: safetensors weights plus a small weights-only state file.

Layout under a run's ``checkpoints/`` folder::

    epoch0003-step000120/model.safetensors   model weights (metadata: model name, epoch, step)
    epoch0003-step000120/ema.safetensors     EMA weights (when EMA is on)
    epoch0003-step000120/state.pt            optimizer / scheduler / scaler / counters / RNG (plain tensors)
    latest                                   name of the newest complete checkpoint folder

A checkpoint folder is written under a temporary name (each file fsynced) and renamed into place,
then ``latest`` is replaced atomically (both through :mod:`visbench.atomic`), so a kill at any
moment leaves the previous checkpoint intact. Loading never unpickles arbitrary objects:
safetensors, and ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from visbench.atomic import TMP_PREFIX, atomic_directory, atomic_write_text

FORMAT = "visbench-checkpoint-v1"
LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, or was written for another model; the message names the file."""


# ----------------------------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Every RNG a training step touches, as weights-only-loadable plain values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["gauss"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------- saving


def _plain_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone(): safetensors refuses tensors that share storage (tied weights); contiguous for channels-last.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}


def save_checkpoint(
    root: str | Path,
    *,
    model_name: str,
    weights: Mapping[str, dict[str, torch.Tensor]],
    train_state: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write a checkpoint folder atomically and point ``latest`` at it; keep the newest ``keep`` folders.

    ``weights`` maps a file stem to a state dict: ``model`` (required) and ``ema`` become
    ``model.safetensors`` / ``ema.safetensors``. ``train_state`` (plain tensors, numbers, strings) goes
    to ``state.pt``; its ``epoch`` and ``step`` name the folder.
    """
    if "model" not in weights:
        raise ValueError(f"save_checkpoint: weights must hold 'model', got {sorted(weights)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    epoch, step = int(train_state["epoch"]), int(train_state["step"])
    name = f"epoch{epoch:04d}-step{step:07d}"
    metadata = {"format": FORMAT, "model": model_name, "epoch": str(epoch), "step": str(step)}
    # Saving the same step again (a signal right after an epoch checkpoint) replaces that folder.
    with atomic_directory(root / name) as tmp:
        for stem, state_dict in weights.items():
            save_file(_plain_weights(state_dict), str(tmp / f"{stem}.safetensors"), metadata=metadata)
        torch.save({"format": FORMAT, "model": model_name, **train_state}, tmp / "state.pt")
    atomic_write_text(root / LATEST, name + "\n")
    _prune(root, keep=max(keep, 1), current=name)
    return root / name


def _prune(root: Path, keep: int, current: str) -> None:
    folders = sorted(p for p in root.glob("epoch*-step*") if p.is_dir())
    for old in folders[:-keep]:
        if old.name != current:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(f"{TMP_PREFIX}*"):  # folders and files left by a process killed while writing
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ loading


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a folder itself, a ``checkpoints/`` root, or a run folder (via ``latest``)."""
    path = Path(path)
    if (path / "state.pt").exists() or (path / "model.safetensors").exists():
        return path
    for root in (path, path / "checkpoints"):
        latest = root / LATEST
        if latest.is_file():
            target = root / latest.read_text().strip()
            if not target.is_dir():
                raise CheckpointError(f"{latest} points at {target}, which does not exist")
            return target
    raise CheckpointError(
        f"no checkpoint at {path}: expected a folder with model.safetensors and state.pt, "
        f"or a run / checkpoints folder with a '{LATEST}' file"
    )


def find_latest(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None when it has none."""
    try:
        return resolve_checkpoint(Path(run_dir) / "checkpoints")
    except CheckpointError:
        return None


def load_weights(
    path: Path, expected_model: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file; a truncated file or one written for another model is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint weights {path} not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        weights = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({err})") from None
    written_for = metadata.get("model")
    if expected_model is not None and written_for is not None and written_for != expected_model:
        raise CheckpointError(
            f"{path} holds weights of model '{written_for}', but the config builds '{expected_model}'"
        )
    return weights, metadata


def load_into(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: Path) -> None:
    """``load_state_dict(strict=True)`` with an error naming the file and the first mismatching keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shape_bad = [k for k in own.keys() & weights.keys() if own[k].shape != weights[k].shape]
    if missing or unexpected or shape_bad:
        details = []
        if missing:
            details.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if shape_bad:
            k = shape_bad[0]
            details.append(
                f"shape of '{k}' is {tuple(weights[k].shape)} in the file, {tuple(own[k].shape)} in the model"
            )
        raise CheckpointError(f"{source} does not fit this model: {'; '.join(details)}")
    module.load_state_dict(weights, strict=True)


def load_state(path: Path, expected_model: str | None = None) -> dict[str, Any]:
    """``state.pt`` through ``torch.load(weights_only=True)``, checked for format and model."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint state {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle: torch raises RuntimeError / UnpicklingError
        raise CheckpointError(
            f"{path}: unreadable or truncated state file ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a visbench checkpoint state (format {FORMAT} expected)")
    if expected_model is not None and state.get("model") != expected_model:
        raise CheckpointError(
            f"{path} was written for model '{state.get('model')}', but the config builds '{expected_model}'"
        )
    return state
