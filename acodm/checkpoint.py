"""Training checkpoints: a folder per step, written atomically, read without unpickling.

::

    RUN/checkpoints/step-00000100/
      model.safetensors       model weights (safetensors: safe to share)
      extra.safetensors       other tensors (initial weights of monitored layers, RNG states)
      optimizer.pt            optimizer state (``torch.load(weights_only=True)``: tensors,
                              numbers and containers only, never arbitrary objects)
      state.json              step, sampler, mixer, scheduler and loop state

A checkpoint folder is complete iff it exists under its final name: it is built as
``step-...partial`` and renamed. Only the newest ``keep_last`` are kept. A resume starts from
the newest one that loads (:func:`latest_intact_checkpoint`): one damaged later (a disk error,
a copy cut short) is skipped with a warning.
"""

from __future__ import annotations

import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from acodm.errors import AcodmError
from acodm.io import atomic_directory, atomic_write_json, read_json

CHECKPOINT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(AcodmError):
    """A checkpoint is missing, incomplete, corrupt, or from an incompatible run."""


@dataclass
class Checkpoint:
    path: Path
    model: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    state: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write the checkpoint of ``step`` atomically and prune older ones; returns its folder."""
    out = checkpoint_dir(run_dir) / f"step-{step:08d}"
    with atomic_directory(out, overwrite=True) as tmp:
        save_file(_contiguous(model), str(tmp / "model.safetensors"))
        save_file(_contiguous(extra or {}), str(tmp / "extra.safetensors"))
        torch.save(optimizer, tmp / "optimizer.pt")
        atomic_write_json(
            tmp / "state.json", {"checkpoint_version": CHECKPOINT_VERSION, **state, "step": step}
        )
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return out


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage; clone what needs it.
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen or not t.is_contiguous():
            t = t.clone().contiguous()
        seen.add(ptr)
        out[k] = t
    return out


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def latest_intact_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The newest checkpoint of a run that loads, or None when the run has none.

    Damaged newer ones are skipped with a warning naming them (the run then redoes their
    steps); when every checkpoint is damaged, a :class:`CheckpointError` names them all.
    """
    damaged: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            damaged.append(str(e))
            continue
        if damaged:
            warnings.warn(
                f"resuming from {path} (step {ckpt.step}), skipping damaged newer checkpoints: "
                + "; ".join(damaged),
                stacklevel=2,
            )
        return ckpt
    if damaged:
        raise CheckpointError(
            f"no intact checkpoint in {checkpoint_dir(run_dir)}: {'; '.join(damaged)}. Delete "
            "the damaged step-* folders to restart the run from step 0 with --resume, or start "
            "a new --out"
        )
    return None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint folder; any damage is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    for name in ("model.safetensors", "extra.safetensors", "optimizer.pt", "state.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
    try:
        state = read_json(path / "state.json", "checkpoint state")
    except AcodmError as e:
        raise CheckpointError(f"checkpoint {path}: state.json is corrupt ({e.__cause__})") from e
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"checkpoint {path}: state.json is corrupt (no step)")
    if state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has version {state.get('checkpoint_version')!r}; this acodm "
            f"reads version {CHECKPOINT_VERSION}"
        )
    try:
        model = load_file(str(path / "model.safetensors"))
        extra = load_file(str(path / "extra.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has a corrupt safetensors file: {e}") from e
    try:
        optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip
        raise CheckpointError(f"checkpoint {path}: optimizer.pt is corrupt ({e})") from e
    return Checkpoint(path=path, model=model, extra=extra, optimizer=optimizer, state=state)
