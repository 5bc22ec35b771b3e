"""``acodm study``: arms x paired seeds on one store, one preset, and a report that can tell.

An **arm** is a mixer spec (``uniform``, ``unimax:4``, ``actor:runs/p/policy``, ...),
optionally labelled ``label=spec``. Every arm runs once per seed with the same run preset;
the seed sets the model init, the domain draws and the order of windows inside each domain
(:class:`acodm.data.sampler.DomainSampler`), and the mixer does not touch any of them, so the
same seed gives every arm the same initial model and the same data order: the runs are
**paired** and differences between arms are measured seed by seed
(:mod:`acodm.study_report`).

Layout of ``OUT``::

    OUT/runs/<arm>/seed<k>/     one `acodm pretrain` run per arm and seed
    OUT/doremi/<arm>/seed<k>/   a bare ``doremi`` arm's reference and proxy runs (below)
    OUT/logs/<arm>-seed<k>.log  each run's output
    OUT/study.json, study.txt   the report; OUT/plots/val_loss.png the curves (matplotlib)

Runs are subprocesses (``python -m acodm pretrain ...``), ``jobs`` at a time (default 2), each
with ``cpu_count // jobs`` torch threads unless ``OMP_NUM_THREADS`` is set. A finished run
(``summary.json``) is reused and an interrupted one resumed, so an interrupted study resumes;
a run folder made with other settings is an error, never silently reused.

A bare ``doremi`` arm (``doremi`` or ``doremi:eta=E,smooth=C``, no ``ref=``) is DoReMi's
three stages per seed on the proxy preset (default: the target preset's ``_proxy`` twin):
a reference run with uniform weights, its reference losses, a proxy run with
``doremi:ref=...``, the averaged weights exported; the target run then uses
``file:weights.json``. Their compute is the arm's proxy compute. A policy arm
(``actor:PATH``) reads its proxy compute from ``policy.json`` (``extra.compute``, written
by ``acodm train-policy``).

Arms labelled ``RECIPE@TAG`` (``ens@0=actor:A/policy,ens@1=actor:B/policy``: one policy per
agent training seed) also form a recipe row over their arms (:mod:`acodm.study_report`): the
paired seeds fix the target's init and data order, not the agent's own training, whose
spread a claim about a recipe must include.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acodm.config import PRESETS, RESUMABLE_CHANGES, TrainConfig, preset
from acodm.errors import AcodmError
from acodm.io import atomic_write_json, atomic_write_text, read_json
from acodm.metrics import read_metrics
from acodm.study_report import RunResult, format_summary, summarize

STUDY_FORMAT = "acodm-study"
STUDY_VERSION = 1
STATIC_MIXERS = frozenset({"uniform", "natural", "temperature", "unimax", "file"})
POLICY_MIXERS = frozenset({"actor", "ddpg"})
# a label may end in @tag: arms "recipe@tag" also form a recipe row (study_report)
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(@[A-Za-z0-9_.\-]+)?")


class StudyError(AcodmError):
    """A study's arms, seeds or runs are invalid (the message says how to fix it)."""


@dataclass(frozen=True)
class Arm:
    """One arm: its label in the report, its mixer spec, and its folder name."""

    name: str
    spec: str

    @property
    def mixer(self) -> str:
        return self.spec.partition(":")[0].strip()

    @property
    def doremi_pipeline(self) -> bool:
        """A bare ``doremi`` (no reference file): the study runs DoReMi's stages itself."""
        return self.mixer == "doremi" and "ref=" not in self.spec

    @property
    def kind(self) -> str:
        if self.mixer in STATIC_MIXERS:
            return "static"
        if self.mixer in POLICY_MIXERS:
            return "policy"
        return "online"  # odm, doremi, ...

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.\-]+", "-", self.name).strip("-") or "arm"


def _is_arm_start(item: str, known: Sequence[str]) -> bool:
    """Whether a comma-separated item begins a new arm: ``label=spec`` of a known mixer, or
    any item that is not ``key=value`` (an unknown name is then an error, not an argument).
    A ``key=value`` item continues the previous spec's arguments (``odm:warmup=0.05,alpha=0.5``).
    """
    item = item.strip()
    label, sep, rest = item.partition("=")
    if sep and _LABEL.fullmatch(label) and rest.partition(":")[0].strip() in known:
        return True
    return "=" not in item.partition(":")[0]


def parse_arms(texts: Sequence[str] | str, whole: Sequence[str] = ()) -> list[Arm]:
    """Arms from ``--arms`` values and ``--arm`` values (``whole``).

    An ``--arms`` value is comma-separated specs, each ``spec`` or ``label=spec``; an item
    that is not one (``key=value``) continues the previous spec's arguments, as in
    ``odm:warmup=0.05,alpha=0.5``. An ``--arm`` value is one arm, commas and all: for a spec
    with an argument that reads like a labelled arm (``ddpg:action=residual,prior=uniform``).
    """
    from acodm.mixers import known_mixers

    known = known_mixers()
    groups: list[str] = []
    for text in [texts] if isinstance(texts, str) else texts:
        for item in text.split(","):
            if not item.strip():
                raise StudyError(f"--arms {text!r} has an empty item; separate arms by one comma")
            if _is_arm_start(item, known) or not groups:
                groups.append(item.strip())
            else:
                groups[-1] += "," + item.strip()
    groups += [w.strip() for w in whole]
    arms = []
    for g in groups:
        label, sep, rest = g.partition("=")
        if sep and _LABEL.fullmatch(label.strip()) and rest.partition(":")[0].strip() in known:
            arms.append(Arm(label.strip(), rest.strip()))
        else:
            arms.append(Arm(g, g))
    _check_arms(arms, known)
    return arms


def _check_arms(arms: Sequence[Arm], known: Sequence[str]) -> None:
    from acodm.mixers import make_mixer

    if not arms:
        raise StudyError("give at least one arm, e.g. --arms uniform,unimax:4")
    for arm in arms:
        if arm.mixer not in known:
            raise StudyError(
                f"arm {arm.spec!r}: unknown mixer {arm.mixer!r} (known: {list(known)}); write "
                "each arm as a mixer spec or label=spec, e.g. uniform,unimax:4,p=actor:DIR"
            )
        if not arm.doremi_pipeline:
            try:
                make_mixer(arm.spec)
            except AcodmError as e:
                raise StudyError(f"arm {arm.name!r}: {e}") from e
    names = [a.name for a in arms]
    folders = [a.folder for a in arms]
    if len(set(names)) != len(names) or len(set(folders)) != len(folders):
        raise StudyError(
            f"arms {names} repeat a name (or one that gives the same folder); label them "
            "apart with label=spec"
        )


def parse_seeds(text: str) -> list[int]:
    """``0-4``, ``0,1,2`` or ``0-2,7`` -> seeds in order, each once."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            rng = range(int(lo), int(hi) + 1) if sep else range(int(lo), int(lo) + 1)
        except ValueError:
            raise StudyError(f"--seeds {text!r}: write e.g. 0-4 or 0,1,2") from None
        if not rng:
            raise StudyError(f"--seeds {text!r}: the range {part!r} is empty")
        seeds += [s for s in rng if s not in seeds]
    return seeds


# -- runs -----------------------------------------------------------------------------------


def _flags() -> dict[str, str]:
    """TrainConfig field -> the `acodm pretrain` flag that sets it."""
    from acodm.cli import _TRAIN_FLAGS

    return {f: flag for flag, f, _, _ in _TRAIN_FLAGS}


def _check_overrides(overrides: Mapping[str, Any]) -> None:
    flags = _flags()
    bad = sorted(set(overrides) - set(flags) - {"store", "mixer", "seed"})
    unset = sorted(k for k, v in overrides.items() if v is None)
    if unset:
        raise StudyError(f"overrides {unset} have no value; give each one a value or leave it out")
    if bad or {"store", "mixer", "seed"} & set(overrides):
        raise StudyError(
            f"cannot set {bad or sorted({'store', 'mixer', 'seed'} & set(overrides))} for the "
            f"study's runs; settable: {sorted(set(flags) - {'store', 'mixer', 'seed'})}"
        )


@dataclass(frozen=True)
class _Pretrain:
    """One `acodm pretrain` run of a study: its expected config and folder."""

    config: TrainConfig
    preset: str
    overrides: Mapping[str, Any]
    run: Path

    @property
    def done(self) -> bool:
        return (self.run / "summary.json").is_file()

    def check_existing(self) -> None:
        """A run folder left by another study setting is an error (never reused)."""
        path = self.run / "config.json"
        if not path.is_file():
            return
        saved = dict(read_json(path, "run config")["train"])
        want = self.config.to_dict()
        saved["store"], want["store"] = _abs(saved["store"]), _abs(want["store"])
        diff = sorted(
            k for k in set(saved) | set(want) if saved.get(k) != want.get(k)
            and k not in RESUMABLE_CHANGES
        )  # fmt: skip
        if diff:
            shown = ", ".join(f"{k}: {saved.get(k)!r} != {want.get(k)!r}" for k in diff)
            raise StudyError(
                f"{self.run} holds a run with other settings ({shown}); use another --out or "
                "delete that folder"
            )

    def argv(self) -> list[str]:
        base = [sys.executable, "-m", "acodm", "pretrain", "--out", str(self.run), "--quiet"]
        if (self.run / "config.json").is_file():
            return [*base, "--resume"]
        cfg = self.config
        argv = [*base, "--preset", self.preset, "--store", cfg.store, "--mixer", cfg.mixer]
        argv += ["--seed", str(cfg.seed)]
        flags = _flags()
        for key, value in self.overrides.items():
            argv += [flags[key], str(value)]
        return argv


@dataclass(frozen=True)
class _Command:
    """A step that writes one file (DoReMi's reference losses or weights)."""

    argv: list[str]
    out: Path

    @property
    def done(self) -> bool:
        return self.out.is_file()


def _abs(path: str) -> str:
    return str(Path(path).resolve())


@dataclass
class _Job:
    arm: Arm
    seed: int
    steps: list[_Pretrain | _Command]
    log: Path
    target: _Pretrain = field(init=False)

    def __post_init__(self) -> None:
        last = self.steps[-1]
        assert isinstance(last, _Pretrain)
        self.target = last


@dataclass(frozen=True)
class StudyPlan:
    """Everything a study runs, derived from its arguments alone."""

    store: str
    out: Path
    preset: str
    proxy_preset: str
    arms: list[Arm]
    seeds: list[int]
    overrides: dict[str, Any]

    def config(self, name: str, mixer: str, seed: int) -> TrainConfig:
        """The run's config: the preset, the overrides (as `acodm pretrain`'s flags apply
        them: ``tokens`` replaces ``steps`` and the other way round), the mixer and seed."""
        changes = dict(self.overrides)
        if "tokens" in changes and "steps" not in changes:
            changes["steps"] = None
        elif "steps" in changes and "tokens" not in changes:
            changes["tokens"] = None
        return preset(name, self.store).replace(mixer=mixer, seed=seed, **changes)

    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.out / "runs" / arm.folder / f"seed{seed}"

    def doremi_dir(self, arm: Arm, seed: int) -> Path:
        return self.out / "doremi" / arm.folder / f"seed{seed}"

    def job(self, arm: Arm, seed: int) -> _Job:
        log = self.out / "logs" / f"{arm.folder}-seed{seed}.log"
        run = self.run_dir(arm, seed)
        if not arm.doremi_pipeline:
            target = _Pretrain(
                self.config(self.preset, arm.spec, seed), self.preset, self.overrides, run
            )
            return _Job(arm, seed, [target], log)
        d = self.doremi_dir(arm, seed)
        args = arm.spec.partition(":")[2].strip()
        ref_json, weights = d / "reference.json", d / "weights.json"
        ref = _Pretrain(
            self.config(self.proxy_preset, "uniform", seed),
            self.proxy_preset,
            self.overrides,
            d / "reference",
        )
        mixer = f"doremi:ref={ref_json}" + (f",{args}" if args else "")
        proxy = _Pretrain(
            self.config(self.proxy_preset, mixer, seed),
            self.proxy_preset,
            self.overrides,
            d / "proxy",
        )
        acodm = [sys.executable, "-m", "acodm", "doremi"]
        steps: list[_Pretrain | _Command] = [
            ref,
            _Command([*acodm, "reference-losses", "--run", str(ref.run), "--out", str(ref_json)], ref_json),
            proxy,
            _Command([*acodm, "export", "--run", str(proxy.run), "--out", str(weights)], weights),
            _Pretrain(
                self.config(self.preset, f"file:{weights}", seed), self.preset, self.overrides, run
            ),
        ]  # fmt: skip
        return _Job(arm, seed, steps, log)

    def jobs(self) -> list[_Job]:
        # seed-major: the first seeds of every arm finish first, so a partial study pairs
        return [self.job(a, s) for s in self.seeds for a in self.arms]


def _threads(jobs: int) -> str:
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))


def _run_job(job: _Job, env: Mapping[str, str]) -> str | None:
    """Run a job's missing steps in order; None, or what failed."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    for step in job.steps:
        if step.done:
            continue
        argv = step.argv() if isinstance(step, _Pretrain) else step.argv
        with open(job.log, "a", encoding="utf-8") as log:
            log.write("$ " + " ".join(argv) + "\n")
            log.flush()
            rc = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, env=dict(env)
            ).returncode
        if rc != 0 or not step.done:
            tail = job.log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            last = tail[-1] if tail else ""
            return f"{job.arm.name} seed {job.seed}: exit {rc} ({last}); log: {job.log}"
    return None


def execute(
    plan: StudyPlan,
    *,
    jobs: int = 2,
    progress: bool = True,
    runner: Callable[[_Job, Mapping[str, str]], str | None] = _run_job,
) -> None:
    """Run every unfinished job of ``plan``, ``jobs`` at a time; a StudyError lists failures."""
    from acodm.progress import progress_bar

    if jobs < 1:
        raise StudyError(f"--jobs must be >= 1, got {jobs}")
    all_jobs = plan.jobs()
    for job in all_jobs:
        for step in job.steps:
            if isinstance(step, _Pretrain):
                step.check_existing()
    todo = [j for j in all_jobs if not all(s.done for s in j.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": _threads(jobs)}
    bar = progress_bar(
        total=len(all_jobs), initial=len(all_jobs) - len(todo), unit="run", desc="study",
        disable=not progress,
    )  # fmt: skip
    failures: list[str] = []
    lock = threading.Lock()

    def one(job: _Job) -> None:
        start = time.perf_counter()
        failure = runner(job, env)
        with lock:
            if failure is not None:
                failures.append(failure)
                bar.write(f"FAILED {failure}")
            else:
                loss = read_json(job.target.run / "summary.json", "run summary").get(
                    "eval/loss_mean"
                )
                shown = "-" if loss is None else f"{loss:.4f}"
                bar.write(
                    f"{job.arm.name} seed {job.seed}: final mean val loss {shown} "
                    f"({time.perf_counter() - start:.0f}s)"
                )
            bar.update(1)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))
    bar.close()
    if failures:
        raise StudyError(
            f"{len(failures)} run(s) failed (finished ones are kept; run again to resume):\n"
            + "\n".join(failures)
        )


# -- results --------------------------------------------------------------------------------


def load_run(run: Path) -> RunResult:
    """A finished run's evaluation curve (``metrics.jsonl``) and its 6ND compute."""
    path = run / "metrics.jsonl"
    evals = [r for r in read_metrics(path) if r.get("eval/loss_mean") is not None]
    if not evals:
        raise StudyError(f"{path} has no evaluation; did the run finish?")
    last = evals[-1]
    return RunResult(
        steps=[int(r["step"]) for r in evals],
        loss_mean=[float(r["eval/loss_mean"]) for r in evals],
        ppl_mean=[float(r["eval/ppl_mean"]) for r in evals],
        final_domain_loss={
            k.removeprefix("eval/loss/"): float(v)
            for k, v in last.items()
            if k.startswith("eval/loss/")
        },
        flops_6nd=run_flops(run),
    )


def run_flops(run: Path) -> float | None:
    """6 x parameters x tokens of a finished run (config.json and summary.json)."""
    params = read_json(run / "config.json", "run config").get("model", {}).get("params")
    tokens = read_json(run / "summary.json", "run summary").get("tokens")
    return None if params is None or tokens is None else 6.0 * float(params) * float(tokens)


def policy_flops(spec: str) -> float | None:
    """The proxy compute an ``actor:PATH`` policy recorded at export (None if it did not);
    for an ensemble ``actor:A;B``, the sum of its members' (None if one did not record it)."""
    total = 0.0
    for item in spec.partition(":")[2].split(",")[0].split(";"):
        path = Path(item.strip())
        if path.is_dir():
            path = path / "policy.json"
        try:
            extra = json.loads(path.read_text(encoding="utf-8")).get("extra", {})
        except (OSError, json.JSONDecodeError):
            return None
        compute = extra.get("compute")
        if not compute or compute.get("flops_6nd") is None:
            return None
        total += float(compute["flops_6nd"])
    return total


def _proxy_flops(plan: StudyPlan, arm: Arm) -> float | None:
    if arm.mixer == "actor":
        return policy_flops(arm.spec)
    if arm.doremi_pipeline:
        per_seed = [
            sum(run_flops(plan.doremi_dir(arm, s) / part) or 0.0 for part in ("reference", "proxy"))
            for s in plan.seeds
        ]
        return statistics.fmean(per_seed)
    return None


def choose_reference(arms: Sequence[Arm], results: Mapping[str, Mapping[int, RunResult]]) -> str:
    """UniMax if an arm is UniMax, else the static arm of lowest mean final loss, else the
    arm of lowest mean final loss."""
    for arm in arms:
        if arm.mixer == "unimax":
            return arm.name
    pool = [a.name for a in arms if a.kind == "static"] or [a.name for a in arms]
    return min(pool, key=lambda n: statistics.fmean(r.final for r in results[n].values()))


def report(plan: StudyPlan, reference: str | None = None) -> dict[str, Any]:
    """Summarise the finished runs of ``plan`` into ``study.json`` / ``study.txt`` / a plot."""
    results = {a.name: {s: load_run(plan.run_dir(a, s)) for s in plan.seeds} for a in plan.arms}
    names = [a.name for a in plan.arms]
    if reference is not None and reference not in names:
        raise StudyError(f"--reference {reference!r} is not an arm; arms: {names}")
    ref = reference or choose_reference(plan.arms, results)
    baselines = [a.name for a in plan.arms if a.kind != "policy"]
    summary = summarize(
        results,
        seeds=plan.seeds,
        reference=ref,
        baselines=baselines,
        static=[a.name for a in plan.arms if a.kind == "static"],
        proxy_flops={a.name: _proxy_flops(plan, a) for a in plan.arms},
    )
    plot = _plot(plan, results)
    result = {
        "format": STUDY_FORMAT,
        "version": STUDY_VERSION,
        "store": _abs(plan.store),
        "preset": plan.preset,
        "proxy_preset": plan.proxy_preset,
        "overrides": plan.overrides,
        "arms_spec": {
            a.name: {
                "spec": a.spec,
                "kind": a.kind,
                "runs": {str(s): str(plan.run_dir(a, s)) for s in plan.seeds},
            }
            for a in plan.arms
        },
        **summary,
        "plot": None if plot is None else str(plot),
    }
    text = format_summary(summary)
    atomic_write_json(plan.out / "study.json", result)
    atomic_write_text(plan.out / "study.txt", text + "\n")
    return result


def _plot(plan: StudyPlan, results: Mapping[str, Mapping[int, RunResult]]) -> Path | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return None  # study.json says "plot": null; the CLI prints how to get plots
    from acodm.plots import plot_study_curves

    curves = {arm: [(r.steps, r.loss_mean) for r in runs.values()] for arm, runs in results.items()}
    return plot_study_curves(curves, plan.out / "plots" / "val_loss.png")


def default_proxy_preset(target: str) -> str:
    """The ``_proxy`` twin of a ``..._target`` preset, else the target preset itself."""
    twin = target.removesuffix("_target") + "_proxy"
    return twin if target.endswith("_target") and twin in PRESETS else target


def study(
    store: str | Path,
    out: str | Path,
    *,
    arms: Sequence[str] | str,
    whole_arms: Sequence[str] = (),
    seeds: Sequence[int] | str = (0, 1, 2),
    preset_name: str = "study_cpu_target",
    proxy_preset: str | None = None,
    jobs: int = 2,
    reference: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) a study and write its report; returns ``study.json``'s content.

    ``arms``: ``--arms`` values; ``whole_arms``: ``--arm`` values (see :func:`parse_arms`).
    ``overrides``: TrainConfig fields changed from the preset for every run (the
    ``acodm pretrain`` flags, e.g. ``{"steps": 20}``).
    """
    if preset_name not in PRESETS:
        raise StudyError(f"unknown run preset {preset_name!r}; known: {sorted(PRESETS)}")
    if not Path(store, "manifest.json").is_file():
        raise StudyError(f"{store} is not a token store (no manifest.json); run `acodm prepare`")
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    if not seed_list:
        raise StudyError("give at least one seed, e.g. --seeds 0-4")
    overrides = dict(overrides or {})
    _check_overrides(overrides)
    proxy = proxy_preset or default_proxy_preset(preset_name)
    if proxy not in PRESETS:
        raise StudyError(f"unknown proxy preset {proxy!r}; known: {sorted(PRESETS)}")
    plan = StudyPlan(
        store=_abs(str(store)),
        out=Path(out).resolve(),
        preset=preset_name,
        proxy_preset=proxy,
        arms=parse_arms(arms, whole_arms),
        seeds=list(dict.fromkeys(seed_list)),
        overrides=overrides,
    )
    plan.config(preset_name, "uniform", 0)  # a bad override fails before any run
    execute(plan, jobs=jobs, progress=progress)
    return report(plan, reference)
