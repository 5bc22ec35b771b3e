"""The numbers of a study (``acodm study``): paired seeds, t-intervals, separation.

Pure functions over finished runs' evaluation curves, so every number can be checked by hand.
The metric is fixed in advance: the **mean over domains of the validation loss** (nats) at the
end of the run (mean loss and mean perplexity can disagree; ``BENCHMARKS.md``).

- **Paired difference** of arm A to baseline B over seeds ``s``: ``d_s = loss_A(s) -
  loss_B(s)`` (same seed: same model init and data order in both arms), its mean, sample sd,
  and the 95% t-interval ``mean +- t_{0.975, n-1} * sd / sqrt(n)``; ``wins``: seeds where A's
  loss is lower, ``losses``: higher. Negative differences favour A.
- **Worst domain**: the domain with the highest final loss of a run.
- **Domains worse than the reference**: per seed, how many domains end with a higher loss
  than in the reference arm's run of that seed.
- **Steps to reach the reference**: per seed, the first evaluation step at which the arm's
  mean loss is at or below the reference run's *final* mean loss (None: never).
- **Recipes**: arms labelled ``<recipe>@<tag>`` (the same training recipe, e.g. one policy per
  agent training seed: ``ens@0``, ``ens@1``) also form a recipe row. Per target seed, the
  mean over the recipe's arms of their final losses; its paired difference to each baseline
  over target seeds (agent seeds averaged out); and per arm, its mean paired difference, with
  their mean, sd and t-interval over the recipe's arms (what a *new* agent seed should expect:
  the spread that paired target seeds do not cover), and wins over all (arm, seed) pairs.
- **Separation** of the static arms: the spread of their mean final losses (max - min) against
  twice the largest seed sd among them; if the spread is not larger, this regime cannot tell
  static mixtures apart, and no learned policy can be judged in it.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from acodm.errors import AcodmError

# t_{0.975, df} for df = 1..30 (two-sided 95%); beyond, the Cornish-Fisher expansion below
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (4 decimals)."""
    if df < 1:
        raise AcodmError(f"a t-interval needs at least 1 degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample sd (None for one value), min, max and the values themselves."""
    vals = [float(v) for v in values]
    return {
        "mean": statistics.fmean(vals),
        "sd": statistics.stdev(vals) if len(vals) > 1 else None,
        "min": min(vals),
        "max": max(vals),
        "values": vals,
    }


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``a - b`` seed by seed: mean, sd, 95% t-interval (None below 2 seeds), wins, losses."""
    if len(a) != len(b) or not a:
        raise AcodmError(f"paired values need the same seeds, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = statistics.fmean(d)
    sd = statistics.stdev(d) if n > 1 else None
    ci = None
    if sd is not None:
        half = t975(n - 1) * sd / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "ci95": ci,
        "wins": sum(x < 0 for x in d),
        "losses": sum(x > 0 for x in d),
        "ties": sum(x == 0 for x in d),
        "differences": d,
    }


@dataclass(frozen=True)
class RunResult:
    """One finished run's evaluation curve (mean loss over domains) and its final per-domain
    losses; ``flops_6nd``: its training compute estimate (6 x params x tokens)."""

    steps: list[int]
    loss_mean: list[float]
    ppl_mean: list[float]
    final_domain_loss: dict[str, float]
    flops_6nd: float | None = None

    @property
    def final(self) -> float:
        return self.loss_mean[-1]

    @property
    def best(self) -> float:
        return min(self.loss_mean)


def steps_to_reach(run: RunResult, target: float) -> int | None:
    """First evaluation step with mean loss <= ``target`` (None if never)."""
    for step, loss in zip(run.steps, run.loss_mean, strict=True):
        if loss <= target:
            return step
    return None


def _arm_summary(
    runs: Mapping[int, RunResult], ref: Mapping[int, RunResult], seeds: Sequence[int]
) -> dict[str, Any]:
    worst = [max(runs[s].final_domain_loss.items(), key=lambda kv: kv[1]) for s in seeds]
    worse = [
        sum(
            runs[s].final_domain_loss[d] > ref[s].final_domain_loss[d]
            for d in ref[s].final_domain_loss
        )
        for s in seeds
    ]
    reach = [steps_to_reach(runs[s], ref[s].final) for s in seeds]
    return {
        "final_loss": spread([runs[s].final for s in seeds]),
        "best_loss": spread([runs[s].best for s in seeds]),
        "final_ppl": spread([runs[s].ppl_mean[-1] for s in seeds]),
        "best_ppl": spread([min(runs[s].ppl_mean) for s in seeds]),
        "worst_domain": {
            "domain": Counter(d for d, _ in worst).most_common(1)[0][0],
            "per_seed": [d for d, _ in worst],
            "loss": spread([v for _, v in worst]),
        },
        "domains_worse_than_reference": {
            "per_seed": worse,
            "mean": statistics.fmean(worse),
        },
        "steps_to_reference_final": {
            "per_seed": reach,
            "reached": sum(r is not None for r in reach),
        },
    }


def separation(
    final_losses: Mapping[str, Sequence[float]],
) -> dict[str, Any] | None:
    """Do the arms' mean final losses spread by more than twice their largest seed sd?"""
    if len(final_losses) < 2 or any(len(v) < 2 for v in final_losses.values()):
        return None
    means = {a: statistics.fmean(v) for a, v in final_losses.items()}
    sds = {a: statistics.stdev(v) for a, v in final_losses.items()}
    gap = max(means.values()) - min(means.values())
    sd = max(sds.values())
    return {
        "arms": list(final_losses),
        "means": means,
        "sds": sds,
        "spread": gap,
        "max_seed_sd": sd,
        "separated": gap > 2 * sd,
    }


def recipe_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """``{recipe: [arm, ...]}`` for the arm labels ``<recipe>@<tag>`` shared by >= 2 arms."""
    groups: dict[str, list[str]] = {}
    for name in names:
        recipe, sep, tag = name.partition("@")
        if sep and recipe and tag:
            groups.setdefault(recipe, []).append(name)
    return {r: arms for r, arms in groups.items() if len(arms) >= 2}


def _recipe_summary(
    results: Mapping[str, Mapping[int, RunResult]],
    members: Sequence[str],
    seeds: Sequence[int],
    baselines: Sequence[str],
) -> dict[str, Any]:
    per_seed = [statistics.fmean(results[a][s].final for a in members) for s in seeds]
    against: dict[str, Any] = {}
    for b in baselines:
        base = [results[b][s].final for s in seeds]
        per_arm = [paired_difference([results[a][s].final for s in seeds], base) for a in members]
        means = [p["mean"] for p in per_arm]
        sd = statistics.stdev(means)
        half = t975(len(means) - 1) * sd / math.sqrt(len(means))
        mean = statistics.fmean(means)
        against[b] = {
            "over_seeds": paired_difference(per_seed, base),
            "per_arm_mean": means,
            "over_arms": {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half]},
            "wins": sum(p["wins"] for p in per_arm),
            "losses": sum(p["losses"] for p in per_arm),
            "pairs": sum(p["n"] for p in per_arm),
            "arms_better": sum(m < 0 for m in means),
        }
    return {"arms": list(members), "final_loss": spread(per_seed), "against": against}


def summarize(
    results: Mapping[str, Mapping[int, RunResult]],
    *,
    seeds: Sequence[int],
    reference: str,
    baselines: Sequence[str],
    static: Sequence[str],
    proxy_flops: Mapping[str, float | None] | None = None,
) -> dict[str, Any]:
    """Every arm's summary against ``reference`` and each of ``baselines`` (see the module
    docstring); ``proxy_flops``: the compute an arm spent before its target run (a policy's
    proxy training, DoReMi's reference and proxy runs), reported as a multiple of one target
    run of that arm."""
    if reference not in results:
        raise AcodmError(f"reference arm {reference!r} is not among the arms {list(results)}")
    ref = results[reference]
    arms: dict[str, Any] = {}
    for arm, runs in results.items():
        summary = _arm_summary(runs, ref, seeds)
        summary["against"] = {
            b: paired_difference(
                [runs[s].final for s in seeds], [results[b][s].final for s in seeds]
            )
            for b in baselines
            if b != arm
        }
        flops = (proxy_flops or {}).get(arm)
        target = [runs[s].flops_6nd for s in seeds]
        summary["proxy_compute"] = (
            None
            if flops is None or any(t is None or t <= 0 for t in target)
            else {
                "flops_6nd": flops,
                "target_runs": flops / statistics.fmean(t for t in target if t is not None),
            }
        )
        arms[arm] = summary
    static_losses = {a: [results[a][s].final for s in seeds] for a in static}
    recipes = {
        r: _recipe_summary(results, members, seeds, [b for b in baselines if b not in members])
        for r, members in recipe_groups(list(results)).items()
    }
    return {
        "metric": "final mean validation loss over domains (nats)",
        "seeds": list(seeds),
        "reference": reference,
        "baselines": list(baselines),
        "arms": arms,
        "recipes": recipes,
        "separation": separation(static_losses),
    }


def _pm(s: Mapping[str, Any], digits: int = 3) -> str:
    sd = "-" if s["sd"] is None else f"{s['sd']:.{digits}f}"
    return f"{s['mean']:.{digits}f} +- {sd}"


def _diff(p: Mapping[str, Any]) -> str:
    ci = "" if p["ci95"] is None else f" [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
    return f"{p['mean']:+.3f}{ci} {p['wins']}W/{p['losses']}L"


def format_summary(summary: Mapping[str, Any]) -> str:
    """Plain-text tables of :func:`summarize`'s result."""
    from acodm.report import format_table

    ref = summary["reference"]
    n = len(summary["seeds"])
    head = [
        "arm",
        "final loss",
        "best loss",
        "final ppl",
        "worst domain (loss)",
        f"domains worse than {ref}",
        f"steps to {ref}'s final",
        "proxy compute (target runs)",
    ]
    rows = []
    for arm, a in summary["arms"].items():
        reach = a["steps_to_reference_final"]["per_seed"]
        pc = a["proxy_compute"]
        rows.append(
            [
                arm,
                _pm(a["final_loss"]),
                _pm(a["best_loss"]),
                _pm(a["final_ppl"], 1),
                f"{a['worst_domain']['domain']} ({a['worst_domain']['loss']['mean']:.3f})",
                f"{a['domains_worse_than_reference']['mean']:.1f}",
                ",".join("never" if r is None else str(r) for r in reach),
                "-" if pc is None else f"{pc['target_runs']:.2f}",
            ]
        )
    text = f"{summary['metric']}, mean +- sd over {n} paired seeds {summary['seeds']}\n"
    text += format_table(head, rows)
    baselines = summary["baselines"]
    if baselines:
        drows = [
            [arm, *(_diff(a["against"][b]) if b in a["against"] else "-" for b in baselines)]
            for arm, a in summary["arms"].items()
        ]
        text += (
            "\n\npaired difference of final mean loss, arm - baseline: mean [95% t-interval] "
            "wins/losses over seeds (negative: the arm is better)\n"
        )
        text += format_table(["arm", *(f"vs {b}" for b in baselines)], drows)
    recipes = summary.get("recipes") or {}
    if recipes and baselines:
        rrows = []
        for name, r in recipes.items():
            cells = [f"{name} ({len(r['arms'])} arms)", _pm(r["final_loss"])]
            for b in baselines:
                p = r["against"].get(b)
                if p is None:
                    cells.append("-")
                    continue
                o = p["over_arms"]
                cells.append(
                    f"{_diff(p['over_seeds'])}; per arm {o['mean']:+.3f} "
                    f"[{o['ci95'][0]:+.3f}, {o['ci95'][1]:+.3f}] "
                    f"{p['arms_better']}/{len(p['per_arm_mean'])} arms, "
                    f"{p['wins']}/{p['pairs']} pairs"
                )
            rrows.append(cells)
        text += (
            "\n\nrecipes (arms labelled recipe@tag, e.g. one per agent seed): the recipe's "
            "mean over its arms per seed, its paired difference over seeds; then each arm's "
            "mean difference: their mean [95% t-interval over arms], arms better, pairs won\n"
        )
        text += format_table(["recipe", "final loss", *(f"vs {b}" for b in baselines)], rrows)
    sep = summary["separation"]
    if sep is not None:
        verdict = "separate" if sep["separated"] else "do NOT separate"
        text += (
            f"\n\nstatic arms {sep['arms']} {verdict}: spread of mean final loss "
            f"{sep['spread']:.4f} vs 2 x largest seed sd {2 * sep['max_seed_sd']:.4f}"
        )
    return text
