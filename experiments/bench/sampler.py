"""Benchmark: tokens/s of training batches served by the weighted domain sampler.

Target (BENCHMARKS.md, "Data path"): on ONE CPU core, at sequence 2048, at least 50x what a
410M model consumes on an H100 (~130k tokens/s), i.e. >= 6.5M tokens/s, with the weights
changing before every batch as they do under a mixing policy.

The store is real: ``--store PATH`` (e.g. the default corpus after ``acodm prepare``), or,
by default, one built here from text every Python installation has (standard-library
sources, one domain per top-level folder), tokenized with a BPE trained on it.

    python experiments/bench/sampler.py --json results/sampler.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import build_stdlib_store, machine

from acodm.data.sampler import DomainSampler
from acodm.data.store import TokenStore, open_store

TARGET_TOKENS_PER_S = 6.5e6


def measure(
    store: TokenStore, seq_len: int, batch_size: int, seconds: float, change_weights: bool
) -> dict[str, float]:
    sampler = DomainSampler(store, seq_len=seq_len, batch_size=batch_size, seed=0)
    rng = np.random.default_rng(0)
    k = len(store.domains)
    weights = rng.dirichlet(np.ones(k), size=4096)
    for _ in range(20):  # warm the page cache and the permutations
        sampler.next_batch()
    n = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            if change_weights:
                sampler.set_weights(weights[n % len(weights)])
            sampler.next_batch()
            n += 1
    tokens = n * batch_size * seq_len  # model input tokens per batch
    return {"batches": n, "seconds": elapsed, "tokens_per_s": tokens / elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", type=Path, default=None, help="an existing store to read")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--stdlib-mb", type=float, default=20.0, help="size of the built store")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):  # one CPU core, as the target says
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    with tempfile.TemporaryDirectory() as tmp:
        store = (
            open_store(args.store) if args.store else build_stdlib_store(Path(tmp), args.stdlib_mb)
        )
        info = {d: store.num_tokens(d) for d in store.domains}
        fixed = measure(store, args.seq_len, args.batch_size, args.seconds, False)
        moving = measure(store, args.seq_len, args.batch_size, args.seconds, True)

    result = {
        "benchmark": "sampler",
        "tokens_per_s": moving["tokens_per_s"],
        "target_tokens_per_s": TARGET_TOKENS_PER_S,
        "ratio_to_target": moving["tokens_per_s"] / TARGET_TOKENS_PER_S,
        "fixed_weights": fixed,
        "weights_changed_every_batch": moving,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "store": str(args.store) if args.store else "built from stdlib sources",
        "train_tokens_per_domain": info,
        "machine": machine(),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'weights':<22}{'batches':>10}{'tokens/s':>16}{'x target':>10}")
    for name, r in (("fixed", fixed), ("changed every batch", moving)):
        print(
            f"{name:<22}{r['batches']:>10}{r['tokens_per_s']:>16,.0f}"
            f"{r['tokens_per_s'] / TARGET_TOKENS_PER_S:>10.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
