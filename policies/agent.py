"""The DDPG/TD3 agent (stable-baselines3): config, construction, warm-up, logging, checkpoints.

METHOD.md, "The agent": SB3 ``DDPG`` (``TD3`` as an option), MLP actor and critic, Gaussian
action noise, replay buffer, soft target updates. Warm-up: the first steps follow an expert (the
paper: an ODM bandit) and are **added to the replay buffer**, instead of SB3's ``learning_starts``
uniform-random actions that would each cost LM steps; then the actor is fitted to copy the expert
(behaviour cloning) and the critic to the rewards. ``frozen_actor`` is the ablation of the
published code, whose actor optimizer never steps.

Checkpoints (``.zip`` + replay buffer ``.pkl``) are SB3's pickle-based formats: for resuming
one's own runs only, never for sharing (STYLE.md). Share a policy with
:func:`acodm.policies.export.export_actor`. Each checkpoint also holds a pickle-free copy of
the actor (``actor.safetensors`` + ``actor.json``), from which a run is re-exported without
unpickling, and an HMAC signature of its pickle files under this user's key
(:mod:`acodm.trust`): :func:`load_agent` refuses a checkpoint this user's acodm did not write
unless ``trust_pickle=True``.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from safetensors.torch import load_file, save_file
from stable_baselines3 import DDPG, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.td3.policies import TD3Policy

from acodm import trust
from acodm.errors import AcodmError
from acodm.io import atomic_directory, sha256_bytes, sha256_file
from acodm.policies.export import actor_parts, write_checkpoint_actor
from acodm.spaces import action_to_weights, weights_to_action

__all__ = [
    "ODM_EXPERT",
    "PRIOR_EXPERT",
    "V1_PRIOR_ANCHOR",
    "AgentConfig",
    "AgentError",
    "AnchoredCritic",
    "AnchoredPolicy",
    "FrozenActorPolicy",
    "MixingCallback",
    "Transition",
    "UpdateLogger",
    "WarmupResult",
    "continue_learning",
    "episode_metrics",
    "fill_replay_buffer",
    "fit_actor_to_buffer",
    "fit_critic_to_buffer",
    "load_agent",
    "log_updates",
    "make_agent",
    "paper",
    "residual_agent_defaults",
    "save_checkpoint",
    "small",
    "verify_checkpoint",
    "warmup",
    "warmup_count",
    "weights_to_action",
    "zero_last_layer",
]

Agent = DDPG | TD3
Expert = Callable[[np.ndarray], np.ndarray]
LogFn = Callable[[dict[str, Any], int], None]


class AgentError(AcodmError):
    """Invalid agent configuration or use (wrong action space, bad warm-up, bad checkpoint)."""


#: The warm-up expert of proxy and non-proxy mode: the ODM bandit itself (the agent's warm-up
#: replaces ODM's own).
ODM_EXPERT = "odm:warmup=0"
#: The warm-up expert of acodm/DataMixing-v1: the zero action, i.e. the residual action's
#: prior (uniform under the softmax action). Behaviour cloning on it keeps a zero-initialised
#: actor at its prior, where copying ODM would move it away before it has learnt anything.
PRIOR_EXPERT = "prior"
#: ``AgentConfig.prior_anchor`` of the residual action (acodm/DataMixing-v1) when none is
#: given: the actor leaves the prior by ``a_i = g_i / (2 c)`` for a critic action gradient
#: ``g_i`` (reward units per unit action), so a domain's action saturates only where the
#: critic says that moving it fully pays ``2 c`` reward units per interval. 2.0 was the best of
#: {0, 0.5, 2} on the 5-seed CPU study (README, "The CPU study"): 0 saturates the action and
#: loses 0.26 nats to uniform, 0.5 loses 0.02, 2 ties uniform and beats UniMax on 5/5 seeds.
V1_PRIOR_ANCHOR = 2.0


def warmup_count(total: int, fraction: float) -> int:
    """Warm-up steps for a ``fraction`` of ``total`` env steps: at least one, at most all."""
    if not 0.0 <= fraction <= 1.0:
        raise AgentError(f"warmup_fraction must be in [0, 1], got {fraction}")
    return min(total, max(1, math.ceil(fraction * total - 1e-9)))


@dataclass(frozen=True)
class AgentConfig:
    """Hyperparameters of the agent; validated on creation. Presets: :func:`small`, :func:`paper`.

    ``learning_starts`` counts uniform-random steps before learning; 0 by default because every
    env step costs LM steps and :func:`warmup` replaces them with an expert's transitions.
    ``frozen_actor``: the actor stays at its random initialisation (the critic still trains):
    what the published AC-ODM code effectively ran (METHOD.md, "The agent").
    ``zero_init_actor``: the actor's output layer (the Linear before the tanh) starts with
    zero weights and bias, so the untrained actor outputs ``a = 0`` everywhere: with the
    residual action that *is* the prior mixture. DDPG still learns: the output layer's
    gradient is the critic's action gradient times the hidden activations (non-zero), and the
    hidden layers get gradient once the output layer has moved (after the first update).
    ``None`` (the default): on for the residual action (``train_policy`` and the ``ddpg``
    mixer decide), off otherwise; :func:`make_agent` reads None as off.
    ``prior_anchor``: ``c >= 0`` in the actor's objective ``max Q(s, mu(s)) - c ||mu(s)||^2``
    (:class:`AnchoredCritic`): with the residual action ``a = 0`` is the prior, so the actor
    leaves it only as far as the critic's action gradient pays for (``a_i = g_i / 2c`` for a
    locally linear critic, in reward units per unit action). 0 is SB3's plain DDPG.
    ``None`` (the default): ``train_policy``'s version decides (v1: :data:`V1_PRIOR_ANCHOR`);
    :func:`make_agent` reads None as 0.
    ``critics``: the number of critic networks (an ensemble, each from its own random init,
    all fitted to the same TD targets; SB3's TD target takes their minimum). ``None`` (the
    default): the algorithm's own (DDPG 1; TD3 2, the actor following the first, as in SB3).
    Set explicitly, the actor maximises the ensemble's ``mean - pessimism * sd`` (minus the
    prior anchor): it moves only where the critics agree that a mixture pays.
    ``pessimism``: ``beta >= 0`` in that lower confidence bound; > 0 needs ``critics >= 2``.
    """

    algorithm: str = "ddpg"
    net_arch: tuple[int, ...] = (64, 64)
    critic_arch: tuple[int, ...] | None = None  # None: same as net_arch
    activation: str = "relu"
    gamma: float = 0.95
    tau: float = 0.005
    buffer_size: int = 10_000
    batch_size: int = 32
    learning_rate: float = 1e-3  # SB3 uses one rate (one schedule) for actor and critic
    noise_sigma: float = 0.1
    train_freq: int = 1
    gradient_steps: int = 1
    learning_starts: int = 0
    seed: int | None = 0
    frozen_actor: bool = False
    zero_init_actor: bool | None = None
    prior_anchor: float | None = None
    critics: int | None = None
    pessimism: float = 0.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.algorithm not in ("ddpg", "td3"):
            raise AgentError(f"algorithm must be 'ddpg' or 'td3', got {self.algorithm!r}")
        for name, arch in (("net_arch", self.net_arch), ("critic_arch", self.critic_arch)):
            if arch is not None and (len(arch) == 0 or any(int(n) <= 0 for n in arch)):
                raise AgentError(f"{name} must be a non-empty tuple of positive widths, got {arch}")
        if self.activation not in _ACTIVATIONS:
            raise AgentError(f"activation must be one of {sorted(_ACTIVATIONS)}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 < self.tau <= 1.0:
            raise AgentError(
                f"need 0 <= gamma <= 1 and 0 < tau <= 1 (got {self.gamma}, {self.tau})"
            )
        for name in ("buffer_size", "batch_size", "train_freq"):
            if int(getattr(self, name)) <= 0:
                raise AgentError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.gradient_steps < 0 or self.learning_starts < 0:
            raise AgentError("gradient_steps and learning_starts must be >= 0")
        if self.learning_rate <= 0 or self.noise_sigma < 0:
            raise AgentError("learning_rate must be > 0 and noise_sigma >= 0")
        anchor = self.prior_anchor
        if anchor is not None and not (math.isfinite(anchor) and anchor >= 0):
            raise AgentError(f"prior_anchor must be a finite number >= 0, got {anchor!r}")
        if self.critics is not None and int(self.critics) < 1:
            raise AgentError(f"critics must be >= 1, got {self.critics}")
        if not (math.isfinite(self.pessimism) and self.pessimism >= 0):
            raise AgentError(f"pessimism must be a finite number >= 0, got {self.pessimism!r}")
        if self.pessimism > 0 and (self.critics or 0) < 2:
            raise AgentError(
                f"pessimism {self.pessimism} needs an ensemble: set critics >= 2 "
                "(the spread of one critic is 0)"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentConfig:
        data = dict(data)
        for key in ("net_arch", "critic_arch"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


_ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "tanh": torch.nn.Tanh,
    "elu": torch.nn.ELU,
}


def small(**overrides: Any) -> AgentConfig:
    """Default preset: DDPG, [64, 64] MLPs, the paper's gamma/batch/buffer, tau 0.005."""
    return replace(AgentConfig(), **overrides)


def paper(**overrides: Any) -> AgentConfig:
    """METHOD.md's values: gamma 0.95, tau 0.001, buffer 10k, batch 32, one update per env step,
    6 x 1024 MLPs. Oversized for a ~100-dim observation and a few thousand decisions (≈5M
    parameters per network): kept for reproduction; start with :func:`small` and measure.
    The paper's LayerNorm is not reproduced (SB3's TD3 actor has no such option).
    """
    base = AgentConfig(
        net_arch=(1024,) * 6,
        gamma=0.95,
        tau=0.001,
        buffer_size=10_000,
        batch_size=32,
        train_freq=1,
        gradient_steps=1,
    )
    return replace(base, **overrides)


class AnchoredCritic(ContinuousCritic):
    """SB3's critic whose :meth:`q1_forward` (the actor's objective) is anchored and, for an
    explicit ensemble, a lower confidence bound over its critics.

    SB3's ``TD3.train`` (DDPG is a TD3) uses ``q1_forward`` only in the actor loss
    ``-q1_forward(s, mu(s)).mean()``; the critic's own loss and the TD targets call
    ``forward``, which is unchanged. So the critics still fit the true returns and the actor
    maximises ``J(s, mu(s)) - c ||mu(s)||^2``, a pull towards ``a = 0`` (the residual
    action's prior) that the critic's action gradient must overcome, where ``J`` is SB3's
    first critic, or with ``ensemble`` the mean minus ``pessimism`` times the standard
    deviation (over the critics, population form) of all ``n_critics`` critics. ``c = 0``
    without ``ensemble``: SB3's critic exactly.
    """

    def __init__(
        self,
        *args: Any,
        prior_anchor: float = 0.0,
        ensemble: bool = False,
        pessimism: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.prior_anchor = float(prior_anchor)
        self.ensemble = bool(ensemble)
        self.pessimism = float(pessimism)

    def q1_forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.ensemble:
            qs = torch.cat(self(obs, actions), dim=1)  # (batch, n_critics)
            q = qs.mean(dim=1, keepdim=True)
            if self.pessimism > 0:
                q = q - self.pessimism * qs.std(dim=1, correction=0, keepdim=True)
        else:
            q = super().q1_forward(obs, actions)
        if self.prior_anchor == 0.0:
            return q
        return q - self.prior_anchor * actions.pow(2).sum(dim=1, keepdim=True)


class AnchoredPolicy(TD3Policy):
    """SB3's TD3/DDPG policy with an :class:`AnchoredCritic` (policy kwargs ``prior_anchor``,
    ``ensemble``, ``pessimism``).

    A policy class, so SB3's save/load rebuilds it with its anchor (``policy_kwargs``).
    """

    def __init__(
        self,
        *args: Any,
        prior_anchor: float = 0.0,
        ensemble: bool = False,
        pessimism: float = 0.0,
        **kwargs: Any,
    ) -> None:
        # read by make_critic, during super().__init__
        self.prior_anchor = float(prior_anchor)
        self.ensemble = bool(ensemble)
        self.pessimism = float(pessimism)
        super().__init__(*args, **kwargs)

    def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return AnchoredCritic(
            **kwargs,
            prior_anchor=self.prior_anchor,
            ensemble=self.ensemble,
            pessimism=self.pessimism,
        ).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            prior_anchor=self.prior_anchor, ensemble=self.ensemble, pessimism=self.pessimism
        )
        return data


class FrozenActorPolicy(AnchoredPolicy):
    """TD3/DDPG policy whose actor never changes: its parameters do not require gradients.

    SB3 still computes the actor loss, but ``actor.optimizer.step()`` skips parameters without
    gradients, and the Polyak update then keeps ``actor_target == actor``. A policy class (not a
    flag) so that the property survives SB3 save/load, which rebuilds the policy from its class.
    """

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        for p in self.actor.parameters():
            p.requires_grad_(False)


def _check_env_spaces(env: Any) -> int:
    space = env.action_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise AgentError(f"the agent needs a 1-D Box action space, got {space}")
    if not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
        raise AgentError("the action space must be Box(-1, 1, (k,)) (METHOD.md, Action)")
    if not isinstance(env.observation_space, spaces.Box):
        raise AgentError(f"the agent needs a Box observation space, got {env.observation_space}")
    return int(space.shape[0])


def make_agent(env: Any, config: AgentConfig | None = None) -> Agent:
    """An SB3 ``DDPG`` or ``TD3`` on ``env`` (any gymnasium env with Box(-1, 1, (k,)) actions)."""
    config = config or small()
    k = _check_env_spaces(env)
    cls = DDPG if config.algorithm == "ddpg" else TD3
    policy = FrozenActorPolicy if config.frozen_actor else AnchoredPolicy
    net_arch = {"pi": list(config.net_arch), "qf": list(config.critic_arch or config.net_arch)}
    anchor = float(config.prior_anchor or 0.0)
    ensemble: dict[str, Any] = {}
    if config.critics is not None:  # an explicit ensemble: the actor follows all of them
        ensemble = {
            "n_critics": int(config.critics),
            "ensemble": True,
            "pessimism": float(config.pessimism),
        }
    noise = (
        NormalActionNoise(np.zeros(k), np.full(k, config.noise_sigma))
        if config.noise_sigma > 0
        else None
    )
    agent = cls(
        policy,
        env,
        learning_rate=config.learning_rate,
        buffer_size=config.buffer_size,
        learning_starts=config.learning_starts,
        batch_size=config.batch_size,
        tau=config.tau,
        gamma=config.gamma,
        train_freq=config.train_freq,
        gradient_steps=config.gradient_steps,
        action_noise=noise,
        seed=config.seed,
        device=config.device,
        policy_kwargs={
            "net_arch": net_arch,
            "activation_fn": _ACTIVATIONS[config.activation],
            "prior_anchor": anchor,
            **ensemble,
        },
    )
    if config.zero_init_actor:
        zero_last_layer(agent)
    return agent


def residual_agent_defaults(config: AgentConfig, residual: bool) -> AgentConfig:
    """``config`` with its ``None`` settings decided by the action: under the residual action
    (``a = 0`` is the prior) the actor starts at zero and is anchored to it
    (:data:`V1_PRIOR_ANCHOR`); under the softmax action neither."""
    if config.zero_init_actor is None:
        config = replace(config, zero_init_actor=residual)
    if config.prior_anchor is None:
        config = replace(config, prior_anchor=V1_PRIOR_ANCHOR if residual else 0.0)
    return config


def zero_last_layer(agent: Agent) -> None:
    """Zero the weights and bias of the actor's output layer (``actor.mu[-2]``, the Linear
    before the tanh), in the actor and its target: the untrained policy then outputs 0.

    SB3 copies the actor into ``actor_target`` when it builds the policy, i.e. before this
    runs, so the target is synced here again (else the first TD targets would use the
    random output layer).
    """
    last = agent.actor.mu[-2]
    if not isinstance(last, torch.nn.Linear):
        raise AgentError(f"the actor's output layer is {type(last).__name__}, not a Linear")
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    agent.actor_target.load_state_dict(agent.actor.state_dict())


# ----------------------------------------------------------------------------- warm-up


@dataclass(frozen=True)
class Transition:
    """One env step as the replay buffer stores it (one env, unbatched arrays)."""

    obs: np.ndarray
    action: np.ndarray  # in [-1, 1]^k, the buffer's (scaled) action
    reward: float
    next_obs: np.ndarray  # the true next observation, also at the end of an episode
    terminated: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class WarmupResult:
    """What :func:`warmup` did: transitions added, final pre-fit losses (None: not run)."""

    transitions: int
    bc_loss: float | None = None
    critic_loss: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def fill_replay_buffer(agent: Agent, transitions: Any) -> int:
    """Add ``transitions`` (an iterable of :class:`Transition`) to ``agent.replay_buffer``.

    Follows SB3's conventions: ``done = terminated or truncated``, and a truncation is flagged
    as ``TimeLimit.truncated`` so the buffer bootstraps through it. Returns the count added.
    """
    rb = agent.replay_buffer
    if rb is None or rb.n_envs != 1:
        raise AgentError("fill_replay_buffer needs an agent with a single-env replay buffer")
    n = 0
    for t in transitions:
        done = bool(t.terminated or t.truncated)
        info = {"TimeLimit.truncated": bool(t.truncated and not t.terminated)}
        rb.add(
            np.asarray(t.obs)[None],
            np.asarray(t.next_obs)[None],
            np.asarray(t.action, dtype=np.float32)[None],
            np.array([t.reward], np.float32),
            np.array([done]),
            [info],
        )
        n += 1
    return n


def warmup(
    agent: Agent,
    expert: Expert,
    steps: int,
    *,
    bc_steps: int = 300,
    critic_steps: int = 300,
    on_step: Callable[[Transition, dict[str, Any]], None] | None = None,
    vectorized: bool = False,
) -> WarmupResult:
    """Run ``expert`` (obs -> action in [-1, 1]^k) for ``steps`` env steps through the agent's own
    env, add every transition to the replay buffer, then pre-fit (METHOD.md, "The agent").

    * The steps count as the agent's timesteps and continue the same episode: call
      :func:`continue_learning` (``reset_num_timesteps=False``) afterwards, never plain
      ``agent.learn`` (which would reset the env, i.e. start a new LM run).
    * ``agent.learning_starts`` is set to the step count, so learning starts at the next step
      and SB3 never takes uniform-random actions.
    * Behaviour cloning: ``bc_steps`` Adam steps of MSE(actor(obs), expert action) on the
      warm-up transitions, then ``actor_target <- actor``. Skipped with ``frozen_actor``.
    * Critic: ``critic_steps`` TD(0) regressions ``Q(s, a) -> r + gamma (1 - done)
      Q'(s', mu'(s'))`` on the same transitions, hard-syncing the target critic every 50 steps
      (the run's tau would leave it at its random init) and once at the end.

    ``on_step(transition, info)`` lets a stateful expert (an ODM bandit) see each step's outcome;
    an expert that outputs weights is wrapped with ``lambda obs: weights_to_action(w, beta, eps)``.

    With ``n`` envs (a vector env), ``vectorized=True``: ``expert(obs)`` maps the ``(n, obs)``
    batch to ``(n, k)`` actions, each round adds ``n`` transitions (``steps`` is rounded up
    to a multiple of ``n``) and ``on_step`` sees them in env order.
    """
    if steps <= 0:
        raise AgentError(f"warm-up steps must be > 0, got {steps}")
    env = agent.get_env()
    if env is None or (env.num_envs != 1 and not vectorized):
        raise AgentError("warm-up needs the agent's env with exactly one environment")
    n = env.num_envs
    obs = np.asarray(agent._last_obs if agent._last_obs is not None else env.reset())
    done_flags = np.zeros(n, dtype=bool)
    collected: list[Transition] = []
    for _ in range(-(-steps // n)):
        raw = expert(obs) if vectorized else np.asarray(expert(obs[0]))[None]
        actions = np.clip(np.asarray(raw, np.float32).reshape(n, -1), -1.0, 1.0)
        stepped, rewards, done_flags, infos = env.step(actions)
        new_obs = np.asarray(stepped)
        ts = [
            _transition(obs[i], actions[i], rewards[i], new_obs[i], done_flags[i], infos[i])
            for i in range(n)
        ]
        if n == 1:
            fill_replay_buffer(agent, ts)
        else:
            _add_round(agent, ts)
        collected.extend(ts)
        if on_step is not None:
            for t, info in zip(ts, infos, strict=True):
                on_step(t, info)
        agent.num_timesteps += n
        obs = new_obs
    agent._last_obs = obs
    agent._last_episode_starts = done_flags
    agent.learning_starts = agent.num_timesteps
    return _prefit(agent, collected, bc_steps, critic_steps)


def _transition(
    obs: np.ndarray, action: np.ndarray, reward: Any, new_obs: np.ndarray, done: Any, info: Any
) -> Transition:
    """One env's transition of a vector step (the true next observation at an episode end)."""
    next_obs = np.asarray(info.get("terminal_observation", new_obs)) if done else new_obs
    truncated = bool(info.get("TimeLimit.truncated", False))
    return Transition(
        obs.copy(),
        action,
        float(reward),
        np.array(next_obs),
        terminated=bool(done) and not truncated,
        truncated=truncated,
    )


def _add_round(agent: Agent, ts: list[Transition]) -> None:
    """Add one vector step (one transition per env, in env order) to an n-env buffer."""
    rb = agent.replay_buffer
    if rb is None or rb.n_envs != len(ts):
        raise AgentError(f"the replay buffer holds {rb and rb.n_envs} envs, not {len(ts)}")
    rb.add(
        np.stack([t.obs for t in ts]),
        np.stack([t.next_obs for t in ts]),
        np.stack([np.asarray(t.action, np.float32) for t in ts]),
        np.array([t.reward for t in ts], np.float32),
        np.array([t.terminated or t.truncated for t in ts]),
        [{"TimeLimit.truncated": bool(t.truncated and not t.terminated)} for t in ts],
    )


def _prefit(agent: Agent, data: list[Transition], bc_steps: int, critic_steps: int) -> WarmupResult:
    notes: list[str] = []
    bc_loss = critic_loss = None
    if bc_steps > 0 and isinstance(agent.policy, FrozenActorPolicy):
        notes.append("behaviour cloning skipped: frozen_actor keeps the actor at its random init")
    elif bc_steps > 0:
        bc_loss = fit_actor_to_buffer(agent, data, bc_steps)
    if critic_steps > 0:
        critic_loss = fit_critic_to_buffer(agent, data, critic_steps)
    return WarmupResult(len(data), bc_loss, critic_loss, tuple(notes))


def _stack(agent: Agent, data: list[Transition]) -> dict[str, torch.Tensor]:
    dev = agent.device

    def col(xs: list[Any]) -> torch.Tensor:
        return torch.as_tensor(np.asarray(xs, dtype=np.float32), device=dev)

    return {
        "obs": col([t.obs for t in data]),
        "act": col([t.action for t in data]),
        "rew": col([[t.reward] for t in data]),
        "next": col([t.next_obs for t in data]),
        "done": col([[float(t.terminated)] for t in data]),
    }


def _batches(n: int, batch: int, steps: int, seed: int | None) -> Any:
    gen = torch.Generator().manual_seed(0 if seed is None else seed)
    for _ in range(steps):
        yield torch.randint(0, n, (min(batch, n),), generator=gen)


def fit_actor_to_buffer(agent: Agent, data: list[Transition], steps: int) -> float:
    """Behaviour cloning: MSE between ``actor(obs)`` and the expert's actions, with the actor's
    own Adam; then ``actor_target <- actor``. Returns the last minibatch loss."""
    d = _stack(agent, data)
    agent.policy.set_training_mode(True)
    loss = torch.zeros(())
    for idx in _batches(len(data), agent.batch_size, steps, agent.seed):
        loss = F.mse_loss(agent.actor(d["obs"][idx]), d["act"][idx])
        agent.actor.optimizer.zero_grad()
        loss.backward()
        agent.actor.optimizer.step()
    polyak_update(agent.actor.parameters(), agent.actor_target.parameters(), 1.0)
    agent.policy.set_training_mode(False)
    return float(loss.item())


def fit_critic_to_buffer(
    agent: Agent, data: list[Transition], steps: int, sync_every: int = 50
) -> float:
    """TD(0) regression of the critic(s) on ``data`` (SB3's loss, no target-policy noise);
    the target critic is hard-synced every ``sync_every`` steps and at the end."""
    d = _stack(agent, data)
    agent.policy.set_training_mode(True)
    loss = torch.zeros(())
    for i, idx in enumerate(_batches(len(data), agent.batch_size, steps, agent.seed)):
        with torch.no_grad():
            nxt = (
                torch.cat(
                    agent.critic_target(d["next"][idx], agent.actor_target(d["next"][idx])), dim=1
                )
                .min(dim=1, keepdim=True)
                .values
            )
            target = d["rew"][idx] + (1.0 - d["done"][idx]) * agent.gamma * nxt
        qs = agent.critic(d["obs"][idx], d["act"][idx])
        loss = sum((F.mse_loss(q, target) for q in qs), torch.zeros(()))
        agent.critic.optimizer.zero_grad()
        loss.backward()
        agent.critic.optimizer.step()
        if (i + 1) % sync_every == 0:
            polyak_update(agent.critic.parameters(), agent.critic_target.parameters(), 1.0)
    polyak_update(agent.critic.parameters(), agent.critic_target.parameters(), 1.0)
    agent.policy.set_training_mode(False)
    return float(loss.item())


def continue_learning(
    agent: Agent, total_timesteps: int, callback: Any = None, log_interval: int = 1
) -> Agent:
    """Learn until ``agent.num_timesteps == total_timesteps``, continuing the current episode,
    the timestep count and the buffer (after :func:`warmup` or :func:`load_agent`)."""
    remaining = int(total_timesteps) - int(agent.num_timesteps)
    if remaining > 0:
        agent.learn(
            remaining, callback=callback, reset_num_timesteps=False, log_interval=log_interval
        )
    return agent


# ----------------------------------------------------------------------------- logging, checkpoints

CHECKPOINT_FORMAT = "acodm-agent-checkpoint"
AGENT_FILE = "agent.zip"  # SB3 pickle
BUFFER_FILE = "replay_buffer.pkl"  # SB3 pickle
PICKLE_FILES = (AGENT_FILE, BUFFER_FILE)  # the files trust.verify checks before loading
RESUME_FILE = "resume.json"  # global RNGs (numpy, python), SB3 logger values, Monitor episode
TORCH_RNG_FILE = "rng.safetensors"  # the global torch CPU RNG state
StateWriter = Callable[[Path], None]


def save_checkpoint(
    agent: Agent, folder: str | Path, write_state: StateWriter | None = None
) -> Path:
    """Write ``agent.zip`` + ``replay_buffer.pkl`` + ``checkpoint.json`` into ``folder``,
    atomically (built under a temporary name, then renamed over the previous checkpoint).

    Also ``actor.safetensors`` + ``actor.json``: the actor alone, pickle-free, which
    ``acodm export`` reads (:func:`acodm.policies.train.export_from_checkpoint`); and in
    ``checkpoint.json`` a ``signature`` of the two pickle files under this user's key
    (:func:`acodm.trust.sign`), which :func:`load_agent` checks before unpickling them.

    Also written, for :func:`load_agent` with ``exact=True``: ``resume.json`` (the global numpy
    and python RNG states that SB3 draws exploration noise and replay minibatches from, the SB3
    logger's pending values, the Monitor's current episode) and ``rng.safetensors`` (the global
    torch RNG). ``write_state(tmp_folder)`` adds the env's own state (e.g. the LM run) to the
    same atomic folder, so agent and env are always saved together.

    Pickle inside (SB3 formats): for resuming one's own runs only, never for sharing.
    """
    rb = agent.replay_buffer
    meta = {
        "format": CHECKPOINT_FORMAT,
        "algorithm": _algorithm(agent),
        "num_timesteps": int(agent.num_timesteps),
        "buffer_size": int(rb.size() * rb.n_envs if rb else 0),  # transitions, all envs
        "env_state": write_state is not None,
        "note": "SB3 pickle formats: resume your own runs only; share policies with "
        "export_actor (safetensors + JSON)",
    }
    with atomic_directory(folder, overwrite=True) as tmp:
        agent.save(tmp / AGENT_FILE)  # holds _last_obs, _episode_num, ... (SB3's own pickle)
        agent.save_replay_buffer(tmp / BUFFER_FILE)
        meta["signature"] = trust.sign({n: sha256_file(tmp / n) for n in PICKLE_FILES})
        write_checkpoint_actor(
            actor_parts(agent),
            tmp,
            algorithm=meta["algorithm"],
            num_timesteps=meta["num_timesteps"],
        )
        (tmp / RESUME_FILE).write_text(json.dumps(_resume_state(agent)) + "\n")
        save_file({"torch_cpu": torch.get_rng_state()}, str(tmp / TORCH_RNG_FILE))
        if write_state is not None:
            write_state(tmp)
        (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Path(folder)


def _monitor(agent: Agent) -> Monitor | None:
    venv = agent.get_env()
    env = getattr(venv, "envs", [None])[0] if venv is not None else None
    while env is not None and not isinstance(env, Monitor):
        env = getattr(env, "env", None)
    return env


def _resume_state(agent: Agent) -> dict[str, Any]:
    """JSON state that :func:`load_agent` (``exact=True``) restores besides SB3's own files."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    logger = getattr(agent, "_logger", None)
    monitor = _monitor(agent)
    return {
        "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
        "logger": None
        if logger is None
        else {
            "values": {k: _number(v) for k, v in logger.name_to_value.items()},
            "counts": dict(logger.name_to_count),
            "excluded": {k: list(v) for k, v in logger.name_to_excluded.items()},
        },
        "monitor": None
        if monitor is None
        else {"needs_reset": monitor.needs_reset, "rewards": list(monitor.rewards)},
        **_vector_monitors(agent),
    }


def _vector_monitors(agent: Agent) -> dict[str, Any]:
    """The Monitor episodes of a vector env of several envs (in other processes: read through
    the VecEnv; each env must be ``Monitor``-wrapped outermost); {} for one env."""
    venv = agent.get_env()
    if venv is None or venv.num_envs == 1:
        return {}
    needs_reset = venv.get_attr("needs_reset")
    rewards = venv.get_attr("rewards")
    return {
        "monitors": [
            {"needs_reset": bool(n), "rewards": [float(r) for r in rs]}
            for n, rs in zip(needs_reset, rewards, strict=True)
        ]
    }


def _number(v: Any) -> Any:
    return int(v) if isinstance(v, int | np.integer) else float(v)


def _restore_resume_state(agent: Agent, folder: Path) -> None:
    try:
        state = json.loads((folder / RESUME_FILE).read_text())
        torch_rng = load_file(str(folder / TORCH_RNG_FILE))["torch_cpu"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as e:
        raise AgentError(f"{folder} has no exact-resume state ({e})") from e
    log = state["logger"]
    if log is not None:  # pending values: the next step's metrics read rl/*_loss from them
        logger = Logger(folder=None, output_formats=[])
        logger.name_to_value.update(log["values"])
        logger.name_to_count.update(log["counts"])
        logger.name_to_excluded.update({k: tuple(v) for k, v in log["excluded"].items()})
        agent.set_logger(logger)
    monitor = _monitor(agent)
    if monitor is not None and state["monitor"] is not None:
        monitor.needs_reset = bool(state["monitor"]["needs_reset"])
        monitor.rewards = [float(r) for r in state["monitor"]["rewards"]]
    venv = agent.get_env()
    for i, m in enumerate(state.get("monitors", [])):
        assert venv is not None
        venv.set_attr("needs_reset", bool(m["needs_reset"]), indices=i)
        venv.set_attr("rewards", [float(r) for r in m["rewards"]], indices=i)
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(torch_rng)


def _algorithm(agent: Agent) -> str:
    return "ddpg" if isinstance(agent, DDPG) else "td3"  # DDPG subclasses TD3: test it first


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "checkpoint.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as e:
        raise AgentError(f"{folder} is not an agent checkpoint ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise AgentError(f"{folder}/checkpoint.json is not an acodm agent checkpoint")
    return meta


def _read_pickle_files(folder: Path, meta: dict[str, Any], trust_pickle: bool) -> dict[str, bytes]:
    """The bytes of the pickle files, read once; verified unless ``trust_pickle`` (so the bytes
    checked are the bytes unpickled: no file swap between check and load)."""
    try:
        blobs = {name: (folder / name).read_bytes() for name in PICKLE_FILES}
    except FileNotFoundError as e:
        raise AgentError(f"{folder} is an incomplete agent checkpoint ({e})") from e
    if not trust_pickle:
        hashes = {name: sha256_bytes(blob) for name, blob in blobs.items()}
        trust.verify(meta.get("signature"), hashes, folder)
    return blobs


def verify_checkpoint(folder: str | Path) -> None:
    """Raise :class:`acodm.trust.TrustError` unless this user's acodm wrote the checkpoint's
    pickle files (see :mod:`acodm.trust`); reads JSON and hashes files, unpickles nothing."""
    folder = Path(folder)
    meta = _read_meta(folder)
    try:
        hashes = {name: sha256_file(folder / name) for name in PICKLE_FILES}
    except FileNotFoundError as e:
        raise AgentError(f"{folder} is an incomplete agent checkpoint ({e})") from e
    trust.verify(meta.get("signature"), hashes, folder)


def load_agent(
    folder: str | Path,
    env: Any,
    device: str = "cpu",
    *,
    exact: bool = False,
    trust_pickle: bool = False,
) -> Agent:
    """Resume from :func:`save_checkpoint`: agent, optimizers, timestep count and replay buffer.

    Loads pickle (SB3's format), so only a checkpoint that this user's acodm wrote: its
    signature (:mod:`acodm.trust`) is checked on the bytes before they are unpickled, and a
    foreign, unsigned (older acodm) or modified checkpoint is a :class:`~acodm.trust.TrustError`
    unless ``trust_pickle=True`` (you trust whoever made the folder: its files may run code).
    Default: the env is reset at the next ``learn`` (its state is not in the checkpoint).
    ``exact=True``: the caller has restored ``env`` to the checkpoint's state (``write_state``
    of :func:`save_checkpoint`); the agent keeps its last observation (no reset), and the
    global RNGs, logger values and Monitor episode are restored last, so that
    :func:`continue_learning` repeats the uninterrupted run bit for bit on CPU.
    """
    folder = Path(folder)
    meta = _read_meta(folder)
    blobs = _read_pickle_files(folder, meta, trust_pickle)
    cls = DDPG if meta["algorithm"] == "ddpg" else TD3
    # force_reset=False keeps the saved _last_obs / _last_episode_starts: no env reset at the
    # next learn. Loading reseeds the global RNGs (SB3's set_random_seed): restored after.
    agent = cls.load(io.BytesIO(blobs[AGENT_FILE]), env=env, device=device, force_reset=not exact)
    agent.load_replay_buffer(io.BytesIO(blobs[BUFFER_FILE]))
    if exact:
        _restore_resume_state(agent, folder)
    else:
        agent._last_obs = None  # force an env reset at the next learn (set_env does the same)
    return agent


UpdateFn = Callable[[dict[str, float]], None]


def episode_metrics(info: dict[str, Any]) -> dict[str, Any]:
    """``rl/episode/return`` and ``rl/episode/length`` when ``info`` ends an episode.

    SB3's ``Monitor`` adds ``info["episode"]`` (return ``r``, length ``l`` in env steps, wall
    time ``t``, left out: it differs between equal runs) to an episode's last step. Its running
    sum is part of an exact-resume checkpoint, so a resumed run logs the same returns.
    """
    episode = info.get("episode")
    if episode is None:
        return {}
    return {"rl/episode/return": float(episode["r"]), "rl/episode/length": int(episode["l"])}


class UpdateLogger(Logger):
    """SB3's logger, without outputs, that also reports every ``train()`` call's losses.

    SB3's ``TD3.train`` (DDPG is a TD3) runs ``gradient_steps`` updates on replay minibatches,
    then records ``train/n_updates``, ``train/actor_loss`` (when the actor was updated: DDPG
    every update, TD3 every ``policy_delay``) and last ``train/critic_loss``, each the mean over
    that call's updates (stable-baselines3 2.x, ``td3/td3.py``). Those values are overwritten
    by the next call and cleared at each dump, so a callback reading ``name_to_value`` sees only
    some of them; this logger hands each call's values to ``on_update`` as they are recorded:
    ``{"n_updates": ..., "critic_loss": ..., "actor_loss": ...}`` (``actor_loss`` only when
    recorded in that call). The critic loss is the mean squared TD error
    ``(Q(s, a) - r - gamma (1 - done) Q'(s', mu'(s')))^2`` of the minibatches; SB3 records
    its sum over the critics, divided here by their number (``critics``), so an ensemble's
    curve reads like one critic's.
    """

    def __init__(self, on_update: UpdateFn | None = None, critics: int = 1) -> None:
        super().__init__(folder=None, output_formats=[])
        self.on_update = on_update
        self.critics = max(1, int(critics))
        self._pending: dict[str, float] | None = None

    def record(self, key: str, value: Any, exclude: str | tuple[str, ...] | None = None) -> None:
        super().record(key, value, exclude)
        if key == "train/n_updates":  # recorded first by TD3.train
            self._pending = {"n_updates": int(value)}
        elif key == "train/actor_loss" and self._pending is not None:
            self._pending["actor_loss"] = float(value)
        elif key == "train/critic_loss" and self._pending is not None:  # recorded last
            self._pending["critic_loss"] = float(value) / self.critics
            if self.on_update is not None:
                self.on_update(self._pending)
            self._pending = None


def log_updates(agent: Agent, on_update: UpdateFn) -> UpdateLogger:
    """Give ``agent`` an :class:`UpdateLogger` calling ``on_update`` after every ``train()``.

    Keeps the pending values of the agent's current logger (a resumed run's, restored by
    :func:`load_agent`), so metrics that read them are unchanged. Call before learning; SB3
    then keeps this logger (``set_logger`` marks it custom) instead of making its own.
    """
    logger = UpdateLogger(on_update, critics=int(getattr(agent.critic, "n_critics", 1)))
    old = getattr(agent, "_logger", None)
    if old is not None:
        logger.name_to_value.update(old.name_to_value)
        logger.name_to_count.update(old.name_to_count)
        logger.name_to_excluded.update(old.name_to_excluded)
    agent.set_logger(logger)
    return logger


class MixingCallback(BaseCallback):
    """Logs every ``log_every`` env steps and checkpoints every ``checkpoint_every`` steps.

    ``log(metrics, step)`` receives ``rl/reward``, ``rl/action/<domain>``, ``mix/weight/<domain>``
    (when ``beta``/``eps`` are given), ``rl/episode/return`` and ``rl/episode/length`` at an
    episode's last step (:func:`episode_metrics`) and ``rl/actor_loss``/``rl/critic_loss``
    (SB3's latest values from ``agent.logger.name_to_value``, once training has started);
    ``step`` is the agent's timestep (with several envs, one call per env, numbered by
    transition). ``acodm.metrics.MetricsLogger.log`` fits.

    Checkpoints are written at the start of a rollout, i.e. after the previous step was stored
    *and* trained on, so a resumed run repeats nothing; and once more at the end of training.
    ``write_state(folder)`` adds the env's state to each checkpoint (:func:`save_checkpoint`).
    """

    def __init__(
        self,
        log: LogFn | None = None,
        *,
        domains: list[str] | None = None,
        beta: float | None = None,
        eps: float | None = None,
        log_every: int = 1,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 0,
        write_state: StateWriter | None = None,
    ) -> None:
        super().__init__()
        self.write_state = write_state
        self._log, self.domains, self.beta, self.eps = log, domains, beta, eps
        self.log_every, self.checkpoint_every = max(1, log_every), checkpoint_every
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._last_saved = -1

    def _on_training_start(self) -> None:
        self._last_saved = int(self.num_timesteps)  # a resumed run's start is already saved

    def _on_step(self) -> bool:
        if self._log is None:
            return True
        n_envs = len(self.locals["infos"])
        first = int(self.num_timesteps) - n_envs  # the transitions of this vector step
        for i in range(n_envs):
            if (first + i + 1) % self.log_every == 0:
                self._log(self._metrics(i), first + i + 1)
        return True

    def _metrics(self, i: int = 0) -> dict[str, Any]:
        """Env ``i``'s transition of this step (one line per env: its ``step`` is the
        transition's count, ``num_timesteps - n_envs + i + 1``)."""
        action = np.asarray(self.locals["actions"])[i]
        names = self.domains or [str(j) for j in range(len(action))]
        out: dict[str, Any] = {"rl/reward": float(np.asarray(self.locals["rewards"])[i])}
        out.update({f"rl/action/{n}": float(a) for n, a in zip(names, action, strict=True)})
        out.update(episode_metrics(self.locals["infos"][i]))
        if self.beta is not None and self.eps is not None:
            w = action_to_weights(action, self.beta, self.eps)
            out.update({f"mix/weight/{n}": float(x) for n, x in zip(names, w, strict=True)})
        values = self.model.logger.name_to_value
        critics = int(getattr(self.model.critic, "n_critics", 1))  # type: ignore[attr-defined]
        for key, per in (("actor_loss", 1), ("critic_loss", critics)):
            if f"train/{key}" in values:  # SB3 sums the critics' losses: one critic's mean
                out[f"rl/{key}"] = float(values[f"train/{key}"]) / per
        return out

    def _on_rollout_start(self) -> None:
        n = int(self.num_timesteps)
        if self.checkpoint_every > 0 and n > 0 and n % self.checkpoint_every == 0:
            self._save()

    def _on_training_end(self) -> None:
        if self.checkpoint_dir is not None:
            self._save()

    def _save(self) -> None:
        if self.checkpoint_dir is None or self._last_saved == self.num_timesteps:
            return
        save_checkpoint(self.model, self.checkpoint_dir, self.write_state)  # type: ignore[arg-type]
        self._last_saved = int(self.num_timesteps)
