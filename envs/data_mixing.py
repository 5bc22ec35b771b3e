"""``acodm/DataMixing-v0``: one LM pretraining run as a Gymnasium episode (METHOD.md).

The MDP reads top to bottom in :class:`DataMixingEnv`; its pure parts (action mapping,
observation, reward, and :func:`~acodm.spaces.transition`, the one place that turns an
interval into observation and reward) live in :mod:`acodm.spaces`. The env talks to the LM only through
:class:`acodm.trainer.Trainer` (``train_interval(weights) -> IntervalReport``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from acodm.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from acodm.config import TrainConfig, debug_cpu, resolve_config
from acodm.data.store import open_store
from acodm.errors import AcodmError
from acodm.io import atomic_write_json, read_json
from acodm.spaces import (
    DEFAULT_FEATURES,
    DEFAULT_PROBE_WINDOWS,
    FEATURES,
    PROBE_FEATURES,
    REWARDS,
    ActionMapping,
    ObservationSpec,
    ProbeTracker,
    RewardTerm,
    build_observation,
    check_reward_terms,
    transition,
    with_probe,
)
from acodm.trainer import IntervalReport, Trainer

#: ``env.json`` format of :meth:`DataMixingEnv.save_state`.
ENV_STATE_FORMAT = "acodm-env-state"
ENV_STATE_FILE = "env.json"

#: The default interval K of the built-in config (METHOD.md: K = 1 reproduces the paper;
#: a larger K makes each decision cheaper and each reward less noisy).
DEFAULT_INTERVAL = 4


class EnvError(AcodmError):
    """The environment was configured or driven incorrectly."""


def default_config(store: str) -> TrainConfig:
    """The built-in episode: ``debug_cpu`` with 40 steps of K = 4 (10 intervals, seconds on CPU).

    Pinned to the CPU: the ``tiny`` model is no faster on a GPU, and CPU runs are bitwise
    reproducible (the id is registered as deterministic). ``overrides={"device": "auto"}``
    moves it.
    """
    return debug_cpu(store).replace(
        steps=40, warmup_steps=4, interval=DEFAULT_INTERVAL, device="cpu"
    )


def check_reward_split(store: str | Path, seq_len: int, what: str = "reward='probe'") -> None:
    """An :class:`EnvError` unless every domain of ``store`` has a reward split of at least
    one probe window (``seq_len + 1`` tokens): the probe reward and features read it."""
    s = open_store(store)
    short = {d: s.num_tokens(d, "reward") for d in s.domains}
    short = {d: n for d, n in short.items() if n < seq_len + 1}
    if short:
        why = (
            "it is a schema-2 store (no reward split)"
            if s.schema_version < 3
            else f"their reward splits hold {short} tokens, fewer than one window of {seq_len + 1}"
        )
        raise EnvError(
            f"{what} measures the loss on the reward split of store {s.path}, but domains "
            f"{sorted(short)} have none to speak of ({why}); rebuild it with `acodm prepare "
            "CORPUS --out STORE --reward-fraction 0.01 --min-reward-tokens 4096` (or use "
            "reward='alignment')"
        )


def _count_monitored(cfg: TrainConfig) -> int:
    """Number of monitored layers (the per-layer feature length) for ``cfg``.

    Without patterns it is ``cfg.monitored_layers`` by construction (``select_depths`` always
    returns ``count`` indices); with patterns it depends on the model, so build it once.
    """
    if not cfg.monitored_patterns:
        return cfg.monitored_layers
    from acodm.dynamics.layers import monitored_layers
    from acodm.models import build_model

    model = build_model(
        cfg.model, open_store(cfg.store).vocab_size, max_seq_len=cfg.seq_len, seed=cfg.seed
    )
    return len(monitored_layers(model, patterns=list(cfg.monitored_patterns)))


class DataMixingEnv(gym.Env[np.ndarray, np.ndarray]):
    """LLM pretraining as an episode: the agent sets the data-domain weights every K steps.

    ## Description

    One episode is one pretraining run of a causal LM (:class:`acodm.trainer.Trainer`) on a
    token store with ``k`` data domains. One env step runs ``K`` optimizer steps with sampling
    weights given by the action (METHOD.md, "The environment"). A fresh model is trained in
    every episode.

    ## Action Space

    ``Box(-1, 1, (k,), float32)``, one score per domain in the store's domain order
    (``env.domains``); actions outside [-1, 1] are clipped first. Mapped to the simplex by
    ``env.action_mapping`` (:class:`acodm.spaces.ActionMapping`, serialised into the
    exported policy), one of:

    * ``action="softmax"`` (the default, the paper's): ``w = (1 - eps) * softmax(beta * a) +
      eps / k`` (:func:`acodm.spaces.action_to_weights`), centred on uniform.
    * ``action="residual"``: ``w = project(normalise(prior * exp(beta * a)), caps)``
      (:func:`acodm.spaces.residual_weights`), a multiplicative change of a *prior*
      mixture: a static rule computed from the run's own budget and store at every reset
      (``prior``, default ``auto``: UniMax with N = ``max_epochs``, or 4 without a cap; see
      :func:`acodm.spaces.resolve_prior`), held in ``env.prior``. ``a = 0`` is the prior
      exactly, so an actor whose output is zero is the prior.

    With an epoch cap (``max_epochs``) the weights of either kind are projected onto the
    capped simplex of the run's live epochs and remaining budget (the KL projection,
    :func:`acodm.data.weights.project_capped`): no domain beyond ``max_epochs`` epochs of its
    training tokens. The cap is the run's ``TrainConfig.max_epochs``, so the trainer holds the
    first interval to it too.

    | Index | Action                  | Min | Max |
    |-------|-------------------------|-----|-----|
    | i     | score of domain ``i``   | -1  | 1   |

    ## Observation Space

    ``Box(low, high, (n,), float32)`` with ``n = observation_size(k, n_layers, features)``;
    default ``n = 5 k + 2 n_layers + 1``. Groups in ``features`` order (default below); each
    per-domain / per-layer group is z-scored within itself and clipped to [-3, 3] (a constant
    group is all zeros), so the vector does not depend on the model's size or loss scale.

    | Group             | Length   | Meaning (raw, before normalisation)                 | Min | Max |
    |-------------------|----------|-----------------------------------------------------|-----|-----|
    | `loss`            | k        | domain's mean training loss in the interval         | -3  | 3   |
    | `loss_change`     | k        | change against the *previous* interval              | -3  | 3   |
    | `share`           | k        | fraction of the interval's sequences                | -3  | 3   |
    | `epochs`          | k        | epochs of the domain consumed so far                | -3  | 3   |
    | `alignment`       | k        | gradient-alignment score ``s_i``                    | -3  | 3   |
    | `weight_norm`     | n_layers | ``||W|| / ||W_0||`` of each monitored layer         | -3  | 3   |
    | `weight_distance` | n_layers | ``||W - W_0|| / ||W_0||``                           | -3  | 3   |
    | `progress`        | 1        | ``step / total_steps`` (not 0..100 as in the paper code) | 0 | 1 |

    With the agent console (``config.console=True``; the store annotated by ``acodm
    annotate``), four more per-domain groups of what the domain contributed to the interval
    can be listed before ``progress`` (``acodm.envs.CONSOLE_FEATURES`` is the default list
    plus these):

    | Group             | Length   | Meaning (raw, before normalisation)                 | Min | Max |
    |-------------------|----------|-----------------------------------------------------|-----|-----|
    | `mean_quality`    | k        | mean quality-agent score of the windows drawn       | -3  | 3   |
    | `topic_entropy`   | k        | entropy of their topics / log(n_topics)             | -3  | 3   |
    | `topic_coverage`  | k        | fraction of the topics drawn at least once          | -3  | 3   |
    | `repetition_rate` | k        | fraction of the windows drawn that were seen before | -3  | 3   |

    Two per-domain groups carry repetition in absolute terms, not z-scored (a z-score gives
    ten times the epochs the same observation); they can be listed anywhere
    (``acodm.envs.V1_FEATURES``, the next env version's list, has them before ``progress``):

    | Group             | Length   | Meaning (raw, not normalised)                       | Min | Max |
    |-------------------|----------|-----------------------------------------------------|-----|-----|
    | `log_epochs`      | k        | ``log(1 + epochs)`` of the domain so far            | 0   | log(101) |
    | `cap_left`        | k        | ``1 - epochs / max_epochs``: the cap still unused (needs ``max_epochs``) | 0 | 1 |

    Two per-domain groups read the probe of the reward split (``acodm.envs.PROBE_FEATURES``;
    listing either makes the env measure the probe after every interval, as ``reward="probe"``
    does; the store needs a reward split):

    | Group             | Length   | Meaning (raw, before normalisation)                 | Min | Max |
    |-------------------|----------|-----------------------------------------------------|-----|-----|
    | `probe_loss`      | k        | loss on the domain's fixed probe windows after the interval | -3 | 3 |
    | `probe_delta`     | k        | its decrease over the interval (0 at the first)     | -3  | 3   |

    ``env.observation_spec`` (:class:`ObservationSpec`) names the layout and serialises it.

    ## Rewards

    ``reward="alignment"`` (the default of v0, the paper's): ``r = sum_i w_i s_i`` (METHOD.md,
    "Reward: gradient alignment"): ``s`` is the interval's per-domain gradient-alignment score
    (z-scored across domains, clipped to [-3, 3]), so ``r`` is in [-3, 3].

    ``reward="probe"`` (issue 11: a reward that measures the objective): after every interval
    the model's loss on ``probe_windows`` (default 4) fixed windows per domain of the store's
    *reward split* (held-out documents, disjoint from training and validation; forward passes
    only, no hooks), averaged over domains: ``L_t``. ``L_0`` is measured at ``reset``.
    ``r_t = 100 (d_t - b_{t-1}) / L_{t-1}`` with ``d_t = L_{t-1} - L_t`` and ``b`` an EMA
    baseline of ``d`` (rate 0.3, starting at the first ``d``, so ``r_1 = 0``):
    :func:`acodm.spaces.probe_reward`. The baseline cancels the early-training trend;
    the reward is in percent of the probe loss. A store without a reward split (schema 2, or
    ``--reward-fraction 0``) is refused with an :class:`EnvError`.

    Optional extra terms (``reward_terms``) add ``weight * value`` with a
    total weight of at most 0.3, e.g. ``acodm.envs.console_reward_terms()``: the console-weighted
    quality and diversity terms of a console run. A scalar reward (the paper's code uses a
    k-dim critic).

    ## Starting State

    ``reset`` builds a fresh model (seeded from the reset seed) and runs the *first interval
    with uniform weights* (the residual action: with the prior, what a zero action gives;
    either within the caps), returning its observation: every observation is then a real
    measurement (no made-up zeros), and the first action already sees per-domain losses and
    alignment. Those K steps count against the budget.

    ## Episode End

    ``terminated=True`` when the run's step budget (``config.steps`` or ``config.tokens``) is
    spent; the last interval may be shorter than K. ``truncated`` is always False (wrap with
    ``TimeLimit`` only to cut runs short on purpose). An episode has
    ``env.num_intervals - 1`` steps.

    ## Information

    ``info`` from ``reset`` and ``step``: ``weights`` ({domain: weight} of the interval just
    run), ``step`` (optimizer steps so far), ``progress``, ``train_loss`` (the interval's mean
    training loss); from ``step`` also ``reward_terms`` ({"alignment" or "probe": ..., extra
    name: weight * value}; they sum to the reward) and, where the probe is measured, ``probe``
    ({"loss": L_t, "decrease": d_t, "baseline": b_{t-1}, "reward": r_t, "losses": {domain:
    loss}}; the probe's wall time is ``env.probe_seconds``, kept out of ``info`` so that
    the same seed and actions give the same info). ``env.last_report`` holds the whole
    :class:`~acodm.trainer.IntervalReport` of the last ``step`` (per-domain losses, metrics).

    ## Arguments

    ```python
    import gymnasium as gym
    import acodm.envs  # registers the id
    env = gym.make("acodm/DataMixing-v0")                      # built-in store and config
    env = gym.make("acodm/DataMixing-v0", store="runs/store", config="cpu_small",
                   overrides={"steps": 200}, interval=4, beta=1.0, eps=0.15)
    env = gym.make("acodm/DataMixing-v1", store="runs/store")  # probe reward, residual action
    env = gym.make("acodm/DataMixing-v0", action="residual", max_epochs=4,
                   features=acodm.envs.REPETITION_FEATURES + ("progress",))  # v0 + options
    ```

    * ``store``: path of a token store (``acodm prepare``). Default: the config's store, else a
      small store built once from text on the machine (cached under ``acodm`` cache ``envs/``).
    * ``config``: a :class:`TrainConfig` (its ``store`` is replaced by ``store`` if given), a
      preset name (``acodm.config.PRESETS``), or None for :func:`default_config` (``debug_cpu``,
      ``tiny`` model, 40 steps, K = 4, on the CPU: an episode takes about a second).
    * ``overrides``: TrainConfig fields to replace, e.g. ``{"steps": 200, "device": "cpu"}``.
    * ``interval``: K, optimizer steps per env step (default: the config's ``interval``; 4 in
      the built-in config).
    * ``action``: ``"softmax"`` (default) or ``"residual"`` (see Action Space).
    * ``beta``, ``eps``: the action mapping. Softmax: beta 1.0, eps 0.15 (eps = 0.15 matches
      the paper's one forced micro-batch per domain, about 15% uniform; beta = 1 lets the
      actor's [-1, 1] range span a weight ratio of up to e^2 between domains). Residual:
      beta ln 4 (a domain's prior share scaled by 1/4 to 4), no eps.
    * ``prior``: the residual action's prior rule (``auto``, ``uniform``, ``natural``,
      ``temperature:T``, ``unimax:N``), computed from each run's own context.
    * ``max_epochs``: the epoch cap of every domain (default: the config's ``max_epochs``,
      None: no cap); given here, it replaces the config's.
    * ``features``: observation groups (default all of the table above).
    * ``reward_terms``: extra :class:`RewardTerm` s (total weight <= 0.3).
    * ``reward``: ``"alignment"`` (default) or ``"probe"`` (see Rewards).
    * ``probe_windows``: probe windows per domain of the reward split (default 4).

    Determinism: on CPU, the same reset seed and actions give bitwise identical observations
    and rewards. On CUDA (bf16, atomics) runs are close but not bitwise equal.

    Saving and resuming: ``env.save_state(folder)`` writes the running LM (the trainer's
    checkpoint, :mod:`acodm.checkpoint`: safetensors + weights-only optimizer + JSON) and the
    env's own state (``np_random``, which seeds the next episodes, and the run seed) into
    ``folder``; ``env.load_state(folder)`` on an env built with the same arguments continues
    the episode where it was (the next ``step`` equals the uninterrupted run's on CPU). The
    global torch RNG is part of the trainer checkpoint and is restored too.

    ## Version History

    Both ids build this class; they differ only in its defaults (``acodm.envs.ENV_VERSIONS``;
    any argument given to ``gym.make`` overrides them). The class's own defaults are v0's.

    * v0: the paper's formulation: gradient-alignment reward, softmax action around uniform,
      no epoch cap, per-group z-scored observation (``DEFAULT_FEATURES``). The console's
      optional features and reward terms, the residual action, the epoch cap, and the
      repetition and probe features were added later as options, without changing v0's
      defaults.
    * v1 (the default recipe, issue 11): ``reward="probe"`` (the alignment reward does not
      track the objective: BENCHMARKS.md, "Is the reward valid?"), ``action="residual"``
      around the ``auto`` prior, ``max_epochs=16`` (``V1_MAX_EPOCHS``), and
      ``features=V1_FEATURES`` (the defaults plus ``log_epochs`` and ``cap_left``). Needs a
      store with a reward split. A policy exported
      under v0 still loads: its ``policy.json`` names its own mapping and features.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012  (gymnasium's convention)

    def __init__(
        self,
        store: str | None = None,
        config: TrainConfig | str | None = None,
        *,
        overrides: Mapping[str, Any] | None = None,
        interval: int | None = None,
        beta: float | None = None,
        eps: float | None = None,
        features: Sequence[str] = DEFAULT_FEATURES,
        action: str = "softmax",
        prior: str | None = None,
        max_epochs: float | None = None,
        reward_terms: Sequence[RewardTerm] = (),
        reward: str = "alignment",
        probe_windows: int = DEFAULT_PROBE_WINDOWS,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise EnvError(f"render_mode {render_mode!r} is not supported (no rendering)")
        self.render_mode = render_mode
        if store is None and not isinstance(config, TrainConfig):
            from .default_store import default_store

            store = str(default_store())
        self.config = cfg = resolve_config(
            config, store, overrides=overrides, interval=interval, default=default_config
        )
        if max_epochs is not None:
            self.config = cfg = cfg.replace(max_epochs=max_epochs)
        if not cfg.dynamics:
            raise EnvError(
                "the env needs config.dynamics=True: the observation holds the gradient alignment"
            )
        self.total_steps = cfg.total_steps()
        if self.total_steps <= cfg.interval:
            raise EnvError(
                f"the run has {self.total_steps} steps and K = {cfg.interval}: the first "
                "interval (run by reset) would spend the whole budget; use more steps or a smaller K"
            )
        self.domains: tuple[str, ...] = tuple(open_store(cfg.store).domains)
        self.k = len(self.domains)
        # a SpaceError names a bad kind, beta, eps or prior
        self.action_mapping = ActionMapping.make(
            action, beta=beta, eps=eps, prior=prior, max_epochs=cfg.max_epochs
        )
        self.beta, self.eps = self.action_mapping.beta, self.action_mapping.eps
        self.max_epochs: float | None = cfg.max_epochs
        self.reward_terms = check_reward_terms(reward_terms)
        if reward not in REWARDS:
            raise EnvError(f"reward must be one of {REWARDS}, got {reward!r}")
        if (
            isinstance(probe_windows, bool)
            or not isinstance(probe_windows, int)
            or probe_windows < 1
        ):
            raise EnvError(f"probe_windows must be an int >= 1, got {probe_windows!r}")
        self.reward: str = reward
        self.probe_windows = probe_windows
        #: Whether each interval ends with a probe of the reward split (the probe reward or
        #: a probe feature needs it): forward passes only, ``env.probe_seconds`` of them.
        self.measures_probe = reward == "probe" or any(f in PROBE_FEATURES for f in features)
        if self.measures_probe:
            check_reward_split(
                cfg.store, cfg.seq_len, "reward='probe'" if reward == "probe" else "a probe feature"
            )
        self.probe = ProbeTracker()
        #: Seconds spent on the probe's forward passes in the last reset/step.
        self.probe_seconds = 0.0
        capped = any(FEATURES[f].needs_cap for f in features if f in FEATURES)
        self.observation_spec = ObservationSpec(
            tuple(features),
            self.k,
            _count_monitored(cfg),
            max_epochs=cfg.max_epochs if capped else None,
        )
        low, high = self.observation_spec.bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (self.k,), dtype=np.float32)
        self.trainer: Trainer | None = None
        #: The report of the last ``step`` (its ``feedback`` is the interval's record, e.g.
        #: the per-domain losses an expert mixer learns from; ``metrics`` its logs). Kept
        #: through ``reset``: a vectorised env resets right after an episode's last step,
        #: before its callbacks read that step.
        self.last_report: IntervalReport | None = None
        #: The residual action's prior for the current run (None for the softmax mapping).
        self.prior: np.ndarray | None = None

    @property
    def num_intervals(self) -> int:
        """Intervals per run (the first is run by ``reset``): ``ceil(total_steps / K)``."""
        return -(-self.total_steps // self.config.interval)

    # -- the MDP ------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._close_trainer()
        # One seed source: the run (model init, sampler, projections) is seeded from np_random.
        run_seed = int(self.np_random.integers(0, 2**31 - 1))
        self._start(Trainer(self.config.replace(seed=run_seed)))
        assert self.trainer is not None
        # start state: one uniform interval (the residual action: the prior's)
        first = self.action_mapping.initial_weights(self.trainer.mixer_context(), self.prior)
        report = self.trainer.train_interval(first)
        dynamics = report.dynamics
        if self.measures_probe:  # L_0: the probe after the first interval
            losses = self._probe_losses()
            self.probe.start(losses)
            dynamics = with_probe(dynamics, losses, None)
        return build_observation(dynamics, self.observation_spec), self._info(report)

    def _probe_losses(self) -> np.ndarray:
        """Per-domain loss on the fixed probe windows of the reward split (forward only)."""
        assert self.trainer is not None
        start = time.perf_counter()
        losses = self.trainer.reward_losses(self.probe_windows)
        self.probe_seconds = time.perf_counter() - start
        return losses

    def _start(self, trainer: Trainer) -> None:
        """Make ``trainer`` the current run and compute its prior from its own context."""
        self.trainer = trainer
        mapping = self.action_mapping
        self.prior = mapping.prior_weights(trainer.mixer_context()) if mapping.residual else None

    def action_weights(self, action: np.ndarray) -> np.ndarray:
        """The weights that ``action`` (clipped to [-1, 1]) gives in the current run: the
        action mapping with the run's prior and its live caps (what ``step`` trains with)."""
        tr = self.trainer
        if tr is None:
            raise EnvError("no episode is running: call reset() first")
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        mapping = self.action_mapping
        caps = None
        if mapping.max_epochs is not None:  # the epochs are an all-reduce: only when needed
            caps = mapping.caps(tr.mixer_context(), tr.epochs(), tr.step)
        return mapping.weights(a, self.prior, caps)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        tr = self.trainer
        if tr is None or tr.done:
            raise EnvError("the episode is over (or was never started): call reset() first")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.k,):
            raise EnvError(f"the action must have shape ({self.k},), got {np.shape(action)}")
        weights = self.action_weights(a)  # (k,)
        report = tr.train_interval(weights)  # K optimizer steps with these weights
        dynamics, probe, probe_info = report.dynamics, None, None
        if self.measures_probe:
            previous = self.probe.losses
            losses = self._probe_losses()
            ps = self.probe.step(losses)
            dynamics = with_probe(dynamics, losses, previous)
            probe = ps.reward if self.reward == "probe" else None
            probe_info = {
                "loss": ps.loss,
                "decrease": ps.decrease,
                "baseline": ps.baseline,
                "reward": ps.reward,
                "losses": {d: float(x) for d, x in zip(self.domains, losses, strict=True)},
            }
        self.last_report = report
        obs, reward, terms = transition(
            report.weights, dynamics, self.observation_spec, self.reward_terms, probe
        )
        info = self._info(report)
        info["reward_terms"] = terms
        if probe_info is not None:
            info["probe"] = probe_info
        return obs, reward, tr.done, False, info

    def _info(self, report: IntervalReport) -> dict[str, Any]:
        return {
            "weights": {d: float(w) for d, w in zip(self.domains, report.weights, strict=True)},
            "step": int(report.dynamics.step),
            "progress": float(report.dynamics.progress),
            "train_loss": float(report.metrics["train/loss"]),
        }

    # -- saving and resuming ---------------------------------------------------------------
    def save_state(self, folder: str | Path) -> Path:
        """Write the current episode (LM run) and the env's RNG state into ``folder``.

        ``folder/env.json`` (format, ``np_random`` bit-generator state, run seed) plus, while
        an episode runs, the trainer's checkpoint under ``folder/checkpoints/`` (no pickle).
        Write into a temporary folder (e.g. :func:`acodm.io.atomic_directory`) for atomicity.
        """
        folder = Path(folder)
        tr = self.trainer
        if tr is not None:
            save_checkpoint(folder, tr.step, **tr.checkpoint_payload(), keep_last=1)
        rng = self._np_random
        state = {
            "format": ENV_STATE_FORMAT,
            "config": self.config.to_dict(),
            "domains": list(self.domains),
            # PCG64's state holds 128-bit ints: Python's json keeps them exact.
            "np_random": rng.bit_generator.state if rng is not None else None,
            "np_random_seed": self._np_random_seed,
            "run_seed": tr.config.seed if tr is not None else None,
        }
        if self.measures_probe:  # the probe's last losses and baseline, exactly
            state["probe"] = {
                "reward": self.reward,
                "windows": self.probe_windows,
                **self.probe.to_dict(),
            }
        atomic_write_json(folder / ENV_STATE_FILE, state)
        return folder

    def load_state(self, folder: str | Path) -> None:
        """Restore :meth:`save_state` output: the running episode continues where it was."""
        folder = Path(folder)
        try:
            state = read_json(folder / ENV_STATE_FILE, "env state")
        except FileNotFoundError as e:
            raise EnvError(f"{folder} holds no saved env state ({ENV_STATE_FILE})") from e
        if not isinstance(state, dict) or state.get("format") != ENV_STATE_FORMAT:
            raise EnvError(f"{folder / ENV_STATE_FILE} is not an acodm env state")
        config = json.loads(json.dumps(self.config.to_dict()))  # tuples -> lists, as stored
        if state.get("config") != config or state.get("domains") != list(self.domains):
            raise EnvError(
                f"the env state in {folder} was saved with another config or store; "
                "build the env with the same arguments"
            )
        probe = state.get("probe")
        if self.measures_probe and (
            probe is None
            or probe.get("reward") != self.reward
            or probe.get("windows") != self.probe_windows
        ):
            raise EnvError(
                f"the env state in {folder} was saved without this env's probe (reward="
                f"{self.reward!r}, probe_windows={self.probe_windows}); build the env with the "
                "arguments it was saved with"
            )
        self._close_trainer()
        if self.measures_probe:
            assert probe is not None
            self.probe = ProbeTracker.from_dict(probe)
        if state["np_random"] is not None:
            rng = np.random.Generator(getattr(np.random, state["np_random"]["bit_generator"])())
            rng.bit_generator.state = state["np_random"]
            self._np_random = rng
            self._np_random_seed = state["np_random_seed"]
        if state["run_seed"] is not None:
            ckpt = latest_checkpoint(folder)
            if ckpt is None:
                raise EnvError(f"{folder} has an env state but no trainer checkpoint")
            trainer = Trainer(self.config.replace(seed=int(state["run_seed"])))
            trainer.load_checkpoint(load_checkpoint(ckpt))
            self._start(trainer)

    def _close_trainer(self) -> None:
        if self.trainer is not None:
            self.trainer.close()  # removes the alignment hooks
            self.trainer = None
            self.prior = None

    def close(self) -> None:
        """Release the current run (model, optimizer, hooks); safe to call twice."""
        self._close_trainer()
        super().close()
