"""Benchmark: cost and accuracy of per-domain gradient alignment (acodm.dynamics.alignment).

Targets (BENCHMARKS.md, "Mixer overhead"): the reward's hooks add <= 0.5% to a training step;
the projected Gram tracks the exact one (H100 reference, 410M: off-diagonal correlation 0.76 /
0.88 / 0.94 at rank 64 / 128 / 256).

A GPT-NeoX from transformers (random init), k domains with different unigram distributions,
sequences' domains drawn uniformly, the MLP output projections of the top 3 layers monitored.
Timed: one forward+backward (``model(ids, labels=ids).loss.backward()``) with no hooks, with the
projected hooks at each rank, and with exact fp32 accumulators, interleaved round-robin, median
of the repeats. Accuracy: all variants attached at once for an interval of micro-batches; the
off-diagonal Gram correlation with the exact Gram and the correlation of the alignment scores.

    python experiments/bench/alignment.py --json alignment_cpu.json                       # CPU defaults
    python experiments/bench/alignment.py --device cuda --preset pythia-160m --json alignment_gpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from acodm.dynamics import GradientAlignment, alignment_scores

PRESETS = {  # layers, hidden, heads, batch, seq, vocab
    "tiny": (4, 256, 4, 8, 256, 8192),
    "pythia-160m": (12, 768, 12, 16, 2048, 50304),
    "pythia-410m": (24, 1024, 16, 16, 2048, 50304),
}


def build_model(preset: str, device: str) -> tuple[torch.nn.Module, int, int, int]:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    layers, hidden, heads, batch, seq, vocab = PRESETS[preset]
    cfg = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=seq,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(cfg).to(device).train(), batch, seq, vocab


def domain_batches(n: int, batch: int, seq: int, vocab: int, k: int, device: str):
    """n batches of (tokens (B, seq), domains (B,)): domain i mixes its own Zipf unigram
    (over a domain-specific permutation of the vocabulary) with a shared one."""
    g = torch.Generator().manual_seed(1)
    zipf = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    shared = zipf / zipf.sum()
    dists = []
    for _ in range(k):
        own = zipf[torch.randperm(vocab, generator=g)]
        dists.append((0.5 * own / own.sum() + 0.5 * shared).float())
    out = []
    for _ in range(n):
        dom = torch.randint(0, k, (batch,), generator=g)
        toks = torch.stack([torch.multinomial(dists[d], seq, True, generator=g) for d in dom])
        out.append((toks.to(device), dom))
    return out


def monitored(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    layers = model.gpt_neox.layers
    return [
        (f"layers.{i}.mlp.dense_4h_to_h", layers[i].mlp.dense_4h_to_h)
        for i in range(len(layers) - 3, len(layers))
    ]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step(model, toks, device: str, bf16: bool) -> None:
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        loss = model(toks, labels=toks).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


class TimedAlignment(GradientAlignment):
    """Adds up the wall time spent inside the hooks (exact on the CPU; on CUDA the hooks only
    launch kernels, so this undercounts there and the step-time ratio is the number to read)."""

    hook_s = 0.0

    def _forward_hook(self, *args, **kwargs):
        t0 = time.perf_counter()
        super()._forward_hook(*args, **kwargs)
        self.hook_s += time.perf_counter() - t0

    def _grad_hook(self, *args, **kwargs):
        t0 = time.perf_counter()
        super()._grad_hook(*args, **kwargs)
        self.hook_s += time.perf_counter() - t0


def make(variant, model, k: int, seed: int = 0) -> TimedAlignment | None:
    if variant == "off":
        return None
    return TimedAlignment(
        monitored(model), k, rank=None if variant == "exact" else int(variant), seed=seed
    )


def timing(model, batches, variants, k: int, reps: int, device: str, bf16: bool) -> dict:
    times: dict[str, list[float]] = {str(v): [] for v in variants}
    hooks: dict[str, list[float]] = {str(v): [] for v in variants}
    peak: dict[str, int] = {}
    for rep in range(reps + 2):  # 2 warm-up rounds
        for v in variants:
            gc.collect()
            ga = make(v, model, k)
            toks, dom = batches[rep % len(batches)]
            if ga is not None:
                ga.set_domains(dom)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            t0 = time.perf_counter()
            step(model, toks, device, bf16)
            sync(device)
            dt = time.perf_counter() - t0
            if rep >= 2:
                times[str(v)].append(dt)
                hooks[str(v)].append(ga.hook_s if ga is not None else 0.0)
            if device.startswith("cuda"):
                peak[str(v)] = max(peak.get(str(v), 0), torch.cuda.max_memory_allocated())
            if ga is not None:
                ga.remove()
    med = {v: statistics.median(t) for v, t in times.items()}
    # ratio to the "off" step of the same round: robust to slow drifts of a shared machine
    paired = {
        v: statistics.median(a / b for a, b in zip(t, times["off"], strict=True))
        for v, t in times.items()
    }
    hook = {v: statistics.median(h) for v, h in hooks.items()}
    return {
        "median_s": med,
        "paired_ratio": paired,
        "hook_s": hook,
        "all_s": times,
        "peak_bytes": peak,
    }


def accuracy(model, batches, ranks, k: int, seeds: int, device: str, bf16: bool) -> dict:
    exact = make("exact", model, k)
    projs = {r: [make(r, model, k, seed=s) for s in range(seeds)] for r in ranks}
    for toks, dom in batches:
        for ga in [exact, *(ga for group in projs.values() for ga in group)]:
            ga.set_domains(dom)
        step(model, toks, device, bf16)
    g = exact.gram()
    n = exact.counts()
    off = ~torch.eye(k, dtype=torch.bool)
    z_exact = alignment_scores(g, n)
    res: dict = {"counts": n.tolist()}
    diag = g.diagonal().sqrt()
    cos = (g / torch.outer(diag, diag))[off]
    res["exact_offdiag_cosine_mean_std"] = [float(cos.mean()), float(cos.std())]
    for r, gas in projs.items():
        corr = [float(np.corrcoef(g[off], p.gram()[off])[0, 1]) for p in gas]
        zc = [float(np.corrcoef(z_exact, alignment_scores(p.gram(), n))[0, 1]) for p in gas]
        err = [
            float((p.gram() - g).norm() ** 2 / g.trace() ** 2 / (4 / r * (1 + 1 / r))) for p in gas
        ]
        res[str(r)] = {"offdiag_corr": corr, "score_corr": zc, "sq_err_over_bound": err}
    for ga in [exact, *(ga for group in projs.values() for ga in group)]:
        ga.remove()
    return res


def gram_cost(model, k: int, ranks, device: str) -> dict:
    out = {}
    for v in [*ranks, "exact"]:
        ga = make(v, model, k)
        t0 = time.perf_counter()
        for _ in range(5):
            alignment_scores(ga.gram(), torch.ones(k))
        out[str(v)] = (time.perf_counter() - t0) / 5
        out[f"{v}_accumulator_bytes"] = sum(m.acc.numel() * 4 for m in ga._mods)
        ga.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--ranks", default="64,128,256")
    ap.add_argument("--interval", type=int, default=8, help="micro-batches for the accuracy Gram")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (default on cuda)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = args.bf16 or args.device.startswith("cuda")
    ranks = [int(r) for r in args.ranks.split(",")]
    model, batch, seq, vocab = build_model(args.preset, args.device)
    batches = domain_batches(max(args.interval, 4), batch, seq, vocab, args.k, args.device)
    variants = ["off", *ranks, "exact"]
    t = timing(model, batches, variants, args.k, args.reps, args.device, bf16)
    acc = accuracy(model, batches[: args.interval], ranks, args.k, args.seeds, args.device, bf16)
    cost = gram_cost(model, args.k, ranks, args.device)
    machine = {
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_avg": os.getloadavg(),
    }
    result = {
        "args": vars(args),
        "machine": machine,
        "timing": t,
        "accuracy": acc,
        "gram_cost_s": cost,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    base = t["median_s"]["off"]
    print(
        f"\n{args.preset} on {machine['device']} ({machine['cpu_threads']} threads), batch {batch}x{seq}, "
        f"k={args.k}, bf16={bf16}, {args.reps} reps, load {machine['load_avg'][0]:.1f}"
    )
    print(
        f"{'variant':>8} {'step ms':>9} {'overhead':>9} {'paired':>8} {'in hooks':>9} {'peak MiB':>9} {'offdiag corr (mean/min)':>24} {'score corr':>10} {'gram+score ms':>13}"
    )
    for v in variants:
        med = t["median_s"][str(v)]
        pk = t["peak_bytes"].get(str(v))
        pr, hk = t["paired_ratio"][str(v)], t["hook_s"][str(v)]
        row = (
            f"{v!s:>8} {med * 1e3:9.1f} {100 * (med / base - 1):8.2f}% {100 * (pr - 1):7.2f}% "
            f"{100 * hk / base:8.2f}% {pk / 2**20 if pk else float('nan'):9.0f}"
        )
        if str(v) in acc:
            c, z = acc[str(v)]["offdiag_corr"], acc[str(v)]["score_corr"]
            row += f" {np.mean(c):12.3f} / {np.min(c):.3f} {np.mean(z):10.3f}"
        else:
            row += f" {'1 (ref)' if v == 'exact' else '-':>24} {'-':>10}"
        if str(v) in cost:
            row += f" {cost[str(v)] * 1e3:13.2f}"
        print(row)


if __name__ == "__main__":
    main()
