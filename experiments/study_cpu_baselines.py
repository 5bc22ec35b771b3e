"""Experiment: do static mixtures separate in the CPU study regime? (acodm issue 11)

Builds the default corpus (cached), prepares the data-constrained store of the CPU study
(``--vocab-size 2048 --doc-chars 3000 --max-train-tokens geometric:6000:789000``), then runs
``acodm study`` with the static arms for 3 paired seeds on ``study_cpu_target`` and writes its
``study.json`` with the store's sizes, the run times and the machine. Every stage reuses what
is finished under ``--work``, so an interrupted run continues.

    python experiments/study_cpu_baselines.py --work runs/study-cpu \\
        --json experiments/results/study_cpu_baselines.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from acodm.data.build import build_default_corpus
from acodm.data.prepare import prepare_store
from acodm.data.store import open_store
from acodm.io import atomic_write_json, read_json
from acodm.study import study

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
from common import machine  # the benchmarks' shared helper

PREPARE = {"vocab_size": 2048, "doc_chars": 3000, "max_train_tokens": "geometric:6000:789000"}
ARMS = "uniform,natural,temperature:0.5,unimax:4"


def first_run(result: dict[str, object]) -> str:
    arms = result["arms_spec"]
    assert isinstance(arms, dict)
    return str(next(iter(next(iter(arms.values()))["runs"].values())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("runs/study-cpu"))
    ap.add_argument("--arms", default=ARMS)
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    corpus, store, out = args.work / "corpus", args.work / "store", args.work / "static"
    if not (store / "manifest.json").is_file():
        if not (corpus / "manifest.json").is_file():
            build_default_corpus(corpus)
        prepare_store(corpus, store, **PREPARE)  # type: ignore[arg-type]
    start = time.perf_counter()
    result = study(store, out, arms=args.arms, seeds=args.seeds, jobs=args.jobs)
    s = open_store(store)
    seconds = [
        float(read_json(Path(p) / "summary.json", "run summary")["seconds"])
        for a in result["arms_spec"].values()
        for p in a["runs"].values()
    ]
    budget = int(read_json(Path(first_run(result)) / "summary.json", "run summary")["tokens"])
    result["experiment"] = {
        "prepare": PREPARE,
        "train_tokens": {d: s.num_tokens(d, "train") for d in s.domains},
        "val_tokens": {d: s.num_tokens(d, "val") for d in s.domains},
        "jobs": args.jobs,
        "run_seconds": {
            "mean": statistics.fmean(seconds),
            "min": min(seconds),
            "max": max(seconds),
            "total": sum(seconds),
        },
        "this_call_seconds": time.perf_counter() - start,
        "machine": machine(),
        "final_loss_means": {a: r["final_loss"]["mean"] for a, r in result["arms"].items()},
        "target_tokens": budget,
        # epochs of each domain's training tokens the target's budget takes under uniform weights
        "uniform_epochs": {
            d: budget / len(s.domains) / s.num_tokens(d, "train") for d in s.domains
        },
    }
    print(json.dumps(result["experiment"]["run_seconds"]))
    if args.json is not None:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
