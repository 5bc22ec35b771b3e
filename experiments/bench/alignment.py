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

Real data (``--store``): accuracy only, on a run preset's model (``--model``, default 70m) at
init and after ``--train-steps`` steps of acodm's Trainer with uniform weights, same batches
from the store's sampler, the layers acodm monitors; every rank is forced (also where the
trainer's ``effective_rank`` would take the exact path; the JSON says where).

    python experiments/bench/alignment.py --store STORE --model 70m --train-steps 300 \\
        --ranks 32,64,128,256,512 --interval 16 --seeds 3 --threads 2 --json out.json
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
import torch.nn.functional as F

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


def lm_step(model, tokens, device: str, bf16: bool) -> float:
    """The trainer's objective on (B, L+1) store windows: next-token cross-entropy, mean over
    tokens (all sequences have L targets). Returns the loss."""
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=tokens[:, :-1], use_cache=False).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


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


def make(variant, model, k: int, seed: int = 0, modules=None) -> TimedAlignment | None:
    """Hooks for ``variant`` ("off", "exact" or a rank) on ``modules`` (default: the
    synthetic model's :func:`monitored` layers)."""
    if variant == "off":
        return None
    return TimedAlignment(
        modules if modules is not None else monitored(model),
        k,
        rank=None if variant == "exact" else int(variant),
        seed=seed,
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


def accuracy(
    model, batches, ranks, k: int, seeds: int, device: str, bf16: bool, modules=None, step_fn=None
) -> dict:
    """Exact and projected (each rank, ``seeds`` projections) hooks attached at once for the
    interval ``batches``; off-diagonal Gram and score correlations with the exact ones.

    Yardstick for the projection's error: the sampling noise of the exact scores, as the
    correlation between the exact Grams/scores of the interval's two halves."""
    step_fn = step_fn or (lambda toks: step(model, toks, device, bf16))
    exact = make("exact", model, k, modules=modules)
    halves = [make("exact", model, k, modules=modules) for _ in range(2)]
    projs = {r: [make(r, model, k, seed=s, modules=modules) for s in range(seeds)] for r in ranks}
    everything = [exact, *halves, *(ga for group in projs.values() for ga in group)]
    losses = []
    for b, (toks, dom) in enumerate(batches):
        first = b < len(batches) // 2
        halves[0].enable() if first else halves[0].disable()
        halves[1].disable() if first else halves[1].enable()
        for ga in everything:
            ga.set_domains(dom)
        losses.append(step_fn(toks))
    g = exact.gram()
    n = exact.counts()
    off = ~torch.eye(k, dtype=torch.bool)
    z_exact = alignment_scores(g, n)
    res: dict = {"counts": n.tolist()}
    if losses and losses[0] is not None:
        res["loss_mean"] = float(np.mean(losses))
    act = n > 0  # domains the interval saw
    diag = g.diagonal().sqrt()
    cos = (g / torch.outer(diag, diag))[off & torch.outer(act, act)]
    res["exact_offdiag_cosine_mean_std"] = [float(cos.mean()), float(cos.std())]
    res["exact_scores"] = z_exact.tolist()
    if len(batches) >= 2:
        (g0, n0), (g1, n1) = ((h.gram(), h.counts()) for h in halves)
        res["exact_half_split"] = {
            "offdiag_corr": float(np.corrcoef(g0[off], g1[off])[0, 1]),
            "score_corr": float(
                np.corrcoef(alignment_scores(g0, n0), alignment_scores(g1, n1))[0, 1]
            ),
        }
    for r, gas in projs.items():
        corr = [float(np.corrcoef(g[off], p.gram()[off])[0, 1]) for p in gas]
        zs = [alignment_scores(p.gram(), n) for p in gas]
        zc = [float(np.corrcoef(z_exact, z)[0, 1]) for z in zs]
        rmse = [float(np.sqrt(np.mean((z - z_exact) ** 2))) for z in zs]
        err = [
            float((p.gram() - g).norm() ** 2 / g.trace() ** 2 / (4 / r * (1 + 1 / r))) for p in gas
        ]
        res[str(r)] = {
            "offdiag_corr": corr,
            "score_corr": zc,
            "score_rmse": rmse,
            "sq_err_over_bound": err,
        }
    for ga in everything:
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


def machine_info(device: str) -> dict:
    return {
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "load_avg": os.getloadavg(),
    }


def real_data(args, ranks: list[int], bf16: bool) -> dict:
    """A run preset's model (``--model``) on a real store: the accuracy at init, then after
    ``--train-steps`` steps of acodm's Trainer with uniform weights, on the same batches."""
    from acodm.config import TrainConfig
    from acodm.models import count_parameters
    from acodm.trainer import Trainer, effective_rank

    t_start = time.perf_counter()
    cfg = TrainConfig(
        store=args.store,
        model=args.model,
        seq_len=args.seq_len,
        micro_batch_size=args.batch,
        steps=max(args.train_steps, 1),
        warmup_steps=min(args.warmup, max(args.train_steps - 1, 0)),
        lr=args.lr,
        device=args.device,
        precision="bf16" if bf16 else "fp32",
        dynamics=False,  # no hooks while training; the benchmark attaches its own
        eval_every=0,
        checkpoint_every=0,
        seed=args.seed,
    )
    trainer = Trainer(cfg)
    model, modules, k = trainer.model, trainer.monitored, trainer.k
    uniform = np.full(k, 1.0 / k)
    trainer.sampler.set_weights(uniform)
    # drawn before training: the first epoch's training windows come after them
    batches = []
    for _ in range(args.interval):
        b = trainer.sampler.next_batch()
        batches.append((torch.from_numpy(b.tokens).to(trainer.device), torch.from_numpy(b.domains)))

    def step_fn(toks):
        return lm_step(model, toks, args.device, bf16)

    def measure(label: str) -> dict:
        t0 = time.perf_counter()
        model.train()
        acc = accuracy(model, batches, ranks, k, args.seeds, args.device, bf16, modules, step_fn)
        acc["seconds"] = time.perf_counter() - t0
        print(f"[{label}] accuracy measured in {acc['seconds']:.0f} s, loss {acc['loss_mean']:.3f}")
        return acc

    init = measure("step 0")
    curve = []
    t0 = time.perf_counter()
    while args.train_steps > 0 and not trainer.done:
        rep = trainer.train_interval(uniform, steps=args.log_every)
        curve.append([trainer.step, rep.metrics["train/loss"], rep.seconds])
        print(
            f"step {trainer.step}: train loss {rep.metrics['train/loss']:.3f} ({rep.seconds:.0f} s)"
        )
    train_s = time.perf_counter() - t0
    trained = measure(f"step {trainer.step}")
    trainer.close()
    return {
        "mode": "real-data",
        "store": os.path.abspath(args.store),
        "domains": list(trainer.domains),
        "config": cfg.to_dict(),
        "parameters": count_parameters(model),
        "monitored": [{"name": n, "in": m.in_features, "out": m.out_features} for n, m in modules],
        "trainer_projects": {str(r): effective_rank(r, modules) == r for r in ranks},
        "tokens_per_interval": args.interval * args.batch * args.seq_len,
        "train": {
            "steps": trainer.step,
            "seconds": train_s,
            "curve_step_loss_seconds": curve,
            "loss_on_accuracy_batches": {
                "init": init["loss_mean"],
                "trained": trained["loss_mean"],
            },
        },
        "accuracy": {"init": init, "trained": trained},
        "wall_s": time.perf_counter() - t_start,
    }


def print_real(result: dict, ranks: list[int]) -> None:
    m, c = result["machine"], result["config"]
    print(
        f"\n{c['model']} ({result['parameters'] / 1e6:.1f}M params) on {m['device']} "
        f"({m['cpu_threads']} threads), {len(result['domains'])} domains, batch "
        f"{c['micro_batch_size']}x{c['seq_len']}, {result['args']['interval']} micro-batches per "
        f"Gram, {result['args']['seeds']} projection seeds, wall {result['wall_s']:.0f} s"
    )
    accs = result["accuracy"]
    print(
        f"{'':>8}"
        + "".join(
            f" {label + ' (loss ' + format(a['loss_mean'], '.2f') + ')':>36}"
            for label, a in [("init", accs["init"]), ("trained", accs["trained"])]
        )
    )
    print(f"{'rank':>8}" + f" {'offdiag corr mean/min':>22} {'score corr mean/min':>13}" * 2)
    for r in ranks:
        row = f"{r:>8}"
        for a in accs.values():
            c_, z = a[str(r)]["offdiag_corr"], a[str(r)]["score_corr"]
            row += f" {np.mean(c_):13.3f} / {np.min(c_):.3f} {np.mean(z):7.3f} / {np.min(z):.3f}"
        print(row)
    for label, a in accs.items():
        h = a.get("exact_half_split", {})
        cm, cs = a["exact_offdiag_cosine_mean_std"]
        print(
            f"{label}: exact off-diagonal cosines {cm:.3f} +- {cs:.3f}; exact halves of the "
            f"interval agree: offdiag {h.get('offdiag_corr', float('nan')):.3f}, scores "
            f"{h.get('score_corr', float('nan')):.3f}"
        )


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
    real = ap.add_argument_group("real data (a store from `acodm prepare`; no timing)")
    real.add_argument("--store", default=None, help="store folder: switches to real-data mode")
    real.add_argument("--model", default="70m", help="acodm.models preset")
    real.add_argument("--train-steps", type=int, default=300, help="Trainer steps, uniform mix")
    real.add_argument("--seq-len", type=int, default=256)
    real.add_argument("--batch", type=int, default=8, help="micro-batch (sequences)")
    real.add_argument("--lr", type=float, default=2e-3)
    real.add_argument("--warmup", type=int, default=30)
    real.add_argument("--seed", type=int, default=0, help="model init and sampler seed")
    real.add_argument("--log-every", type=int, default=25, help="steps per training report")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16 = args.bf16 or args.device.startswith("cuda")
    ranks = [int(r) for r in args.ranks.split(",")]
    if args.store:
        result = real_data(args, ranks, bf16)
        result = {"args": vars(args), "machine": machine_info(args.device), **result}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        print_real(result, ranks)
        return
    model, batch, seq, vocab = build_model(args.preset, args.device)
    batches = domain_batches(max(args.interval, 4), batch, seq, vocab, args.k, args.device)
    variants = ["off", *ranks, "exact"]
    t = timing(model, batches, variants, args.k, args.reps, args.device, bf16)
    acc = accuracy(model, batches[: args.interval], ranks, args.k, args.seeds, args.device, bf16)
    cost = gram_cost(model, args.k, ranks, args.device)
    machine = machine_info(args.device)
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
