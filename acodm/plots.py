"""Plots of runs (PNG): domain weights over time, validation curves, the agent's reward.

matplotlib is imported lazily (the ``plots`` extra); every function reads ``metrics.jsonl``
files, so plots can be redrawn from any finished run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from acodm.errors import AcodmError
from acodm.metrics import read_metrics


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise AcodmError("plots need matplotlib: pip install 'acodm[plots]'") from e
    return plt


def _axes(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A figure with one axes whose x axis counts steps: integer ticks only (no 2.5)."""
    plt = _pyplot()  # first: a clear error without matplotlib
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=figsize)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _save(fig: Any, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    tmp.replace(out)
    _pyplot().close(fig)
    return out


def plot_weights(run_dir: str | Path, out: str | Path, title: str = "domain weights") -> Path:
    """Stacked area plot of ``mix/weight/<domain>`` over training steps."""
    recs = [
        r
        for r in read_metrics(Path(run_dir) / "metrics.jsonl")
        if any(k.startswith("mix/weight/") for k in r)
    ]
    if not recs:
        raise AcodmError(f"{run_dir} has no logged weights to plot")
    domains = [k.removeprefix("mix/weight/") for k in recs[0] if k.startswith("mix/weight/")]
    steps = [r["step"] for r in recs]
    fig, ax = _axes((8, 4))
    ax.stackplot(
        steps, [[r[f"mix/weight/{d}"] for r in recs] for d in domains], labels=domains, step="pre"
    )
    ax.set(xlabel="optimizer step", ylabel="weight", ylim=(0, 1), title=title)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    return _save(fig, out)


def plot_validation(runs: Mapping[str, str | Path], out: str | Path) -> Path:
    """Mean (solid) and worst-domain (dashed) validation perplexity of several runs."""
    fig, ax = _axes((8, 4))
    for name, run_dir in runs.items():
        recs = [
            r
            for r in read_metrics(Path(run_dir) / "metrics.jsonl")
            if r.get("eval/ppl_mean") is not None
        ]
        steps = [r["step"] for r in recs]
        (line,) = ax.plot(steps, [r["eval/ppl_mean"] for r in recs], label=f"{name} (mean)")
        ax.plot(
            steps,
            [r["eval/ppl_worst"] for r in recs],
            "--",
            color=line.get_color(),
            alpha=0.6,
            label=f"{name} (worst domain)",
        )
    ax.set(
        xlabel="optimizer step",
        ylabel="validation perplexity",
        yscale="log",
        title="validation perplexity",
    )
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_study_curves(
    curves: Mapping[str, Sequence[tuple[Sequence[int], Sequence[float]]]], out: str | Path
) -> Path:
    """Mean validation loss over seeds per arm (line) with a band of +- one seed sd.

    ``curves``: arm -> one ``(steps, mean loss)`` curve per seed (the same steps in each).
    """
    import numpy as np

    fig, ax = _axes((8, 4))
    lows, tops = [], []
    for name, runs in curves.items():
        steps = list(runs[0][0])
        values = np.array([list(v)[: len(steps)] for _, v in runs], dtype=np.float64)
        mean = values.mean(axis=0)
        sd = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
        (line,) = ax.plot(steps, mean, label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(steps, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
        lows.append(float((mean - sd).min()))
        tops.append(float(mean[min(1, len(mean) - 1)]))
    if len(runs[0][0]) > 2:  # the step-0 loss (the init) would flatten the part that differs
        ax.set_ylim(min(lows) - 0.02, max(tops) + 0.02)
    ax.set(
        xlabel="optimizer step",
        ylabel="mean validation loss (nats)",
        title="validation loss, mean over domains (band: +- 1 sd over seeds)",
    )
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_reward(run_dir: str | Path, out: str | Path) -> Path:
    """The agent's reward per environment step (with a running mean)."""
    recs = [
        r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("rl/reward") is not None
    ]
    if not recs:
        raise AcodmError(f"{run_dir} has no logged rl/reward to plot")
    rewards = [float(r["rl/reward"]) for r in recs]
    window = max(5, len(rewards) // 10)
    running = [
        sum(rewards[max(0, i - window + 1) : i + 1]) / len(rewards[max(0, i - window + 1) : i + 1])
        for i in range(len(rewards))
    ]
    fig, ax = _axes((8, 3))
    ax.plot(rewards, alpha=0.4, label="reward")
    ax.plot(running, label=f"running mean ({window})")
    ax.set(xlabel="environment step", ylabel="reward", title="agent reward (proxy training)")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_learning_curve(run_dir: str | Path, out: str | Path) -> Path:
    """The agent's learning curve of a ``train-policy`` run: the return of each episode (left)
    and the critic loss (mean squared TD error) of each gradient-update call (right, log scale),
    from ``rl/episode/return`` and ``rl/update/critic_loss`` in ``metrics.jsonl``."""
    recs = read_metrics(Path(run_dir) / "metrics.jsonl")
    returns = [
        float(r["rl/episode/return"]) for r in recs if r.get("rl/episode/return") is not None
    ]
    updates = [r for r in recs if r.get("rl/update/critic_loss") is not None]
    if not returns and not updates:
        raise AcodmError(
            f"{run_dir} has no rl/episode/return or rl/update/critic_loss to plot "
            "(a train-policy run logs them)"
        )
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.plot(range(1, len(returns) + 1), returns, "o-")
    left.set(xlabel="episode", ylabel="return", title="return per episode")
    right.plot(
        [int(r["rl/update/n_updates"]) for r in updates],
        [float(r["rl/update/critic_loss"]) for r in updates],
    )
    if updates and min(float(r["rl/update/critic_loss"]) for r in updates) > 0:
        right.set_yscale("log")
    right.set(xlabel="gradient updates", ylabel="critic loss (TD MSE)", title="critic loss")
    return _save(fig, out)
