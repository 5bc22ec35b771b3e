"""Benchmark: is the reward valid? The branching measurement of issue 11 (BENCHMARKS.md).

A uniform run of a preset is saved at ``--points`` (>= 3 steps); from each saved state a set of
mixtures (uniform, natural, UniMax, temperature 0.5, one-hot and concentrated ones, seeded
Dirichlet ones; >= 16 by default) is each trained for one interval of K steps, the state
restored exactly in between (checked: uniform runs first and last at every point and must give
bit-identical losses on CPU). For each mixture the *real* decrease of the mean validation loss
(the store's val split, ``--val-windows`` windows per domain, the first ones as acodm's
evaluation takes them) is recorded, with every candidate reward:

* ``alignment``: the env's ``reward="alignment"``, ``sum_i w_i s_i`` (the paper's);
* ``probe``: the env's ``reward="probe"`` at that state, ``100 (L_before - L_after) / L_before``
  on ``--probe-windows`` fixed windows per domain of the reward split (the env subtracts a
  running baseline too, the same for every branch of a point, so rankings are unchanged);
* ``entropy``: the entropy of the weights alone (no measurement at all).

Per reward and point: Spearman correlation with the real decrease, the partial Spearman given
weight entropy (rank-transform all three, then the partial Pearson correlation), and
``top_pick_ratio`` = the real decrease of the reward's top pick / the best mixture's. Also the
probe's cost per interval (seconds of the probe's forward passes / seconds of the interval).

    python experiments/bench/reward_validity.py --store quickstart/store --preset cpu_small \\
        --interval 8 --points 48,144,240 --out experiments/results/reward_validity_cpu.json

The store needs a reward split (``acodm prepare --reward-fraction``, the default of schema 3).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from common import machine

from acodm.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from acodm.config import preset
from acodm.envs.data_mixing import check_reward_split
from acodm.io import atomic_write_json
from acodm.mixers import make_mixer
from acodm.spaces import DEFAULT_PROBE_WINDOWS, alignment_reward, env_version
from acodm.trainer import Trainer

DEFAULT_OUT = Path("experiments/results/reward_validity_cpu.json")
#: The default env's reward (acodm/DataMixing-v1, the default recipe; v0's is "alignment").
ENV_DEFAULT_REWARD = env_version("v1")["reward"]
REWARDS = ("alignment", "probe", "entropy")


# -- statistics --------------------------------------------------------------------------------


def ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 0..n-1 with ties averaged (as Spearman's rho needs)."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a), dtype=np.float64)
    r[order] = np.arange(len(a), dtype=np.float64)
    for v in np.unique(a):  # average the ranks of tied values
        tie = a == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else math.nan


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return _pearson(ranks(x), ranks(y))


def partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Spearman partial correlation of ``x`` and ``y`` given ``z``: ranks, then
    ``(r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))``; NaN where ``x`` or ``y`` is a
    monotone function of ``z`` (the entropy given itself)."""
    rx, ry, rz = ranks(x), ranks(y), ranks(z)
    xy, xz, yz = _pearson(rx, ry), _pearson(rx, rz), _pearson(ry, rz)
    den = (1.0 - xz * xz) * (1.0 - yz * yz)
    return (xy - xz * yz) / math.sqrt(den) if den > 1e-12 else math.nan


def top_pick_ratio(reward: Sequence[float], real: Sequence[float]) -> float:
    """Real improvement of the reward's top pick over the best mixture's improvement."""
    r, y = np.asarray(reward), np.asarray(real)
    best = float(y.max())
    return float(y[int(np.argmax(r))]) / best if best != 0 else math.nan


def entropy(w: np.ndarray) -> float:
    p = np.asarray(w, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


# -- mixtures ----------------------------------------------------------------------------------


def mixtures(trainer: Trainer, n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """``n`` >= 4 + 2k mixtures: the static rules, one-hot and concentrated ones (0.6 on one
    domain, the rest shared evenly), then seeded Dirichlet(1) ones. Uniform comes first."""
    ctx = trainer.mixer_context()
    k = ctx.k
    out: list[tuple[str, np.ndarray]] = []
    for spec in ("uniform", "natural", "unimax:4", "temperature:0.5"):
        m = make_mixer(spec)
        m.setup(ctx)
        out.append((spec, m.weights()))
    for i, d in enumerate(ctx.domains):
        out.append((f"onehot:{d}", np.eye(k)[i]))
    for i, d in enumerate(ctx.domains):
        w = np.full(k, 0.4 / (k - 1))
        w[i] = 0.6
        out.append((f"concentrated:{d}", w))
    rng = np.random.default_rng(seed)
    j = 0
    while len(out) < n:
        out.append((f"dirichlet:{j}", rng.dirichlet(np.ones(k))))
        j += 1
    return out


# -- the measurement ---------------------------------------------------------------------------


def _save(trainer: Trainer, folder: Path) -> Path:
    save_checkpoint(folder, trainer.step, **trainer.checkpoint_payload(), keep_last=1)
    path = latest_checkpoint(folder)
    assert path is not None
    return path


def _val_losses(trainer: Trainer) -> np.ndarray:
    """Per-domain validation loss (acodm's own evaluation: the first ``eval_windows``)."""
    ev = trainer.evaluate()
    return np.array([ev[f"eval/loss/{d}"] for d in trainer.domains])


def _branch(
    trainer: Trainer, ckpt: Path, w: np.ndarray, before: dict[str, np.ndarray], n_probe: int
) -> dict[str, Any]:
    """Restore ``ckpt``, train one interval with ``w``, measure everything."""
    trainer.load_checkpoint(load_checkpoint(ckpt))
    report = trainer.train_interval(w)
    t0 = time.perf_counter()
    probe = trainer.reward_losses(n_probe)
    probe_s = time.perf_counter() - t0
    val = _val_losses(trainer)
    lp = float(before["probe"].mean())
    return {
        "weights": report.weights.tolist(),
        "real": float(before["val"].mean() - val.mean()),
        "alignment": alignment_reward(report.weights, report.dynamics.alignment),
        "probe": 100.0 * (lp - float(probe.mean())) / lp,
        "entropy": entropy(report.weights),
        "val_loss": val.tolist(),
        "probe_loss": probe.tolist(),
        "interval_s": report.seconds,
        "probe_s": probe_s,
    }


def measure(
    store: str,
    *,
    preset_name: str = "cpu_small",
    interval: int = 8,
    points: Sequence[int] = (48, 144, 240),
    n_mixtures: int = 18,
    val_windows: int = 32,
    probe_windows: int = DEFAULT_PROBE_WINDOWS,
    seed: int = 0,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The branching measurement; returns the result document (see the module docstring)."""
    points = sorted(int(p) for p in points)
    cfg = preset(preset_name, store).replace(
        interval=interval, eval_windows=val_windows, device=device, seed=seed, eval_every=0
    )
    if overrides:
        cfg = cfg.replace(**overrides)
    if cfg.steps is not None and cfg.steps < points[-1] + interval:
        cfg = cfg.replace(steps=points[-1] + interval)
    check_reward_split(cfg.store, cfg.seq_len, "the probe reward")
    start = time.perf_counter()
    trainer = Trainer(cfg)
    mixes = mixtures(trainer, n_mixtures, seed)
    uniform = mixes[0][1]
    per_point: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="reward-validity.") as tmp:
        for p in points:
            while trainer.step < p:  # the uniform trunk (the last interval may be short)
                trainer.train_interval(uniform, steps=min(interval, p - trainer.step))
            ckpt = _save(trainer, Path(tmp) / f"step{p}")
            before = {
                "val": _val_losses(trainer),
                "probe": trainer.reward_losses(probe_windows),
            }
            branches = [_branch(trainer, ckpt, w, before, probe_windows) for _, w in mixes]
            again = _branch(trainer, ckpt, uniform, before, probe_windows)  # exact restore?
            exact = again["val_loss"] == branches[0]["val_loss"] and (
                again["probe_loss"] == branches[0]["probe_loss"]
            )
            per_point.append({"step": p, "branches": branches, "exact_restore": exact})
            print(
                f"[reward-validity] step {p}: {len(branches)} mixtures, exact restore {exact}, "
                f"{time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )
            trainer.load_checkpoint(load_checkpoint(ckpt))  # back on the trunk
    trainer.close()
    return _summarise(
        preset_name, cfg, mixes, per_point, time.perf_counter() - start, probe_windows
    )


def _summarise(
    preset_name: str,
    cfg: Any,
    mixes: list[tuple[str, np.ndarray]],
    per_point: list[dict[str, Any]],
    wall_s: float,
    probe_windows: int,
) -> dict[str, Any]:
    rewards: dict[str, dict[str, list[float | None]]] = {}
    for name in REWARDS:
        rows: dict[str, list[float | None]] = {
            "spearman": [],
            "partial_spearman": [],
            "top_pick_ratio": [],
        }
        for pt in per_point:
            b = pt["branches"]
            x = [r[name] for r in b]
            y = [r["real"] for r in b]
            z = [r["entropy"] for r in b]
            rows["spearman"].append(_json_num(spearman(x, y)))
            rows["partial_spearman"].append(_json_num(partial_spearman(x, y, z)))
            rows["top_pick_ratio"].append(_json_num(top_pick_ratio(x, y)))
        rewards[name] = rows
    probe_s = [r["probe_s"] for pt in per_point for r in pt["branches"]]
    interval_s = [r["interval_s"] for pt in per_point for r in pt["branches"]]
    return {
        "points": [pt["step"] for pt in per_point],
        "default": ENV_DEFAULT_REWARD,
        "rewards": rewards,
        "mixtures": [name for name, _ in mixes],
        "exact_restore": all(pt["exact_restore"] for pt in per_point),
        "probe_cost": {
            "probe_s_per_interval": float(np.mean(probe_s)),
            "interval_s": float(np.mean(interval_s)),
            "ratio": float(np.sum(probe_s) / np.sum(interval_s)),
            "windows_per_domain": probe_windows,
        },
        "config": {
            "preset": preset_name,
            "model": cfg.model,
            "interval": cfg.interval,
            "seq_len": cfg.seq_len,
            "micro_batch_size": cfg.micro_batch_size,
            "steps": cfg.steps,
            "val_windows_per_domain": cfg.eval_windows,
            "store": cfg.store,
            "device": cfg.device,
        },
        "per_point": [
            {
                "step": pt["step"],
                "exact_restore": pt["exact_restore"],
                "branches": [
                    {"mixture": name, **{k: r[k] for k in ("real", *REWARDS, "weights")}}
                    for (name, _), r in zip(mixes, pt["branches"], strict=True)
                ],
            }
            for pt in per_point
        ],
        "wall_s": wall_s,
        "machine": machine(),
    }


def _json_num(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def table(result: dict[str, Any]) -> str:
    pts = result["points"]
    head = "reward      metric            " + "".join(f"{f'step {p}':>10}" for p in pts)
    lines = [head, "-" * len(head)]
    for name, rows in result["rewards"].items():
        for metric, vals in rows.items():
            cells = "".join(f"{'-' if v is None else f'{v:.3f}':>10}" for v in vals)
            lines.append(f"{name:<11} {metric:<17} {cells}")
    c = result["probe_cost"]
    lines.append(
        f"probe cost: {c['probe_s_per_interval']:.3f} s per interval of {c['interval_s']:.3f} s "
        f"({100 * c['ratio']:.1f}%); exact restore: {result['exact_restore']}; "
        f"wall {result['wall_s']:.0f} s"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True, help="a token store with a reward split")
    ap.add_argument("--preset", default="cpu_small", help="run preset (acodm.config.PRESETS)")
    ap.add_argument("--interval", type=int, default=8, help="K: steps per branch")
    ap.add_argument("--points", default="48,144,240", help="branch steps, comma-separated")
    ap.add_argument("--mixtures", type=int, default=18, help="mixtures per point (>= 16)")
    ap.add_argument("--val-windows", type=int, default=32, help="validation windows per domain")
    ap.add_argument("--probe-windows", type=int, default=DEFAULT_PROBE_WINDOWS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    points = [int(p) for p in args.points.split(",") if p.strip()]
    if len(points) < 1 or args.mixtures < 4:
        ap.error("give at least one point and four mixtures (the issue asks >= 3 and >= 16)")
    result = measure(
        args.store,
        preset_name=args.preset,
        interval=args.interval,
        points=points,
        n_mixtures=args.mixtures,
        val_windows=args.val_windows,
        probe_windows=args.probe_windows,
        seed=args.seed,
        device=args.device,
        overrides={"steps": args.steps} if args.steps else None,
    )
    given = list(sys.argv[1:] if argv is None else argv)
    result["command"] = " ".join(["python", "experiments/bench/reward_validity.py", *given])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
