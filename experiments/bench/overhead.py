"""Benchmark: what the mixer's observation costs per optimizer step.

The same run twice, side by side in one process: static weights without any dynamics
(``dynamics=False``: no hooks) against full dynamics with the gradient-alignment Gram
computed every interval (K = 1, the worst case) plus layer statistics. Reported per number of
domains k (4, 16, 64 by default) and per model: ``time_ratio`` (median step time, dynamics /
static; goal <= 1.005 on a GPU at 410m) and ``memory_ratio`` (footprint: persistent state
plus the step's peak, dynamics / static; GPU only, None on a CPU).

    python experiments/bench/overhead.py --models tiny,14m --json results/overhead_cpu.json
    python experiments/bench/overhead.py --models 160m,410m --seq-len 2048 --batch 16 --json ...
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import build_stdlib_store, machine, split_store, sync

from acodm.config import TrainConfig
from acodm.data.store import open_store
from acodm.trainer import Trainer


def _allocated(device: str) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else 0


class Variant:
    """One trainer with its measured step times and memory footprint."""

    def __init__(self, cfg: TrainConfig, device: str) -> None:
        self.device = device
        before = _allocated(device)
        self.trainer = Trainer(cfg)
        self.weights = np.full(self.trainer.k, 1.0 / self.trainer.k)
        self.trainer.train_interval(self.weights, steps=2)  # warm-up; creates optimizer state
        self.persistent = _allocated(device) - before
        self.times: list[float] = []
        self.peak_extra = 0

    def round(self, steps: int) -> None:
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = _allocated(self.device)
        sync(self.device)
        t = time.perf_counter()
        for _ in range(steps):  # one interval per step: alignment computed every step
            self.trainer.train_interval(self.weights, steps=1)
        sync(self.device)
        self.times.append((time.perf_counter() - t) / steps)
        if cuda:
            self.peak_extra = max(self.peak_extra, torch.cuda.max_memory_allocated() - base)

    def footprint(self) -> int:
        return self.persistent + self.peak_extra


def measure(store_path: str, model: str, args: argparse.Namespace) -> dict[str, object]:
    base = TrainConfig(
        store=store_path,
        model=model,
        seq_len=args.seq_len,
        micro_batch_size=args.batch,
        steps=10**9,
        warmup_steps=10,
        device=args.device,
        eval_windows=1,
        alignment_rank=args.rank,
        monitored_layers=args.layers,
    )
    static = Variant(base.replace(dynamics=False), args.device)
    dynamic = Variant(base, args.device)
    for _ in range(args.rounds):
        static.round(args.steps)
        dynamic.round(args.steps)
    t_static, t_dyn = statistics.median(static.times), statistics.median(dynamic.times)
    mem = dynamic.footprint() / static.footprint() if args.device.startswith("cuda") else None
    out = {
        "time_ratio": t_dyn / t_static,
        "memory_ratio": mem,
        "step_seconds_static": t_static,
        "step_seconds_dynamics": t_dyn,
        "footprint_gib": None
        if mem is None
        else {"static": static.footprint() / 2**30, "dynamics": dynamic.footprint() / 2**30},
    }
    del static, dynamic
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny")
    ap.add_argument("--domains", default="4,16,64")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rank", type=int, default=128, help="alignment projection rank")
    ap.add_argument("--layers", type=int, default=3, help="monitored layers")
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = (
            open_store(args.store)
            if args.store
            else build_stdlib_store(Path(tmp) / "src", 8.0, vocab_size=args.vocab_size)
        )
        for k in (int(x) for x in args.domains.split(",")):
            store = split_store(src, k, Path(tmp) / f"k{k}")
            for model in args.models.split(","):
                r = measure(str(store.path), model, args)
                results[f"{model}/k={k}"] = r
                mem = "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.4f}"
                print(
                    f"{model:>6} k={k:<3} time_ratio {r['time_ratio']:.4f}  memory_ratio {mem}",
                    flush=True,
                )
    result = {
        "benchmark": "overhead",
        "results": results,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "rank": args.rank,
        "layers": args.layers,
        "device": args.device,
        "machine": machine(),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
