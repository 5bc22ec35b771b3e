"""Benchmark: acodm's training loop against the plain Hugging Face loop, same process.

Same model (built by acodm from the same preset and seed), same batch shape, same device,
bf16 autocast on a GPU, fused AdamW on both sides. The plain loop is
``model(input_ids, labels=input_ids).loss.backward(); opt.step()`` on batches prepared in
advance (no data loading cost at all). acodm's loop is :meth:`acodm.trainer.Trainer.train_interval`
with everything it does per step: sampling from the store, per-domain losses, and (unless
``--no-dynamics``) the gradient-alignment hooks. Rounds alternate between the two loops and the
median tokens/s of each is compared: ``ratio`` = acodm / plain (goal >= 1.0 now, 1.25 later).
``--compile`` adds a third loop, acodm with ``TrainConfig(compile=True)`` (``torch.compile``;
the alignment hooks stay eager), and ``ratio_compiled`` = that / plain: the measurement behind
any decision to compile by default on a GPU.

    python experiments/bench/trainer.py --model tiny --json results/trainer_cpu.json
    python experiments/bench/trainer.py --model 410m --seq-len 2048 --batch 16 --json ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import build_stdlib_store, machine, sync

from acodm.config import TrainConfig
from acodm.data.store import open_store
from acodm.models import build_model
from acodm.trainer import Trainer


def plain_loop(model_name: str, vocab: int, cfg: TrainConfig, device: str, batches: list):
    model = build_model(model_name, vocab, max_seq_len=cfg.seq_len, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True
    )
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.startswith("cuda")
        else contextlib.nullcontext()
    )

    def run(steps: int) -> None:
        for i in range(steps):
            x = batches[i % len(batches)]
            opt.zero_grad(set_to_none=True)
            with amp:
                loss = model(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()

    return run


def acodm_loop(cfg: TrainConfig):
    trainer = Trainer(cfg)
    weights = np.full(trainer.k, 1.0 / trainer.k)

    def run(steps: int) -> None:
        trainer.train_interval(weights, steps=steps)

    return run


def timed(run, steps: int, device: str) -> float:
    sync(device)
    t = time.perf_counter()
    run(steps)
    sync(device)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--no-dynamics", action="store_true", help="acodm without alignment hooks")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time acodm with torch.compile")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = (
            open_store(args.store)
            if args.store
            else build_stdlib_store(Path(tmp), 8.0, vocab_size=args.vocab_size)
        )
        cfg = TrainConfig(
            store=str(store.path),
            model=args.model,
            seq_len=args.seq_len,
            micro_batch_size=args.batch,
            steps=10**9,
            warmup_steps=10,
            device=args.device,
            dynamics=not args.no_dynamics,
            eval_windows=1,
        )
        gen = torch.Generator().manual_seed(0)
        batches = [
            torch.randint(0, store.vocab_size, (args.batch, args.seq_len), generator=gen).to(
                args.device
            )
            for _ in range(4)
        ]
        loops = {
            "plain_hf": plain_loop(args.model, store.vocab_size, cfg, args.device, batches),
            "acodm": acodm_loop(cfg),
        }
        if args.compile:
            loops["acodm_compiled"] = acodm_loop(cfg.replace(compile=True))
        for run in loops.values():
            run(3)  # warm-up (allocator, kernels)
        times: dict[str, list[float]] = {n: [] for n in loops}
        for _ in range(args.rounds):
            for name, run in loops.items():
                times[name].append(timed(run, args.steps, args.device))
    tokens = args.steps * args.batch * args.seq_len
    tok_s = {n: tokens / statistics.median(t) for n, t in times.items()}
    result = {
        "benchmark": "trainer",
        "ratio": tok_s["acodm"] / tok_s["plain_hf"],
        "ratio_compiled": (
            tok_s["acodm_compiled"] / tok_s["plain_hf"] if "acodm_compiled" in tok_s else None
        ),
        "tokens_per_s": tok_s,
        "round_seconds": times,
        "model": args.model,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "dynamics": not args.no_dynamics,
        "device": args.device,
        "machine": machine(),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"model {args.model}, seq {args.seq_len}, batch {args.batch}, {args.device}")
    for n in tok_s:
        print(f"  {n:<15}{tok_s[n]:>14,.0f} tokens/s")
    print(f"  ratio acodm / plain HF: {result['ratio']:.3f}")
    if result["ratio_compiled"] is not None:
        print(f"  ratio acodm compiled / plain HF: {result['ratio_compiled']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
