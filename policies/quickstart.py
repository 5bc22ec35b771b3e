"""``acodm quickstart``: the whole user story in one command.

1. build the default corpus (cached) and tokenize it into a store;
2. train a mixing policy (DDPG) on a small proxy model and export its actor;
3. pretrain a target (``gpu``: a larger model; ``cpu``: the proxy's model with twice its
   budget) with the transferred actor and with the uniform, UniMax and ODM baselines, on the
   same store, token budget and seed;
4. print the comparison (mean / worst validation perplexity, per domain, steps to reach each
   baseline's best), write ``report.txt``, ``results.json`` and PNG plots.

The ``cpu`` preset is a cut of the CPU study regime (``acodm study``: a data-constrained store
where small domains repeat, the ``micro`` model, 200 target steps); ``gpu`` runs the
paper's shape of experiment (70m proxy, 160m target, sequence 1024). Nothing is hidden: if
the policy does not beat a baseline at this scale, the report says so.

:func:`study` repeats the quickstart for several seeds on one store (``acodm quickstart
--seeds 0,1,2``) and reports the mean and spread of every run's final perplexity, how often
the policy beat each baseline, and the steps it needed to reach each baseline's best
(BENCHMARKS.md, "Sample efficiency"). Each seed changes the proxy run, the agent and the
target runs' model init and sampling.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acodm.config import (
    TrainConfig,
    quickstart_cpu_proxy,
    quickstart_cpu_target,
    quickstart_gpu_proxy,
    quickstart_gpu_target,
)
from acodm.data.build import build_default_corpus
from acodm.data.prepare import prepare_store
from acodm.errors import AcodmError
from acodm.io import atomic_write_json, atomic_write_text
from acodm.plots import plot_learning_curve, plot_reward, plot_validation, plot_weights
from acodm.pretrain import pretrain
from acodm.report import compare, format_comparison, format_table, load_curves

BASELINES = ("uniform", "unimax:4", "odm")


@dataclass(frozen=True)
class QuickstartPreset:
    """One quickstart: the store's vocabulary and the run presets of the proxy and the target
    runs (functions of the store, like :mod:`acodm.config`'s)."""

    vocab_size: int
    proxy: Callable[[str], TrainConfig]
    target: Callable[[str], TrainConfig]
    doc_chars: int | None = None  # acodm prepare --doc-chars
    max_train_tokens: str | None = None  # acodm prepare --max-train-tokens

    def store_settings(self) -> dict[str, Any]:
        """The store's prepare settings, as its manifest's meta records them."""
        return {
            "vocab_source": f"trained byte-level BPE, vocab_size={self.vocab_size}",
            "doc_chars": self.doc_chars,
            "max_train_tokens": self.max_train_tokens,
        }

    def proxy_config(self, store: str, seed: int) -> TrainConfig:
        """The proxy run that trains the policy."""
        return self.proxy(store).replace(seed=seed)

    def target_config(self, store: str, mixer: str, seed: int) -> TrainConfig:
        """One target run: the policy (``actor:...``) or a baseline."""
        return self.target(store).replace(mixer=mixer, seed=seed)


PRESETS = {
    # the CPU study regime (BENCHMARKS.md, "A CPU regime where mixtures separate"): small
    # domains repeat (news about 14 epochs under uniform), so the baselines differ
    "cpu": QuickstartPreset(
        vocab_size=2048,
        proxy=quickstart_cpu_proxy,
        target=quickstart_cpu_target,
        doc_chars=3000,
        max_train_tokens="geometric:6000:789000",
    ),
    "gpu": QuickstartPreset(
        vocab_size=32768, proxy=quickstart_gpu_proxy, target=quickstart_gpu_target
    ),
}


def _data(out: Path, preset: QuickstartPreset, progress: bool) -> Path:
    corpus, store = out / "corpus", out / "store"
    if (store / "manifest.json").is_file():
        _check_store(store, preset)
        return store  # a finished store needs no corpus
    if not (corpus / "manifest.json").is_file():
        build_default_corpus(corpus, progress=progress)
    prepare_store(
        corpus,
        store,
        vocab_size=preset.vocab_size,
        doc_chars=preset.doc_chars,
        max_train_tokens=preset.max_train_tokens,
        progress=progress,
    )
    return store


def _check_store(store: Path, preset: QuickstartPreset) -> None:
    """A store left by another quickstart preset (or version) is an error, never reused."""
    from acodm.data.store import open_store

    meta = open_store(store).manifest.get("meta", {})
    want = preset.store_settings()
    have = {k: meta.get(k) for k in want}
    if have != want:
        raise AcodmError(
            f"{store} was prepared with {have}, but this quickstart preset needs {want}; "
            "delete that store (and the runs made on it) or choose another --out"
        )


def _pretrain_once(config: TrainConfig, run: Path, progress: bool) -> None:
    """Run, resume an interrupted run, or reuse a finished one."""
    if (run / "summary.json").is_file():
        return
    pretrain(config, run, resume=(run / "config.json").is_file(), progress=progress)


def quickstart(
    out: str | Path = "quickstart",
    *,
    preset: str = "cpu",
    seed: int = 0,
    baselines: Sequence[str] = BASELINES,
    progress: bool = True,
    data: str | Path | None = None,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Run the quickstart into ``out``; returns the comparison (also ``results.json``).

    Every stage is reused when already complete, so an interrupted quickstart resumes.
    ``data``: the folder of the corpus and store (``corpus/``, ``store/``; built there when
    missing); default ``out``. ``trust_pickle``: resume an interrupted proxy run whose agent
    checkpoint this user's acodm did not sign (see :func:`acodm.policies.train.train_policy`).
    """
    from acodm.policies.train import train_policy

    if preset not in PRESETS:
        raise AcodmError(f"unknown quickstart preset {preset!r}; known: {sorted(PRESETS)}")
    p, out = PRESETS[preset], Path(out)
    store = str(_data(Path(data) if data is not None else out, p, progress))

    policy_run = out / "proxy"
    policy = policy_run / "policy"
    if not (policy / "policy.json").is_file():
        train_policy(
            store,
            policy_run,
            proxy=p.proxy_config(store, seed),
            seed=seed,
            progress=progress,
            resume=(policy_run / "config.json").is_file(),
            trust_pickle=trust_pickle,
        )

    runs: dict[str, Path] = {}
    for mixer in (f"actor:{policy}", *baselines):
        name = "policy" if mixer.startswith("actor:") else mixer
        runs[name] = out / "runs" / name.replace(":", "-")
        _pretrain_once(p.target_config(store, mixer, seed), runs[name], progress)

    curves = {name: load_curves(name, run) for name, run in runs.items()}
    text = format_comparison(curves, focus="policy")
    plots = out / "plots"
    plot_weights(runs["policy"], plots / "policy_weights.png", "domain weights of the policy")
    for b in baselines:
        plot_weights(runs[b], plots / f"{b.replace(':', '-')}_weights.png", f"weights: {b}")
    plot_validation(runs, plots / "validation_ppl.png")
    plot_reward(policy_run, plots / "proxy_reward.png")
    plot_learning_curve(policy_run, plots / "proxy_learning_curve.png")
    atomic_write_text(out / "report.txt", text + "\n")
    results = {
        "preset": preset,
        "seed": seed,
        "runs": {k: str(v) for k, v in runs.items()},
        "comparison": compare(curves),
    }
    atomic_write_json(out / "results.json", results)
    if progress:
        print(text)
        print(f"\nplots in {plots}, report in {out / 'report.txt'}")
    return results


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def aggregate(per_seed: Mapping[int, Mapping[str, Any]], focus: str = "policy") -> dict[str, Any]:
    """Mean and spread over seeds of :func:`acodm.report.compare` results (one per seed).

    Per run: final and best mean perplexity (mean, stdev, min, max). For ``focus`` against
    each other run: on how many seeds its final perplexity was lower ("wins"), and the steps
    it needed to reach that run's best (None where it never did) next to the steps the run
    itself needed (``own_steps_to_best``).
    """
    if not per_seed:
        raise AcodmError("no seeds to aggregate")
    comparisons = list(per_seed.values())
    names = list(comparisons[0])
    if focus not in names:
        raise AcodmError(f"run {focus!r} is not among the compared runs {names}")
    runs = {
        n: {
            "final_ppl_mean": _spread([c[n]["final_ppl_mean"] for c in comparisons]),
            "best_ppl_mean": _spread([c[n]["best_ppl_mean"] for c in comparisons]),
        }
        for n in names
    }
    against: dict[str, Any] = {}
    for other in names:
        if other == focus:
            continue
        wins = sum(c[focus]["final_ppl_mean"] < c[other]["final_ppl_mean"] for c in comparisons)
        against[other] = {
            "wins": wins,
            "seeds": len(comparisons),
            "focus_steps_to_reach": [c[focus]["steps_to_reach"][other] for c in comparisons],
            "own_steps_to_best": [c[other]["steps_to_best"] for c in comparisons],
        }
    return {"seeds": list(per_seed), "focus": focus, "runs": runs, "against": against}


def format_study(result: Mapping[str, Any]) -> str:
    """The aggregate as plain-text tables plus one honest line per baseline."""
    rows = []
    for name, r in result["runs"].items():
        f = r["final_ppl_mean"]
        sd = "-" if f["stdev"] is None else f"{f['stdev']:.2f}"
        rows.append([name, f"{f['mean']:.2f}", sd, f"{f['min']:.2f}", f"{f['max']:.2f}"])
    n = len(result["seeds"])
    text = f"final mean validation perplexity over {n} seeds {result['seeds']}\n"
    text += format_table(["run", "mean", "stdev", "min", "max"], rows)
    focus = result["focus"]
    for other, a in result["against"].items():
        pairs = ", ".join(
            f"{'never' if s is None else s}/{o}"
            for s, o in zip(a["focus_steps_to_reach"], a["own_steps_to_best"], strict=True)
        )
        text += (
            f"\n{focus} beat {other} on {a['wins']} of {a['seeds']} seeds; steps to reach "
            f"{other}'s best ({focus}/{other}, per seed): {pairs}"
        )
    return text


def study(
    out: str | Path = "quickstart-study",
    *,
    preset: str = "cpu",
    seeds: Sequence[int] = (0, 1, 2),
    baselines: Sequence[str] = BASELINES,
    progress: bool = True,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """The quickstart for every seed in ``seeds`` on one store (``out/store``), each into
    ``out/seed-N``; writes and returns the aggregate (``study.json``, ``study.txt``).

    Finished seeds are reused, so an interrupted study resumes.
    """
    seeds = [int(s) for s in dict.fromkeys(seeds)]
    if not seeds:
        raise AcodmError("give at least one seed")
    out = Path(out)
    per_seed = {}
    for s in seeds:
        res = quickstart(
            out / f"seed-{s}",
            preset=preset,
            seed=s,
            baselines=baselines,
            progress=progress,
            data=out,
            trust_pickle=trust_pickle,
        )
        per_seed[s] = res["comparison"]
    result = aggregate(per_seed)
    result["preset"] = preset
    text = format_study(result)
    atomic_write_json(out / "study.json", result)
    atomic_write_text(out / "study.txt", text + "\n")
    if progress:
        print(text)
    return result
