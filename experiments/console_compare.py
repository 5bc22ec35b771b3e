"""Experiment: does the agent console (``--console``) help, against the same run without it?

For each seed, two ``acodm pretrain`` runs on the same annotated store, config and mixer:
without the console (within-domain order uniform) and with it (windows ordered by the
console's scores, updated from the reference-gradient credits). Prints and writes mean /
worst validation perplexity per run, the per-seed difference, and the mean and spread over
seeds. The store must be annotated first (``acodm annotate STORE``).

    python experiments/console_compare.py --store data/store --seeds 0,1 --steps 200 \\
        --json experiments/results/console_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from acodm.config import preset
from acodm.pretrain import pretrain
from acodm.report import format_table, load_curves

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
from common import machine  # the benchmarks' shared helper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", default="runs/console-compare", help="folder of the runs")
    ap.add_argument("--preset", default="cpu_small")
    ap.add_argument("--mixer", default="uniform")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--interval", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    seeds = [int(s) for s in args.seeds.split(",") if s]
    out = Path(args.out)
    base = preset(args.preset, args.store).replace(
        mixer=args.mixer,
        steps=args.steps,
        interval=args.interval,
        eval_every=args.eval_every,
        checkpoint_every=0,
        console_temperature=args.temperature,
    )
    rows, results = [], []
    for seed in seeds:
        per: dict[str, dict[str, float]] = {}
        for arm, console in (("plain", False), ("console", True)):
            run = out / f"seed{seed}-{arm}"
            start = time.perf_counter()
            if not (run / "summary.json").exists():
                pretrain(base.replace(seed=seed, console=console), run, progress=False)
            curves = load_curves(arm, run)
            per[arm] = {
                "final_ppl_mean": curves.final,
                "best_ppl_mean": curves.best,
                "final_ppl_worst": curves.ppl_worst[-1],
                "seconds": time.perf_counter() - start,
            }
            rows.append([seed, arm, f"{curves.final:.1f}", f"{curves.ppl_worst[-1]:.1f}"])
        diff = per["console"]["final_ppl_mean"] - per["plain"]["final_ppl_mean"]
        results.append({"seed": seed, "runs": per, "console_minus_plain": diff})
    diffs = [r["console_minus_plain"] for r in results]
    summary = {
        "mean_console_minus_plain": statistics.fmean(diffs),
        "stdev": statistics.stdev(diffs) if len(diffs) > 1 else None,
        "console_better_seeds": sum(d < 0 for d in diffs),
        "seeds": len(diffs),
    }
    print(format_table(["seed", "run", "final mean ppl", "final worst ppl"], rows))
    print(json.dumps(summary, indent=1))
    if args.json:
        record = {
            "machine": machine(),
            "config": base.to_dict(),
            "results": results,
            "summary": summary,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
