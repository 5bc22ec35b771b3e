"""``acodm pretrain``: a full pretraining run driven by a mixer, resumable, with logging.

A run directory::

    RUN/
      config.json      the resolved TrainConfig plus model, mixer, store and versions
      metrics.jsonl    one JSON line per interval / evaluation (namespaced metric names)
      checkpoints/     step-XXXXXXXX/ folders, the newest ``keep_last`` kept
      summary.json     final evaluation, steps, tokens, wall time (written at the end)
      .lock            held by the process writing the run (acodm.runfolder)
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from acodm import __version__
from acodm import distributed as dist
from acodm.checkpoint import (
    latest_intact_checkpoint,
    list_checkpoints,
    save_checkpoint,
    save_sharded_checkpoint,
)
from acodm.config import LAYOUT_CHANGES, RESUMABLE_CHANGES, ConfigError, TrainConfig
from acodm.errors import AcodmError
from acodm.io import atomic_write_json, atomic_write_text, read_json
from acodm.metrics import MetricsLogger, read_metrics
from acodm.mixers import IntervalFeedback, Mixer, make_mixer
from acodm.models import model_summary
from acodm.runfolder import PRETRAIN, RunFolder
from acodm.trainer import Trainer


def saved_train_config(run_dir: str | Path) -> dict[str, Any]:
    """The TrainConfig fields of a run's ``config.json``, its store path absolute."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise AcodmError(f"no run at {run_dir} (no config.json): start it without --resume")
    saved = read_json(path, "run config")
    train = dict(saved["train"])
    if not Path(train["store"]).is_absolute():
        # Runs of earlier versions saved it relative to the working directory of their start;
        # "store.path" holds it resolved then.
        train["store"] = saved.get("store", {}).get("path") or _absolute(train["store"])
    return train


def _absolute(path: str) -> str:
    return str(Path(path).resolve())


def _check_resume_config(run_dir: Path, config: TrainConfig) -> None:
    saved = saved_train_config(run_dir)
    saved["store"] = _absolute(saved["store"])
    now = {**config.to_dict(), "store": _absolute(config.store)}
    changed = sorted(
        k
        for k in set(saved) | set(now)
        if saved.get(k) != now.get(k) and k not in RESUMABLE_CHANGES | LAYOUT_CHANGES
    )
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(
            f"--resume with settings that change the run ({diffs}); resume with the original "
            f"settings (see {run_dir / 'config.json'}) or start a new --out"
        )


def _run_config(run_dir: Path, config: TrainConfig, resume: bool) -> TrainConfig:
    """Check that ``run_dir`` can be started (or resumed) with ``config``; the config to run,
    its store path absolute (so that the run resumes from any working directory)."""
    if resume:
        _check_resume_config(run_dir, config)  # raises if there is no run to resume
    elif (run_dir / "config.json").is_file():
        hint = (
            "; it has no checkpoint yet, so delete it to start over with other settings"
            if not list_checkpoints(run_dir)
            else ""
        )
        raise AcodmError(
            f"{run_dir} already holds a run; pass --resume or choose another --out{hint}"
        )
    return config.replace(store=_absolute(config.store))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they will be redone)."""
    if path.is_file():
        keep = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def _write_config(run_dir: Path, trainer: Trainer, mixer: Mixer) -> None:
    cfg = trainer.config
    atomic_write_json(
        run_dir / "config.json",
        {
            "train": cfg.to_dict(),
            "mixer": mixer.describe(),
            "model": model_summary(trainer.model),
            "store": {
                "path": str(Path(cfg.store).resolve()),
                "domains": trainer.domains,
                "tokenizer_sha256": trainer.store.tokenizer_sha256,
                "corpus_hash": trainer.store.corpus_hash,
            },
            "world_size": trainer.dist.world_size,
            "total_steps": trainer.total_steps,
            "tokens_per_step": trainer.tokens_per_step,
            "versions": {"acodm": __version__, "torch": torch.__version__},
        },
    )


def _due(every: int, before: int, after: int) -> bool:
    return every > 0 and after // every > before // every


def pretrain(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    mixer: Mixer | None = None,
) -> dict[str, Any]:
    """Run (or resume) a pretraining run; returns the final summary (also ``summary.json``).

    The run holds ``run_dir`` exclusively (:class:`acodm.runfolder.RunFolder`: a lock, killed
    runs' temporaries removed, a failed start leaves nothing). A resume starts from the newest
    intact checkpoint.
    """
    run_dir = Path(run_dir)
    mixer = mixer or make_mixer(config.mixer)  # a bad spec fails before anything is written
    if resume and not (run_dir / "config.json").is_file():
        saved_train_config(run_dir)  # raises: there is no run to resume
    # Only rank 0 writes the run folder; it locks before the process group forms, so a run in
    # use stops it before any rank waits for the others (torchrun then stops those).
    folder = RunFolder(run_dir, PRETRAIN, create=not resume, enabled=dist.launch_rank() == 0)
    with folder:
        # Every rank checks the folder before joining the group, rank 0 writes it only after.
        config = _run_config(run_dir, config, resume)
        trainer = Trainer(config, progress=progress)
        try:
            return _start(trainer, mixer, run_dir, resume, progress)
        finally:
            trainer.close()


def _start(
    trainer: Trainer, mixer: Mixer, run_dir: Path, resume: bool, progress: bool
) -> dict[str, Any]:
    mixer.setup(trainer.mixer_context())
    main = trainer.dist.is_main
    ckpt = latest_intact_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        trainer.load_checkpoint(ckpt)
        mixer.load_state_dict(ckpt.state["mixer"])
        mixer.load_tensor_state(_mixer_tensors(ckpt.extra))
    if resume and main:  # without a checkpoint the run restarts from step 0
        _truncate_metrics(run_dir / "metrics.jsonl", trainer.step if ckpt else -1)
    if main:
        _write_config(run_dir, trainer, mixer)
    config = trainer.config
    logger = MetricsLogger(
        run_dir / "metrics.jsonl" if main else None,
        wandb=config.wandb and main,
        run_name=run_dir.name,
        config=config.to_dict(),
    )
    try:
        return _loop(trainer, mixer, logger, run_dir, progress and main)
    finally:
        logger.close()


MIXER_TENSORS = "mixer/"  # prefix of the mixer's tensors in the checkpoint's extra tensors


def _mixer_tensors(extra: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(MIXER_TENSORS) :]: t for k, t in extra.items() if k.startswith(MIXER_TENSORS)}


def _save(trainer: Trainer, mixer: Mixer, run_dir: Path) -> None:
    payload = trainer.checkpoint_payload()
    payload["state"]["mixer"] = mixer.state_dict()
    payload["extra"].update({MIXER_TENSORS + k: t for k, t in mixer.tensor_state().items()})
    keep = trainer.config.keep_last
    if "sharded" in payload:  # every rank writes its shard
        tensors = payload.pop("sharded")
        save_sharded_checkpoint(run_dir, trainer.step, tensors=tensors, **payload, keep_last=keep)
    elif trainer.dist.is_main:
        save_checkpoint(run_dir, trainer.step, **payload, keep_last=keep)
    dist.barrier()


def _loop(
    trainer: Trainer, mixer: Mixer, logger: MetricsLogger, run_dir: Path, show: bool
) -> dict[str, Any]:
    from acodm.progress import progress_bar

    cfg = trainer.config
    start = time.perf_counter()
    if trainer.step == 0:
        logger.log(trainer.evaluate(), step=0)
    bar = progress_bar(
        total=trainer.total_steps,
        initial=trainer.step,
        disable=not show,
        unit="step",
        desc=run_dir.name,  # tells the quickstart's runs apart in a log
    )
    last_eval: dict[str, float] = trainer.evaluate() if trainer.done else {}
    while not trainer.done:
        before = trainer.step
        weights = trainer.broadcast_weights(mixer.weights())
        report = trainer.train_interval(weights)
        mixer.update(_probed(trainer, mixer, report.feedback))
        logger.log(report.metrics, step=trainer.step)
        bar.update(report.steps)
        bar.set_postfix(
            loss=f"{report.metrics['train/loss']:.3f}", tok_s=f"{report.metrics['perf/tok_s']:.0f}"
        )
        if _due(cfg.eval_every, before, trainer.step) or trainer.done:
            last_eval = trainer.evaluate()
            logger.log(last_eval, step=trainer.step)
        if _due(cfg.checkpoint_every, before, trainer.step) or trainer.done:
            _save(trainer, mixer, run_dir)
    bar.close()
    summary = {
        "steps": trainer.step,
        "tokens": trainer.tokens_seen,
        "bad_steps": trainer.bad_total,
        "seconds": time.perf_counter() - start,
        "mixer": mixer.describe(),
        **last_eval,
    }
    if trainer.dist.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
    return summary


def _probed(trainer: Trainer, mixer: Mixer, feedback: IntervalFeedback) -> IntervalFeedback:
    """``feedback`` with the probe of the reward split when the mixer asks for it
    (:attr:`Mixer.probe_windows`): per-domain losses on its fixed windows, forward only."""
    if not mixer.probe_windows:
        return feedback
    dyn = feedback.need_dynamics("the probe")
    losses = trainer.reward_losses(mixer.probe_windows)
    return dataclasses.replace(feedback, dynamics=dataclasses.replace(dyn, probe_loss=losses))
