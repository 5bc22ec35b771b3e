"""Proxy-mode training of the mixing agent (METHOD.md, "The agent", "Proxy mode and transfer").

:func:`train_policy` runs the whole recipe on a proxy pretraining run and writes a run folder::

    out/config.json       proxy TrainConfig, AgentConfig, env arguments, schedule (episodes, ...)
    out/metrics.jsonl     one line per env step (MetricsLogger): rl/reward, rl/reward/<term>,
                          rl/action/<domain>, mix/weight/<domain>, train/loss[/<domain>],
                          rl/actor_loss, rl/critic_loss, rl/warmup (1 for expert steps), and
                          at an episode's last step rl/episode/return, rl/episode/length;
                          one line per gradient-update call (the agent's learning curve):
                          rl/update/critic_loss, rl/update/actor_loss, rl/update/n_updates
    out/agent/            SB3 checkpoint (agent.zip + replay_buffer.pkl + checkpoint.json),
                          RNG states (resume.json, rng.safetensors), the LM run (env/), and
                          the actor alone, pickle-free (actor.safetensors + actor.json)
    out/policy/           the exported actor (actor.safetensors + policy.json, no pickle)

The SB3 files under ``out/agent/`` are **pickle** (loading one can run any code): only
``resume`` loads them, and only from a checkpoint this user's acodm wrote, recognised by an
HMAC under a per-user key kept outside the run folder (:mod:`acodm.trust`); any other folder
needs ``trust_pickle=True`` (``--trust-pickle``). Re-exporting (:func:`export_from_checkpoint`,
``acodm export``) reads only the pickle-free actor copy, so it is safe on any folder. Share
``out/policy/``.

Recipe: one episode of :class:`acodm.envs.DataMixingEnv` is one proxy pretraining run; the
run lasts ``episodes * (num_intervals - 1)`` env steps. The first ``warmup_fraction`` of them
(at least one) follow an ODM bandit (``make_mixer("odm:warmup=0")``, re-created for every new
LM run) whose weights are mapped to actions with ``weights_to_action``; the transitions fill
the replay buffer and the actor/critic are pre-fitted (:func:`acodm.policies.agent.warmup`).
The agent then learns for the remaining steps (``continue_learning``, which continues the
current episode instead of resetting the env).

More experience per run (issue 11, "Enough experience"): ``episode_steps`` cuts the budget
into many short episodes, each a whole proxy run of that many optimizer steps (fresh model
and data order, LR warm-up scaled, progress = step / episode_steps); ``num_envs`` runs that
many proxies at once (:mod:`acodm.policies.vector`: one process each, env ``i`` seeded
``seed + i``, deterministic on CPU), sharing the ``episodes``; ``branches`` adds, before
every learning step, extra actions trained one interval each from the saved proxy state
(:mod:`acodm.policies.branching`; the state is restored exactly); and the agent's
``gradient_steps`` sets the updates after each (vector) env step. The learning curve is in
``metrics.jsonl`` (above) and :func:`acodm.plots.plot_learning_curve` draws it.

Resuming (``resume=True``) continues exactly: every agent checkpoint (after the warm-up,
every ``checkpoint_every`` env steps, at the end) saves, in one atomic folder, the agent with
its optimizers, replay buffer, timestep/episode counters and last observation (SB3's files),
the running LM episode (``agent/env/``: the trainer's checkpoint in acodm's pickle-free
format, the env's ``np_random`` state and run seed, :meth:`DataMixingEnv.save_state`), the
global numpy / python / torch RNG states that SB3 draws exploration noise and replay
minibatches from, and the SB3 logger's pending losses. A resumed run neither resets the env
nor reseeds anything, so on CPU it writes the same ``metrics.jsonl`` lines and exports a
bit-identical actor as an uninterrupted run with the same seed
(``tests/policies/test_resume_exact.py``). Steps run after the last checkpoint are redone;
metric lines logged after it are dropped on resume, so each env step appears once. An
interruption during the ODM warm-up (before the first checkpoint) restarts from scratch. On
CUDA the LM steps are not bitwise reproducible, so a resumed run is close, not equal. With
``num_envs > 1`` every proxy saves its own LM run (``agent/env/<i>/``, written by its own
process) and its Monitor episode; the resumed run is equal too
(``tests/policies/test_vector_envs.py``).
Checkpoints written before this format (no ``agent/env/``) still resume, inexactly: the
interrupted LM run restarts with a fresh model.

Non-proxy mode, the mixer ``ddpg`` that learns on the target run itself, is
:class:`~acodm.policies.ddpg.OnlineDDPGMixer` (:mod:`acodm.policies.ddpg`; importable from here
too).
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acodm import trust
from acodm.config import TrainConfig, resolve_config
from acodm.data.store import open_store
from acodm.envs import DataMixingEnv
from acodm.errors import AcodmError
from acodm.io import atomic_write_json, atomic_write_text
from acodm.metrics import MetricsLogger, read_metrics
from acodm.policies.agent import (
    ODM_EXPERT,
    PRIOR_EXPERT,
    Agent,
    AgentConfig,
    MixingCallback,
    Transition,
    continue_learning,
    episode_metrics,
    fill_replay_buffer,
    load_agent,
    log_updates,
    make_agent,
    residual_agent_defaults,
    save_checkpoint,
    small,
    verify_checkpoint,
    warmup,
    warmup_count,
)
from acodm.policies.branching import branch_actions, branch_transitions
from acodm.policies.ddpg import OnlineDDPGMixer  # registers mixer "ddpg"; its old home
from acodm.policies.export import (
    CHECKPOINT_ACTOR_SPEC,
    ActorParts,
    actor_parts,
    export_actor,
    read_checkpoint_actor,
    write_policy,
)
from acodm.policies.vector import make_proxy_vec_env, unwrap_proxy
from acodm.runfolder import TRAIN_POLICY, RunFolder, absolute_store, has_entries
from acodm.spaces import (
    CONSOLE_FEATURES,
    DEFAULT_FEATURES,
    ActionMapping,
    console_reward_terms,
    env_version,
)

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import VecEnv

__all__ = [
    "RUN_FORMAT",
    "OnlineDDPGMixer",
    "TrainPolicyError",
    "export_from_checkpoint",
    "train_policy",
]

RUN_FORMAT = "acodm-policy-run"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
AGENT_DIR = "agent"
ENV_DIR = "env"  # inside AGENT_DIR: the env's state (LM run, RNG), saved with the agent
POLICY_DIR = "policy"


class TrainPolicyError(AcodmError):
    """Bad arguments for :func:`train_policy` / :func:`export_from_checkpoint`, or a run
    folder that cannot be started, resumed or exported."""


# ----------------------------------------------------------------------------- the env


# ----------------------------------------------------------------------------- configuration


def _resolve_proxy(
    store: str | Path,
    proxy: str | TrainConfig,
    overrides: Mapping[str, Any] | None,
    interval: int | None,
) -> TrainConfig:
    """The proxy run's TrainConfig on ``store`` (a preset name or a config, plus overrides)."""
    store_path = Path(store).resolve()  # absolute in config.json: resumable from any directory
    if not store_path.exists():
        raise TrainPolicyError(f"store {store_path} does not exist: build one with `acodm prepare`")
    cfg = resolve_config(
        proxy, str(store_path), overrides=overrides, interval=interval, what="proxy"
    )
    # a preset's K may be raised; a K the caller chose (a config of its own) is only checked
    explicit = isinstance(proxy, TrainConfig) or interval is not None
    explicit = explicit or "interval" in (overrides or {})
    return _signal_interval(cfg, len(open_store(store_path).domains), explicit)


#: Largest accepted chance that an interval samples fewer than 3 domains (uniform weights):
#: with only 2 the alignment scores are symmetric, so the reward is exactly 0.
MAX_SILENT_INTERVALS = 0.05


def silent_interval_chance(k: int, sequences: int) -> float:
    """Chance that ``sequences`` uniform draws over ``k`` domains hit fewer than 3 of them.

    The alignment reward needs 3 active domains: ``s_i = sum_{j != i} <g_i, g_j>`` is the
    same for both of 2 domains, so their z-scores, and the reward, are 0. Exact for uniform
    weights: ``k * k^-n + C(k, 2) (2^n - 2) k^-n``.
    """
    if k < 3:
        return 1.0
    n = sequences
    return min(1.0, k ** (1 - n) + math.comb(k, 2) * (2.0**n - 2) * float(k) ** -n)


def _signal_interval(cfg: TrainConfig, k: int, explicit: bool) -> TrainConfig:
    """The proxy config with an interval K whose reward is rarely exactly 0.

    An explicit K is kept (with a warning when it is too short); the preset's K is raised to
    the smallest that samples 3 domains in >= 95% of intervals, and the change is printed.
    """
    per_step = cfg.micro_batch_size * cfg.grad_accum
    if k < 3:
        warnings.warn(
            f"with {k} domains the gradient-alignment reward is always 0 (both domains get "
            "the same score); the agent only learns from extra reward terms (--console)",
            stacklevel=3,
        )
        return cfg
    if silent_interval_chance(k, per_step * cfg.interval) <= MAX_SILENT_INTERVALS:
        return cfg
    if explicit:
        chance = silent_interval_chance(k, per_step * cfg.interval)
        warnings.warn(
            f"interval K={cfg.interval} draws {per_step * cfg.interval} sequences over {k} "
            f"domains: about {chance:.0%} of the rewards will be exactly 0 (fewer than 3 "
            "domains sampled); use a larger --interval or batch",
            stacklevel=3,
        )
        return cfg
    interval = cfg.interval
    while silent_interval_chance(k, per_step * interval) > MAX_SILENT_INTERVALS:
        interval += 1
    print(
        f"[train-policy] interval K raised from {cfg.interval} to {interval}: with "
        f"{per_step} sequences per step over {k} domains, shorter intervals often sample "
        "fewer than 3 domains, which gives the alignment reward no signal (pass --interval "
        "to choose)",
        file=sys.stderr,
    )
    return cfg.replace(interval=interval)


def _short_episodes(cfg: TrainConfig, steps: int) -> TrainConfig:
    """The proxy config of one short episode: a whole pretraining run of ``steps`` steps.

    Many short episodes give the agent many starts (a fresh model and data order each: the
    env draws every run's seed from its own RNG) and the whole schedule in every episode.
    The run's budget becomes ``steps`` (``tokens`` dropped) and the LR warm-up is scaled by
    the same factor, so the LR schedule has the long run's shape over progress, and the
    observation's progress (``step / steps``) keeps its meaning: the fraction of the run's
    budget spent, which is what the target computes over its own budget. The first interval
    is run by the env's reset, so ``steps`` must exceed K.
    """
    if steps <= cfg.interval:
        raise TrainPolicyError(
            f"episode_steps ({steps}) must exceed the interval K = {cfg.interval}: the env's "
            "reset runs the first interval; use more --episode-steps or a smaller --interval"
        )
    warmup = round(cfg.warmup_steps * steps / cfg.total_steps())
    return cfg.replace(steps=int(steps), tokens=None, warmup_steps=min(warmup, steps - 1))


def _make_env(
    cfg: TrainConfig,
    beta: float | None,
    eps: float | None,
    action: str = "softmax",
    prior: str | None = None,
    reward: str = "alignment",
    features: Sequence[str] | None = None,
) -> DataMixingEnv:
    kwargs: dict[str, Any] = {}
    if features is not None and tuple(features) != DEFAULT_FEATURES:
        kwargs["features"] = tuple(features)
    if reward != "alignment":
        kwargs["reward"] = reward
    if beta is not None:
        kwargs["beta"] = beta
    if eps is not None:
        kwargs["eps"] = eps
    if action != "softmax" or prior is not None:
        kwargs.update(action=action, prior=prior)
    if cfg.console:  # the agent also observes the console's features and is rewarded by them
        kwargs.update(features=CONSOLE_FEATURES, reward_terms=console_reward_terms())
    return DataMixingEnv(cfg.store, cfg, **kwargs)


def _is_v0_mapping(mapping: ActionMapping) -> bool:
    """The mapping of runs before the residual action (run configs then had no "action")."""
    return not mapping.residual and mapping.max_epochs is None


def _run_config(
    cfg: TrainConfig, agent_cfg: AgentConfig, env: DataMixingEnv, schedule: dict[str, Any]
) -> dict[str, Any]:
    run = {
        "format": RUN_FORMAT,
        "proxy": cfg.to_dict(),
        "agent": agent_cfg.to_json(),
        "env": {
            "domains": list(env.domains),
            "observation": env.observation_spec.to_dict(),
            "beta": env.beta,
            "eps": env.eps,
            "interval": env.config.interval,
            "num_intervals": env.num_intervals,
        },
        "schedule": schedule,
    }
    if env.reward_terms:  # only then: runs without extra terms keep their earlier config
        run["env"]["reward_terms"] = {t.name: t.weight for t in env.reward_terms}
    if not _is_v0_mapping(env.action_mapping):  # likewise: earlier runs stay resumable
        run["env"]["action"] = env.action_mapping.to_dict()
    if env.reward != "alignment":  # likewise
        run["env"]["reward"] = reward_spec(env)
    return run


def reward_spec(env: DataMixingEnv) -> dict[str, Any]:
    """The reward a policy was trained with, as recorded in its run config and policy.json's
    ``extra`` (information: the reward does not change what the exported actor does)."""
    if env.reward == "alignment":
        return {"kind": "alignment", "formula": "r = sum_i w_i s_i"}
    return {
        "kind": "probe",
        "formula": "r_t = 100 (d_t - b_{t-1}) / L_{t-1}, d_t = L_{t-1} - L_t",
        "windows_per_domain": env.probe_windows,
        "baseline_rate": env.probe.rate,
    }


def _read_run_config(path: Path) -> dict[str, Any]:
    """Read a run's ``config.json`` (a file path, or the run folder holding it)."""
    if path.is_dir():
        path = path / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise TrainPolicyError(f"{path} is missing or not valid JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        raise TrainPolicyError(f"{path} is not an acodm policy-training run config")
    return data


def _check_resumable(old: dict[str, Any], new: dict[str, Any], run_dir: Path) -> None:
    """Refuse to resume with settings that change the run (episodes may grow)."""
    new = json.loads(json.dumps(new))  # tuples -> lists, as stored
    old = {**old, "proxy": absolute_store(old.get("proxy"))}  # older runs: relative to the cwd
    for key in ("proxy", "agent"):  # settings added since the run started, left off
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            added = {k: v for k, v in new[key].items() if k not in old[key] and v in (None, False)}
            old[key] = {**old[key], **added}
    diffs = [key for key in ("proxy", "agent", "env") if old.get(key) != new.get(key)]
    old_s, new_s = old.get("schedule", {}), new.get("schedule", {})
    if old_s.get("warmup_steps") != new_s.get("warmup_steps"):
        diffs.append("schedule.warmup_steps")
    for key, default in (("num_envs", 1), ("branches", 0)):
        if old_s.get(key, default) != new_s.get(key, default):
            diffs.append(f"schedule.{key}")
    if diffs:
        raise TrainPolicyError(
            f"cannot resume {run_dir}: {diffs} differ from its {CONFIG_FILE}; "
            "use the same proxy/agent/interval settings or a new --out"
        )


# ----------------------------------------------------------------------------- logging


class _StepLog:
    """Writes one metrics line per env step and an optional progress line to stderr."""

    def __init__(self, logger: MetricsLogger, total: int, progress: bool) -> None:
        self.logger, self.total, self.progress = logger, total, progress
        self.every = max(1, total // 20)

    def __call__(self, metrics: dict[str, Any], step: int) -> None:
        self.logger.log(metrics, step)
        due = step % self.every == 0 or step == self.total
        if self.progress and due and "rl/reward" in metrics:  # not the branches' own lines
            reward = metrics["rl/reward"]
            print(f"[train-policy] step {step}/{self.total} reward {reward:+.4f}", file=sys.stderr)


def _update_log(model: Agent, logger: MetricsLogger) -> Callable[[dict[str, float]], None]:
    """One metrics line per SB3 ``train()`` call (after each env step, once learning runs):
    ``rl/update/critic_loss`` (mean squared TD error), ``rl/update/actor_loss`` (``-Q(s,
    mu(s))``), each the mean over the call's ``gradient_steps`` minibatches, and
    ``rl/update/n_updates`` (gradient steps so far), at the step the call followed."""

    def log(values: dict[str, float]) -> None:
        logger.log({f"rl/update/{k}": v for k, v in values.items()}, int(model.num_timesteps))

    return log


def _report_metrics(info: Mapping[str, Any]) -> dict[str, Any]:
    """Per-step extras: reward terms, train loss (overall and per domain, from ProxyEnv)."""
    out: dict[str, Any] = {f"rl/reward/{n}": float(v) for n, v in info["reward_terms"].items()}
    out["train/loss"] = float(info["train_loss"])
    probe = info.get("probe")
    if probe is not None:  # the probe of the reward split
        out.update({f"rl/probe/{k}": float(probe[k]) for k in ("loss", "decrease", "baseline")})
    out.update(info.get("train_metrics", {}))
    return out


class _TrainCallback(MixingCallback):
    """:class:`MixingCallback` plus reward terms and LM losses from the step's info."""

    def __init__(
        self, env: DataMixingEnv, branches: int = 0, branch_seed: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.env, self.branches, self.branch_seed = env, branches, branch_seed

    def _on_rollout_start(self) -> None:
        super()._on_rollout_start()  # a checkpoint first: a resumed run redoes the branches
        if self.branches > 0:
            self._branch()

    def _branch(self) -> None:
        """From the state the next action starts from, ``branches`` extra actions of one
        interval each into the replay buffer; the env is restored exactly."""
        step = int(self.num_timesteps) + 1  # the transition these accompany
        actions = branch_actions(self.branches, self.env.k, self.branch_seed, step)
        obs = np.asarray(self.model._last_obs)[0]
        ts = branch_transitions(self.env, obs, actions)
        fill_replay_buffer(self.model, ts)
        rewards = [t.reward for t in ts]
        if self._log is not None:
            self._log(
                {
                    "rl/branch/count": len(ts),
                    "rl/branch/reward_mean": float(np.mean(rewards)),
                    "rl/branch/reward_max": float(np.max(rewards)),
                },
                step,
            )

    def _metrics(self, i: int = 0) -> dict[str, Any]:
        out = super()._metrics(i)
        info = self.locals["infos"][i]
        if not _is_v0_mapping(self.env.action_mapping):  # the weights the interval ran with
            out.update({f"mix/weight/{n}": float(w) for n, w in info["weights"].items()})
        out.update(_report_metrics(info))
        out["rl/warmup"] = 0
        return out


# ----------------------------------------------------------------------------- warm-up


class _WarmupExpert:
    """The warm-up expert of every proxy (:meth:`ProxyEnv.expert_action`, in the proxy's
    process): its own ODM bandit (a fresh one per LM run, updated with each interval's
    feedback) or the prior (the zero action)."""

    def __init__(
        self, venv: VecEnv, env: DataMixingEnv, log: Callable[[dict[str, Any], int], None]
    ) -> None:
        self.venv, self.env, self.log = venv, env, log
        self.step = 0

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return np.stack(self.venv.env_method("expert_action"))  # (n_envs, k)

    def on_step(self, t: Transition, info: dict[str, Any]) -> None:
        self.step += 1
        metrics: dict[str, Any] = {"rl/reward": t.reward, "rl/warmup": 1}
        names = self.env.domains
        metrics.update({f"rl/action/{n}": float(a) for n, a in zip(names, t.action, strict=True)})
        metrics.update({f"mix/weight/{n}": float(w) for n, w in info["weights"].items()})
        metrics.update(_report_metrics(info))
        metrics.update(episode_metrics(info))
        self.log(metrics, self.step)


# ----------------------------------------------------------------------------- main entry


def train_policy(
    store: str | Path,
    out: str | Path,
    *,
    proxy: str | TrainConfig = "debug_cpu",
    overrides: Mapping[str, Any] | None = None,
    agent: AgentConfig | None = None,
    episodes: int = 1,
    interval: int | None = None,
    warmup_fraction: float = 0.02,
    checkpoint_every: int | None = None,
    beta: float | None = None,
    eps: float | None = None,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    wandb: bool = False,
    console: bool = False,
    trust_pickle: bool = False,
    action: str | None = None,
    prior: str | None = None,
    max_epochs: float | None = None,
    reward: str | None = None,
    episode_steps: int | None = None,
    num_envs: int = 1,
    branches: int = 0,
    version: str = "v1",
    warmup_expert: str | None = None,
) -> Path:
    """Train the mixing agent on ``episodes`` proxy runs; return ``out/policy`` (exported actor).

    ``proxy``: a run preset name (``acodm.config.PRESETS``) or a :class:`TrainConfig`; its
    ``store`` is replaced by ``store``; ``overrides`` replaces TrainConfig fields; ``interval``
    sets K. ``agent``: default :func:`acodm.policies.agent.small`; its ``seed`` is replaced by
    ``seed`` (which also seeds the LM runs through the env's reset); ``frozen_actor=True`` is
    the frozen-random-actor ablation. ``checkpoint_every``: env steps between agent
    checkpoints (default: one episode); one is also written after the warm-up and at the end.
    ``beta``/``eps``: the action mapping (default: the env's). ``action="residual"``: the
    residual action around ``prior`` (default ``auto``: UniMax at ``max_epochs``), with the
    actor's output layer zero-initialised (unless ``agent.zero_init_actor`` says otherwise),
    so the untrained policy is the prior; exported with the policy, whose target computes its
    own prior. ``max_epochs``: the proxy run's epoch cap (``TrainConfig.max_epochs``; the
    action is projected onto it, and the exported policy caps the target's weights too; the
    ODM warm-up's weights are capped by the trainer, but its actions are not inverted through
    the projection). ``console=True`` (or a proxy
    config with ``console=True``): the proxy run has the agent console (the store must be
    annotated), the observation is ``CONSOLE_FEATURES`` and the reward adds
    :func:`~acodm.spaces.console_reward_terms`; the exported policy then needs
    ``--console`` on the target run too. ``reward``: the env's reward, ``"alignment"`` (the
    paper's) or ``"probe"`` (the decrease of the loss on the store's reward split; the store
    needs one), recorded in the run config and in the exported policy's ``extra["reward_signal"]``.
    See the module docstring for the run folder and for
    what ``resume`` can and cannot restore.

    ``version``: the env's defaults (:data:`acodm.envs.ENV_VERSIONS`): ``"v1"`` (the default:
    probe reward, residual action, ``max_epochs`` 16, ``V1_FEATURES``, the prior as warm-up
    expert) or ``"v0"`` (the paper's: alignment reward, softmax action, no cap, the default
    features, the ODM warm-up expert). ``action``, ``reward``, ``max_epochs`` and
    ``warmup_expert`` (``"prior"``: the zero action; ``ODM_EXPERT``) override them.

    ``episode_steps``: many short episodes: every episode is a whole proxy run of this many
    optimizer steps (:func:`_short_episodes`; ``episodes`` of them, each with its own run seed).
    ``num_envs``: proxies run at once (:func:`acodm.policies.vector.make_proxy_vec_env`: one
    process each when > 1; env ``i`` seeded ``seed + i``); the ``episodes`` are shared among
    them (a multiple of ``num_envs``), the warm-up and checkpoint steps rounded up to a
    multiple of it, and SB3 runs ``gradient_steps`` updates after every step of all of them.
    It resumes exactly too: each proxy's LM run is saved in its own process.
    ``branches``: before every learning step, that many extra actions around the prior
    (:mod:`acodm.policies.branching`), each trained one interval from the saved proxy state,
    go into the replay buffer, and the state is restored exactly (one env only).

    ``resume`` unpickles the run's SB3 checkpoint, so it refuses (:class:`~acodm.trust.
    TrustError`, before anything is loaded or written) a checkpoint that this user's acodm did
    not write: one from another user or machine, one written before checkpoints were signed,
    or one whose pickle files changed (see :mod:`acodm.trust` for the rule).
    ``trust_pickle=True`` skips that check: only for a folder whose author you trust.
    """
    if episodes < 1:
        raise TrainPolicyError(f"episodes must be >= 1, got {episodes}")
    if branches < 0 or (branches > 0 and num_envs > 1):
        raise TrainPolicyError(
            f"branches must be >= 0, and needs num_envs=1 (it saves and restores the proxy "
            f"in this process), got branches={branches}, num_envs={num_envs}"
        )
    if num_envs < 1 or episodes % num_envs:
        raise TrainPolicyError(
            f"num_envs must be >= 1 and divide episodes (each proxy runs as many), got "
            f"num_envs={num_envs}, episodes={episodes}"
        )
    run_dir = Path(out)
    trust.user_key()  # checkpoints are signed with it: an unusable key fails now, not mid-run
    try:
        defaults = env_version(version)
    except AcodmError as e:
        raise TrainPolicyError(str(e)) from None
    action = action or defaults["action"]
    reward = reward or defaults["reward"]
    if max_epochs is None:
        max_epochs = defaults["max_epochs"]
    expert = warmup_expert or (ODM_EXPERT if version.endswith("v0") else PRIOR_EXPERT)
    if expert not in (ODM_EXPERT, PRIOR_EXPERT):
        raise TrainPolicyError(
            f"unknown warm-up expert {expert!r}; use {PRIOR_EXPERT!r} (the zero action: the "
            f"prior) or {ODM_EXPERT!r} (the ODM bandit)"
        )
    features = defaults["features"]
    cfg = _resolve_proxy(store, proxy, overrides, interval)
    if console:
        cfg = cfg.replace(console=True)
    if max_epochs is not None:
        cfg = cfg.replace(max_epochs=max_epochs)
    if episode_steps is not None:
        cfg = _short_episodes(cfg, episode_steps)
    agent_cfg = replace(agent or small(), seed=int(seed))
    env = _make_env(cfg, beta, eps, action, prior, reward, features)
    agent_cfg = residual_agent_defaults(agent_cfg, env.action_mapping.residual)
    per_episode = env.num_intervals - 1
    total = episodes * per_episode

    def whole_rounds(n: int) -> int:  # env steps come num_envs at a time
        return -(-n // num_envs) * num_envs

    schedule = {
        "episodes": episodes,
        "steps_per_episode": per_episode,
        "total_steps": total,
        "warmup_fraction": warmup_fraction,
        "warmup_steps": whole_rounds(warmup_count(total, warmup_fraction)),
        "warmup_expert": expert,
        "checkpoint_every": whole_rounds(int(checkpoint_every or per_episode)),
        "seed": int(seed),
    }
    if episode_steps is not None:  # only then: earlier runs keep their schedule
        schedule["episode_steps"] = int(episode_steps)
    if num_envs > 1:
        schedule["num_envs"] = num_envs
    if branches > 0:
        schedule["branches"] = branches
    run_config = _run_config(cfg, agent_cfg, env, schedule)
    folder = RunFolder(run_dir, TRAIN_POLICY)  # lock, leftovers; a failed start leaves nothing
    venv: VecEnv | None = None
    try:
        folder.acquire()
        venv = make_proxy_vec_env(
            partial(_make_env, cfg, beta, eps, action, prior, reward, features),
            num_envs,
            env=env,
        )
        model = _start_or_resume(venv, env, agent_cfg, run_dir, run_config, resume, trust_pickle)
        logger = MetricsLogger(
            run_dir / METRICS_FILE, wandb=wandb, run_name=run_dir.name, config=run_config
        )
        with logger:
            log = _StepLog(logger, total, progress)
            if model is None:
                model = _warmup_phase(venv, env, agent_cfg, run_dir, schedule, log)
            log_updates(model, _update_log(model, logger))
            _learn_phase(model, env, run_dir, schedule, log)
        return _export(model, env, run_dir, run_config)
    except BaseException:
        folder.release(failed=True)
        raise
    finally:
        folder.release()
        if venv is not None:
            venv.close()  # the proxies' processes; with one env, the env itself
        env.close()


def _start_or_resume(
    venv: VecEnv,
    env: DataMixingEnv,
    agent_cfg: AgentConfig,
    run_dir: Path,
    run_config: dict[str, Any],
    resume: bool,
    trust_pickle: bool = False,
) -> Agent | None:
    """Prepare ``run_dir``; return the resumed agent, or None for a fresh start.

    A checkpoint to resume is verified (:func:`verify_checkpoint`) before anything in
    ``run_dir`` is written or loaded, unless ``trust_pickle``.
    """
    ckpt = run_dir / AGENT_DIR / "checkpoint.json"
    if resume and (run_dir / CONFIG_FILE).exists():
        _check_resumable(_read_run_config(run_dir / CONFIG_FILE), run_config, run_dir)
        if ckpt.exists() and not trust_pickle:
            verify_checkpoint(run_dir / AGENT_DIR)
    elif has_entries(run_dir):
        hint = (
            f"it has no {CONFIG_FILE}, so it is not a policy-training run to resume"
            if resume
            else "pass resume=True (--resume) to continue it"
        )
        raise TrainPolicyError(
            f"{run_dir} already exists and is not empty; {hint}, or choose another output folder"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / CONFIG_FILE, run_config)
    if not (resume and ckpt.exists()):
        _drop_metrics_after(run_dir / METRICS_FILE, 0)
        return None
    env_state = run_dir / AGENT_DIR / ENV_DIR
    exact = env_state.is_dir()  # checkpoints of older acodm versions lack it
    if exact:  # before load_agent, which restores the global RNGs last
        _load_env_states(venv, env, env_state)
    model = load_agent(
        run_dir / AGENT_DIR, venv, device=agent_cfg.device, exact=exact, trust_pickle=trust_pickle
    )
    _drop_metrics_after(run_dir / METRICS_FILE, int(model.num_timesteps))
    return model


def _drop_metrics_after(path: Path, step: int) -> None:
    """Keep only metric lines with ``step <= step`` (those the checkpoint covers)."""
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def _warmup_phase(
    venv: VecEnv,
    env: DataMixingEnv,
    agent_cfg: AgentConfig,
    run_dir: Path,
    schedule: dict[str, Any],
    log: _StepLog,
) -> Agent:
    """Make the agent, run the ODM expert for the warm-up steps, checkpoint."""
    model = make_agent(venv, agent_cfg)
    venv.env_method("set_expert", schedule["warmup_expert"])
    expert = _WarmupExpert(venv, env, log)
    steps = int(schedule["warmup_steps"])
    result = warmup(model, expert, steps, on_step=expert.on_step, vectorized=True)
    venv.env_method("stop_expert")
    summary: dict[str, Any] = {"rl/warmup_transitions": result.transitions}
    if result.bc_loss is not None:
        summary["rl/warmup_bc_loss"] = result.bc_loss
    if result.critic_loss is not None:
        summary["rl/warmup_critic_loss"] = result.critic_loss
    log.logger.log(summary, int(model.num_timesteps))
    save_checkpoint(model, run_dir / AGENT_DIR, _env_writer(model))
    return model


def _env_writer(model: Agent) -> Callable[[Path], None]:
    """Saves the env's state (running LM, RNG) inside an agent checkpoint being written:
    ``env/``, or with several proxies (each in its own process) ``env/<i>/`` for proxy i."""
    venv = model.get_env()
    assert venv is not None

    def write(folder: Path) -> None:
        if venv.num_envs == 1:
            unwrap_proxy(venv).save_state(folder / ENV_DIR)
            return
        for i in range(venv.num_envs):
            venv.env_method("save_state", str(folder / ENV_DIR / str(i)), indices=i)

    return write


def _load_env_states(venv: VecEnv, env: DataMixingEnv, folder: Path) -> None:
    """Restore what :func:`_env_writer` saved into every proxy of ``venv``."""
    if venv.num_envs == 1:
        env.load_state(folder)
        return
    for i in range(venv.num_envs):
        if not (folder / str(i)).is_dir():
            raise TrainPolicyError(f"{folder} holds no saved state of proxy {i}")
        venv.env_method("load_state", str(folder / str(i)), indices=i)


def _learn_phase(
    model: Agent, env: DataMixingEnv, run_dir: Path, schedule: dict[str, Any], log: _StepLog
) -> None:
    callback = _TrainCallback(
        env,
        branches=int(schedule.get("branches", 0)),
        branch_seed=int(schedule["seed"]),
        log=log,
        domains=list(env.domains),
        beta=env.beta,
        eps=env.eps,
        checkpoint_dir=run_dir / AGENT_DIR,
        checkpoint_every=int(schedule["checkpoint_every"]),
        write_state=_env_writer(model),
    )
    continue_learning(model, int(schedule["total_steps"]), callback=callback)


def _reward_stats(run_dir: Path) -> dict[str, Any]:
    records = [r for r in read_metrics(run_dir / METRICS_FILE) if "rl/reward" in r]
    rewards = np.array([r["rl/reward"] for r in records if r["rl/reward"] is not None], float)
    learned = np.array(
        [r["rl/reward"] for r in records if r.get("rl/warmup") == 0 and r["rl/reward"] is not None]
    )
    tail = rewards[-max(1, len(rewards) // 5) :] if len(rewards) else rewards

    def mean(a: np.ndarray) -> float | None:
        return float(a.mean()) if len(a) else None

    return {
        "steps": len(rewards),
        "mean": mean(rewards),
        "mean_after_warmup": mean(learned),
        "mean_last_20pct": mean(tail),
    }


def proxy_compute(
    cfg: TrainConfig | DataMixingEnv, episodes: int, branch_intervals: int = 0
) -> dict[str, Any]:
    """The proxy's training compute, for a study's "proxy compute as a multiple of one target run".

    ``cfg``: the proxy's run config (or an env, whose config is used).

    ``tokens``: every episode's full budget (``episodes x steps x tokens per step``) plus one
    interval of K steps for each of ``branch_intervals`` branches (``--branches``);
    ``flops_6nd``: the usual ``6 N D`` estimate of training FLOPs with ``N`` the model's total
    parameters (embeddings included: at CPU sizes they are most of the model) and ``D`` those
    tokens. The LM's evaluation and the agent's own updates are not counted.
    """
    import torch

    from acodm.data.store import open_store
    from acodm.models import build_model, count_parameters

    if not isinstance(cfg, TrainConfig):
        cfg = cfg.config
    steps = int(episodes) * cfg.total_steps() + int(branch_intervals) * cfg.interval
    tokens = steps * cfg.tokens_per_step()
    with torch.device("meta"):  # shapes only: the proxy's model, nothing allocated
        model = build_model(cfg.model, open_store(cfg.store).vocab_size, max_seq_len=cfg.seq_len)
    params = count_parameters(model)
    return {
        "tokens": tokens,
        "params": params,
        "flops_6nd": 6.0 * params * tokens,
        "branch_intervals": int(branch_intervals),
    }


def _branch_intervals(run_dir: Path) -> int:
    """The branch intervals a run trained (``rl/branch/count`` per learning step; a step redone
    after a resume counts once, as in the uninterrupted run)."""
    per_step = {
        int(r["step"]): int(r["rl/branch/count"])
        for r in read_metrics(run_dir / METRICS_FILE)
        if "rl/branch/count" in r
    }
    return sum(per_step.values())


def _export(model: Agent, env: DataMixingEnv, run_dir: Path, run_config: dict[str, Any]) -> Path:
    proxy = run_config["proxy"]
    extra = {
        "proxy_model": proxy["model"],
        "proxy_steps": proxy["steps"],
        "episodes": run_config["schedule"]["episodes"],
        "num_timesteps": int(model.num_timesteps),
        "frozen_actor": run_config["agent"]["frozen_actor"],
        "algorithm": run_config["agent"]["algorithm"],
        "reward": _reward_stats(run_dir),
        "reward_signal": reward_spec(env),
        "compute": proxy_compute(
            env.config, run_config["schedule"]["episodes"], _branch_intervals(run_dir)
        ),
    }
    return export_actor(
        model,
        run_dir / POLICY_DIR,
        domains=list(env.domains),
        observation=env.observation_spec.to_dict(),
        interval=env.config.interval,
        action=env.action_mapping,
        extra=extra,
        overwrite=True,
    )


# ----------------------------------------------------------------------------- re-export


def export_from_checkpoint(
    agent_dir: str | Path,
    out: str | Path,
    *,
    run_config: str | Path | None = None,
    overwrite: bool = False,
    trust_pickle: bool = False,
) -> Path:
    """Re-export the actor of an agent checkpoint to ``out`` (``actor.safetensors`` +
    ``policy.json``); return ``out``.

    ``agent_dir``: a checkpoint folder (``<run>/agent``) or a run folder containing one.
    ``run_config``: the run's ``config.json`` (domains, observation spec, beta, eps, K);
    default ``<agent_dir>/../config.json``. Reads only JSON and safetensors: the checkpoint's
    pickle-free actor copy (``actor.safetensors`` + ``actor.json``), never ``agent.zip``, so
    it is safe on a folder from anyone. A checkpoint of an older acodm has no such copy: an
    error, unless ``trust_pickle=True``, which loads its SB3 ``agent.zip`` (pickle: it may run
    code; only for a folder whose author you trust).
    """
    folder = Path(agent_dir)
    if (folder / AGENT_DIR / "checkpoint.json").exists():
        folder = folder / AGENT_DIR
    try:
        meta = json.loads((folder / "checkpoint.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise TrainPolicyError(f"{folder} is not an agent checkpoint ({e})") from e
    config_path = Path(run_config) if run_config is not None else folder.parent / CONFIG_FILE
    run = _read_run_config(config_path)
    if (folder / CHECKPOINT_ACTOR_SPEC).is_file():
        parts, actor_meta = read_checkpoint_actor(folder)
        num_timesteps = int(actor_meta["num_timesteps"])
    elif trust_pickle:
        parts, num_timesteps = _parts_from_sb3(folder, meta)
    else:
        raise TrainPolicyError(
            f"{folder}: this checkpoint predates pickle-free export (no {CHECKPOINT_ACTOR_SPEC}); "
            "if you created it yourself, pass --trust-pickle (trust_pickle=True) to read its "
            "SB3 agent.zip (pickle: it can run code), or re-run train-policy"
        )
    env_spec = run["env"]
    mapping = (
        ActionMapping.from_dict(env_spec["action"])
        if "action" in env_spec
        else ActionMapping("softmax", float(env_spec["beta"]), float(env_spec["eps"]))
    )
    extra = {
        "proxy_model": run["proxy"]["model"],
        "episodes": run["schedule"]["episodes"],
        "num_timesteps": num_timesteps,
        "frozen_actor": run["agent"]["frozen_actor"],
        "algorithm": run["agent"]["algorithm"],
        "source": "export_from_checkpoint",
        # runs of the alignment reward record none (their config predates the choice)
        "reward_signal": env_spec.get(
            "reward", {"kind": "alignment", "formula": "r = sum_i w_i s_i"}
        ),
    }
    compute = _recorded_compute(run, config_path.parent)
    if compute is not None:
        extra["compute"] = compute
    return write_policy(
        parts,
        out,
        domains=env_spec["domains"],
        observation=env_spec["observation"],
        interval=int(env_spec["interval"]),
        action=mapping,
        extra=extra,
        overwrite=overwrite,
    )


def _recorded_compute(run: Mapping[str, Any], run_dir: Path) -> dict[str, Any] | None:
    """The proxy compute of a run from its config (and its metrics' branch count), as the
    run's own export records it; None, with a warning, if its store cannot be read (the
    parameter count needs the store's vocabulary)."""
    try:
        cfg = TrainConfig.from_dict(dict(run["proxy"]))
        branches = _branch_intervals(run_dir) if (run_dir / METRICS_FILE).is_file() else 0
        return proxy_compute(cfg, int(run["schedule"]["episodes"]), branches)
    except (OSError, KeyError, TypeError, ValueError, AcodmError) as e:
        warnings.warn(
            f"the re-export records no proxy compute (extra.compute): {e}; a study then "
            "reports its proxy compute as unknown",
            stacklevel=3,
        )
        return None


def _parts_from_sb3(folder: Path, meta: dict[str, Any]) -> tuple[ActorParts, int]:
    """The actor of an old checkpoint's SB3 ``agent.zip``: unpickles it (trusted folders only)."""
    from stable_baselines3 import DDPG, TD3

    cls = DDPG if meta.get("algorithm") == "ddpg" else TD3
    model = cls.load(folder / "agent.zip", env=None, device="cpu")
    return actor_parts(model), int(meta.get("num_timesteps", model.num_timesteps))
