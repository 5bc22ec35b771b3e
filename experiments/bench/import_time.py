"""Benchmark: how long importing acodm's mixing API takes, next to torch and the env.

Issue 13: ``acodm.policies`` (the framework-agnostic :class:`~acodm.policies.PolicyMixer`)
must import in well under a second without torch, gymnasium, stable-baselines3 or acodm's
trainer. Each statement runs in a fresh interpreter (``python -c``), ``--repeats`` times,
interleaved so that a busy machine slows every row alike; the table gives the median time of
the import statement itself (timed inside the interpreter, so its start-up is not counted),
its ratio to ``import torch``, and which heavy modules it loaded.

    python experiments/bench/import_time.py --json experiments/results/import_time_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import machine

HEAVY = ("torch", "gymnasium", "stable_baselines3", "transformers", "acodm.trainer")

ROWS = {
    "numpy": "import numpy",
    "acodm.policies (PolicyMixer)": "import acodm.policies",
    "torch": "import torch",
    "acodm.envs (gymnasium env)": "import acodm.envs",
    "acodm.policies.export (torch actor)": "import acodm.policies.export",
    "acodm.policies.agent (SB3)": "import acodm.policies.agent",
}

PROBE = """
import sys, time
t = time.perf_counter()
{stmt}
dt = time.perf_counter() - t
print(dt, ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def run_once(stmt: str) -> tuple[float, list[str]]:
    code = PROBE.format(stmt=stmt, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dt, _, mods = out.stdout.strip().splitlines()[-1].partition(" ")
    return float(dt), [m for m in mods.split(",") if m]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    loaded: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, stmt in ROWS.items():
            dt, mods = run_once(stmt)
            times[name].append(dt)
            loaded[name] = mods
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ref = med["torch"]
    print(f"{'import':38} {'median s':>9} {'/ torch':>8}  heavy modules loaded")
    for name in ROWS:
        print(
            f"{name:38} {med[name]:9.3f} {med[name] / ref:8.2f}  {', '.join(loaded[name]) or '-'}"
        )
    if args.json:
        result = {
            "machine": machine(),
            "repeats": args.repeats,
            "median_s": med,
            "all_s": times,
            "heavy_loaded": loaded,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
