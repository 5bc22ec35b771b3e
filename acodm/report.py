"""Compare pretraining runs: final and worst validation perplexity, steps to reach a baseline.

Everything is computed from each run's ``metrics.jsonl``, so any set of finished runs
(``acodm pretrain`` with different mixers on the same store and budget) can be compared.
"Steps to reach X" is the paper's headline metric (METHOD.md, "Evaluation"): the first
evaluation step at which a run's mean validation perplexity is at or below the best mean
validation perplexity run X ever reached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acodm.errors import AcodmError
from acodm.metrics import read_metrics


@dataclass(frozen=True)
class RunCurves:
    """The evaluation curve of one run: steps, mean and worst perplexity, per-domain values."""

    name: str
    steps: list[int]
    ppl_mean: list[float]
    ppl_worst: list[float]
    per_domain: dict[str, list[float]]

    @property
    def best(self) -> float:
        return min(self.ppl_mean)

    @property
    def final(self) -> float:
        return self.ppl_mean[-1]


def load_curves(name: str, run_dir: str | Path) -> RunCurves:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise AcodmError(f"run {name!r}: {path} does not exist; did the run finish?")
    evals = [r for r in read_metrics(path) if r.get("eval/ppl_mean") is not None]
    if not evals:
        raise AcodmError(f"run {name!r} has no evaluation in {path}")
    domains = sorted(k.removeprefix("eval/ppl/") for k in evals[-1] if k.startswith("eval/ppl/"))
    return RunCurves(
        name=name,
        steps=[int(r["step"]) for r in evals],
        ppl_mean=[float(r["eval/ppl_mean"]) for r in evals],
        ppl_worst=[float(r["eval/ppl_worst"]) for r in evals],
        per_domain={d: [float(r[f"eval/ppl/{d}"]) for r in evals] for d in domains},
    )


def steps_to_reach(run: RunCurves, target: float) -> int | None:
    """First evaluation step with mean perplexity <= ``target``, or None if never."""
    for step, ppl in zip(run.steps, run.ppl_mean, strict=True):
        if ppl <= target:
            return step
    return None


def compare(runs: Mapping[str, RunCurves]) -> dict[str, Any]:
    """A JSON-able comparison of every run against the best value of every other run."""
    out: dict[str, Any] = {}
    for name, run in runs.items():
        out[name] = {
            "final_ppl_mean": run.final,
            "best_ppl_mean": run.best,
            "final_ppl_worst": run.ppl_worst[-1],
            "final_ppl": {d: v[-1] for d, v in run.per_domain.items()},
            "steps_to_best": steps_to_reach(run, run.best),
            "steps_to_reach": {
                other: steps_to_reach(run, runs[other].best) for other in runs if other != name
            },
        }
    return out


def _setting(config: Mapping[str, Any], what: str) -> Any:
    train = config.get("train", {})
    store = config.get("store", {})
    if what == "model":
        return train.get("model")
    if what == "store":  # the data, not where it lies: the same store copied elsewhere is equal
        return store.get("corpus_hash"), store.get("tokenizer_sha256"), store.get("domains")
    steps, per_step = config.get("total_steps"), config.get("tokens_per_step")
    return None if steps is None or per_step is None else int(steps) * int(per_step)


def run_mismatches(run_dirs: Mapping[str, str | Path]) -> list[str]:
    """Warnings for runs that should not be compared: other model, store or token budget.

    Reads each run's ``config.json`` (written by ``acodm pretrain``); a run without one is
    named in a warning too, since nothing can be checked for it.
    """
    from acodm.io import read_json

    configs: dict[str, Mapping[str, Any]] = {}
    out = []
    for name, folder in run_dirs.items():
        path = Path(folder) / "config.json"
        if path.is_file():
            configs[name] = read_json(path, "run config")
        else:
            out.append(f"run {name!r} has no config.json: its model, store and budget are unknown")
    labels = {"model": "models", "store": "stores (data or tokenizer)", "tokens": "token budgets"}
    for what, label in labels.items():
        values = {n: _setting(c, what) for n, c in configs.items()}
        if len({repr(v) for v in values.values()}) > 1:
            shown = ", ".join(f"{n}: {_short(v)}" for n, v in values.items())
            out.append(f"the runs differ in their {label} ({shown}); the comparison is unfair")
    return out


def _short(value: Any) -> str:
    if isinstance(value, tuple):  # (corpus hash, tokenizer hash, domains)
        return "/".join(str(v)[:12] if isinstance(v, str) else str(v) for v in value[:2])
    return str(value)


def format_comparison(runs: Mapping[str, RunCurves], focus: str | None = None) -> str:
    """Plain-text tables (overall, per domain) and, for ``focus``, an honest verdict."""
    names = list(runs)
    result = compare(runs)
    head = ["run", "final ppl", "best ppl", "worst domain ppl"] + [
        f"reaches {n}'s best at" for n in names
    ]
    rows = []
    for n in names:
        r = result[n]
        reach = ["-" if o == n else _step(r["steps_to_reach"][o]) for o in names]
        rows.append(
            [
                n,
                f"{r['final_ppl_mean']:.2f}",
                f"{r['best_ppl_mean']:.2f}",
                f"{r['final_ppl_worst']:.2f}",
                *reach,
            ]
        )
    text = format_table(head, rows)
    domains = list(next(iter(runs.values())).per_domain)
    drows = [[d, *(f"{result[n]['final_ppl'][d]:.2f}" for n in names)] for d in domains]
    text += "\n\nfinal validation perplexity per domain\n" + format_table(["domain", *names], drows)
    if focus is not None:
        text += "\n\n" + verdict(runs, focus)
    return text


def verdict(runs: Mapping[str, RunCurves], focus: str) -> str:
    """One line per baseline: did ``focus`` beat it, and how many steps did it save?"""
    me = runs[focus]
    lines = []
    for name, other in runs.items():
        if name == focus:
            continue
        step = steps_to_reach(me, other.best)
        other_step = steps_to_reach(other, other.best)
        if step is None:
            lines.append(
                f"{focus} did NOT reach {name}'s best perplexity ({other.best:.2f}) "
                f"within the budget (its best: {me.best:.2f})."
            )
        else:
            saved = 1 - step / other_step if other_step else 0.0
            lines.append(
                f"{focus} reached {name}'s best perplexity ({other.best:.2f}) at step "
                f"{step} vs {other_step} ({saved:+.0%} steps saved)."
            )
    return "\n".join(lines)


def _step(s: int | None) -> str:
    return "never" if s is None else str(s)


def format_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in header], *([str(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
