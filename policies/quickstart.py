"""``acodm quickstart``: the whole user story in one command.

1. build the default corpus (cached) and tokenize it into a store;
2. train a mixing policy (DDPG) on a small proxy model and export its actor;
3. pretrain a larger target with the transferred actor and with the uniform, UniMax and ODM
   baselines, on the same store, token budget and seed;
4. print the comparison (mean / worst validation perplexity, per domain, steps to reach each
   baseline's best), write ``report.txt``, ``results.json`` and PNG plots.

The ``cpu`` preset finishes in minutes on 2 cores (tiny proxy, 14m target); ``gpu`` runs the
paper's shape of experiment (70m proxy, 160m target, sequence 1024). Nothing is hidden: if
the policy does not beat a baseline at this scale, the report says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acodm.config import TrainConfig
from acodm.data.build import build_default_corpus
from acodm.data.prepare import prepare_store
from acodm.errors import AcodmError
from acodm.io import atomic_write_json, atomic_write_text
from acodm.plots import plot_reward, plot_validation, plot_weights
from acodm.pretrain import pretrain
from acodm.report import compare, format_comparison, load_curves

BASELINES = ("uniform", "unimax:4", "odm")


@dataclass(frozen=True)
class QuickstartPreset:
    """Sizes of one quickstart: the store's vocabulary, the proxy and the target runs."""

    vocab_size: int
    proxy: dict[str, Any]
    target: dict[str, Any]


PRESETS = {
    "cpu": QuickstartPreset(
        vocab_size=8192,
        proxy=dict(
            model="tiny",
            seq_len=128,
            micro_batch_size=8,
            steps=240,
            interval=4,
            warmup_steps=10,
            lr=3e-3,
            eval_every=0,
            eval_windows=2,
        ),
        target=dict(
            model="14m",
            seq_len=128,
            micro_batch_size=8,
            steps=160,
            interval=4,
            warmup_steps=10,
            lr=2e-3,
            eval_every=20,
            eval_windows=4,
        ),
    ),
    "gpu": QuickstartPreset(
        vocab_size=32768,
        proxy=dict(
            model="70m",
            seq_len=1024,
            micro_batch_size=16,
            steps=1500,
            interval=10,
            warmup_steps=50,
            lr=1e-3,
            eval_every=0,
            eval_windows=4,
        ),
        target=dict(
            model="160m",
            seq_len=1024,
            micro_batch_size=16,
            steps=2000,
            interval=10,
            warmup_steps=100,
            lr=6e-4,
            eval_every=100,
            eval_windows=16,
        ),
    ),
}


def _data(out: Path, preset: QuickstartPreset, progress: bool) -> Path:
    corpus, store = out / "corpus", out / "store"
    if not (corpus / "manifest.json").is_file():
        build_default_corpus(corpus, progress=progress)
    if not (store / "manifest.json").is_file():
        prepare_store(corpus, store, vocab_size=preset.vocab_size, progress=progress)
    return store


def _pretrain_once(config: TrainConfig, run: Path, progress: bool) -> None:
    """Run, resume an interrupted run, or reuse a finished one."""
    if (run / "summary.json").is_file():
        return
    pretrain(config, run, resume=(run / "config.json").is_file(), progress=progress)


def quickstart(
    out: str | Path = "quickstart",
    *,
    preset: str = "cpu",
    seed: int = 0,
    baselines: Sequence[str] = BASELINES,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the quickstart into ``out``; returns the comparison (also ``results.json``).

    Every stage is reused when already complete, so an interrupted quickstart resumes.
    """
    from acodm.policies.train import train_policy

    if preset not in PRESETS:
        raise AcodmError(f"unknown quickstart preset {preset!r}; known: {sorted(PRESETS)}")
    p, out = PRESETS[preset], Path(out)
    store = str(_data(out, p, progress))

    policy_run = out / "proxy"
    policy = policy_run / "policy"
    if not (policy / "policy.json").is_file():
        proxy = TrainConfig(store=store, seed=seed, **p.proxy)
        train_policy(
            store,
            policy_run,
            proxy=proxy,
            seed=seed,
            progress=progress,
            resume=(policy_run / "config.json").is_file(),
        )

    runs: dict[str, Path] = {}
    for mixer in (f"actor:{policy}", *baselines):
        name = "policy" if mixer.startswith("actor:") else mixer
        runs[name] = out / "runs" / name.replace(":", "-")
        _pretrain_once(
            TrainConfig(store=store, mixer=mixer, seed=seed, **p.target), runs[name], progress
        )

    curves = {name: load_curves(name, run) for name, run in runs.items()}
    text = format_comparison(curves, focus="policy")
    plots = out / "plots"
    plot_weights(runs["policy"], plots / "policy_weights.png", "domain weights of the policy")
    for b in baselines:
        plot_weights(runs[b], plots / f"{b.replace(':', '-')}_weights.png", f"weights: {b}")
    plot_validation(runs, plots / "validation_ppl.png")
    plot_reward(policy_run, plots / "proxy_reward.png")
    atomic_write_text(out / "report.txt", text + "\n")
    results = {
        "preset": preset,
        "seed": seed,
        "runs": {k: str(v) for k, v in runs.items()},
        "comparison": compare(curves),
    }
    atomic_write_json(out / "results.json", results)
    if progress:
        print(text)
        print(f"\nplots in {plots}, report in {out / 'report.txt'}")
    return results
