"""Training checkpoints: a folder per step, written atomically, read without unpickling.

::

    RUN/checkpoints/step-00000100/
      model.safetensors       model weights (safetensors: safe to share)
      extra.safetensors       other tensors (initial weights of monitored layers, RNG states)
      optimizer.pt            optimizer state (``torch.load(weights_only=True)``: tensors,
                              numbers and containers only, never arbitrary objects)
      state.json              step, sampler, mixer, scheduler and loop state

A run with ``parallel="fsdp"`` writes the model and optimizer sharded instead, through
``torch.distributed.checkpoint`` (every rank writes the shard it holds, in parallel)::

    RUN/checkpoints/step-00000100/
      shards/shard-0000R-model-00001-of-00001.safetensors   one per rank: its parameter and
                              AdamW shards ("model/<name>", "optim/state.<name>.<key>"), with
                              their offsets in the global tensors in the safetensors header
      extra.safetensors, state.json                           as above (rank 0)

Such a checkpoint loads into any number of ranks (``torch.distributed.checkpoint`` re-slices
the shards), and into a DDP or single-process run; reading it unpickles nothing either (the
metadata comes from the safetensors headers).

A checkpoint folder is complete iff it exists under its final name: it is built as
``step-...partial`` and renamed. Only the newest ``keep_last`` are kept. A resume starts from
the newest one that loads (:func:`latest_intact_checkpoint`): one damaged later (a disk error,
a copy cut short) is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from acodm.errors import AcodmError
from acodm.io import atomic_directory, atomic_write_json, read_json

CHECKPOINT_VERSION = 1
SHARDS = "shards"  # the sharded layout's folder of per-rank safetensors files
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
    #: the folder of per-rank shards of a sharded checkpoint (``model`` and ``optimizer`` are
    #: then empty: :func:`load_sharded` reads them into a live model and optimizer)
    shards: Path | None = None

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


def save_sharded_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
    keep_last: int = 2,
) -> Path:
    """Write a sharded checkpoint; called by **every** rank (a collective).

    ``tensors`` are this rank's view of the model and optimizer state (DTensor shards, or
    plain tensors that every rank holds alike: those are written once). Every rank writes its
    shard into one temporary folder that rank 0 made; rank 0 then adds ``extra`` and
    ``state.json`` and renames the folder, so the checkpoint appears complete or not at all.
    All ranks share the run folder (as ``torch.distributed.checkpoint`` needs).
    """
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint import save as dcp_save

    from acodm import distributed as dist

    out = checkpoint_dir(run_dir) / f"step-{step:08d}"
    main = not dist.active() or torch.distributed.get_rank() == 0
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_directory(out, overwrite=True)) if main else None
        tmp = Path(dist.broadcast_object(None if tmp is None else str(tmp)))
        try:
            writer = HuggingFaceStorageWriter(str(tmp / SHARDS), save_distributed=dist.active())
            dcp_save(tensors, storage_writer=writer)
        finally:
            dist.barrier()  # every rank's shard is on disk (or the save failed everywhere)
        if main:
            save_file(_contiguous(extra or {}), str(tmp / "extra.safetensors"))
            world = torch.distributed.get_world_size() if dist.active() else 1
            atomic_write_json(
                tmp / "state.json",
                {
                    "checkpoint_version": CHECKPOINT_VERSION,
                    **state,
                    "step": step,
                    "layout": {"kind": "sharded", "shards": world},
                },
            )
    if main and keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()  # no rank reads the run folder before the rename
    return out


def load_sharded(ckpt: Checkpoint, tensors: dict[str, torch.Tensor]) -> None:
    """Read a sharded checkpoint's tensors into ``tensors`` in place (this rank's part of
    each: ``torch.distributed.checkpoint`` re-slices the saved shards to the live layout)."""
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint import load as dcp_load

    assert ckpt.shards is not None
    try:
        with warnings.catch_warnings():  # one process reads it without a group: intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp_load(tensors, storage_reader=HuggingFaceStorageReader(str(ckpt.shards)))
    except Exception as e:  # missing keys, wrong shapes, damaged files: all mean "not this run"
        raise CheckpointError(
            f"checkpoint {ckpt.path} does not fit this model/optimizer ({type(e).__name__}: "
            f"{str(e)[:400]}); was it written with another --model or store?"
        ) from e


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
    for name in ("extra.safetensors", "state.json"):
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
    if state.get("layout") is not None:
        return _sharded(path, state)
    for name in ("model.safetensors", "optimizer.pt"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
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


def _sharded(path: Path, state: dict[str, Any]) -> Checkpoint:
    layout = state["layout"]
    shards = path / SHARDS
    want = layout.get("shards") if isinstance(layout, dict) else None
    if not isinstance(layout, dict) or layout.get("kind") != "sharded" or not isinstance(want, int):
        raise CheckpointError(f"checkpoint {path}: state.json has an unknown layout {layout!r}")
    found = sorted(shards.glob("*.safetensors")) if shards.is_dir() else []
    if len(found) != want:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: {len(found)} of its {want} shard files are in "
            f"{shards}"
        )
    try:
        for f in found:  # the headers only: a truncated or foreign file fails here
            with safe_open(str(f), framework="pt") as handle:
                handle.keys()
        extra = load_file(str(path / "extra.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has a corrupt safetensors file: {e}") from e
    return Checkpoint(path=path, model={}, extra=extra, optimizer={}, state=state, shards=shards)
