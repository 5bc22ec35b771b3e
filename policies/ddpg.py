"""Non-proxy mode (METHOD.md): the mixer ``ddpg`` learns the mixing policy on the target run.

:class:`OnlineDDPGMixer` is an acodm :class:`~acodm.mixers.base.Mixer` that owns an SB3 agent:
after every interval it turns the run's own dynamics into an observation and the reward of the
weights it chose (:func:`acodm.spaces.transition`, the env's own step), adds the
transition to the replay buffer and trains, then acts. The warm-up follows the ODM bandit, as
proxy mode does (:mod:`acodm.policies.train`). Importing this module registers the name
``ddpg``; ``make_mixer("ddpg")`` imports it on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.logger import Logger

from acodm.mixers import IntervalFeedback, Mixer, MixerContext, MixerError, make_mixer
from acodm.mixers.base import format_number
from acodm.mixers.spec import parse_number, parse_options, register_mixer
from acodm.policies.agent import (
    ODM_EXPERT,
    Agent,
    AgentConfig,
    AgentError,
    Transition,
    fill_replay_buffer,
    fit_actor_to_buffer,
    fit_critic_to_buffer,
    make_agent,
    residual_agent_defaults,
    small,
    warmup_count,
)
from acodm.spaces import (
    CONSOLE_FEATURES,
    DEFAULT_FEATURES,
    DEFAULT_PROBE_WINDOWS,
    REWARDS,
    ActionMapping,
    ObservationSpec,
    ProbeTracker,
    RewardTerm,
    SpaceError,
    build_observation,
    console_reward_terms,
    transition,
    with_probe,
)

if TYPE_CHECKING:
    import torch

    from acodm.dynamics.features import Dynamics

__all__ = ["OnlineDDPGMixer"]


class _SpacesOnlyEnv(gym.Env[np.ndarray, np.ndarray]):
    """Carries the spaces SB3 needs to build the agent; never stepped (the mixer feeds the
    replay buffer by hand)."""

    def __init__(self, obs_space: spaces.Box, action_space: spaces.Box) -> None:
        self.observation_space, self.action_space = obs_space, action_space

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        raise AgentError("the online DDPG mixer's agent is trained by hand, not by learn()")

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        raise AgentError("the online DDPG mixer's agent is trained by hand, not by learn()")


class OnlineDDPGMixer(Mixer):
    """``ddpg[:warmup=F,seed=N,beta=B,eps=E,action=A,prior=P,max_epochs=M,reward=R,
    probe_windows=N]``: non-proxy mode (METHOD.md), the agent learns on the target run itself.

    ``reward``: ``alignment`` (default, the paper's) or ``probe``: the env's probe reward
    (:func:`~acodm.spaces.probe_reward`) on ``probe_windows`` (default 4) fixed windows
    per domain of the store's reward split, which :func:`acodm.pretrain.pretrain` measures
    after every interval for this mixer (:attr:`Mixer.probe_windows`); the store needs a
    reward split (``acodm prepare --reward-fraction``).

    ``action``: ``softmax`` (default; ``beta`` 1, ``eps`` 0.15) or ``residual`` (around the
    run's ``prior``, default ``auto``: UniMax at ``max_epochs``; ``beta`` ln 4; the actor's
    output layer zero-initialised, so the mixer starts at the prior); ``max_epochs``: the
    epoch cap its weights are projected onto (from the run's live epochs and remaining
    budget), as :class:`~acodm.spaces.ActionMapping` does in the env. A mixer does not
    see ``TrainConfig.max_epochs``: with a capped run, give the mixer the same ``max_epochs``,
    so that its reward is of the weights the trainer runs (the trainer's own projection of
    weights already within the caps is then the identity).

    After every interval: observation and reward of the weights just used from the run's own
    dynamics by :func:`~acodm.spaces.transition` (the env's feature spec and reward),
    one transition into the replay buffer, then ``gradient_steps``
    SB3 updates. The first ``warmup`` fraction of the intervals (at least one) follows the ODM
    bandit, then the actor/critic are pre-fitted on those transitions, as in proxy mode.
    Needs ``TrainConfig.dynamics=True``.

    Resume: ``state_dict`` (JSON: last observation/action, counters, the ODM expert, the
    global numpy RNG) plus ``tensor_state`` (actor/critic and their targets, both Adam states,
    the replay buffer's filled rows, the warm-up transitions, the torch RNG), which
    :func:`acodm.pretrain.pretrain` stores in the run checkpoint's ``extra.safetensors``; a
    resumed run equals the uninterrupted one on CPU. Limits: code that restores only
    ``load_state_dict`` (no ``load_tensor_state``) gets the last weights but a fresh agent.
    """

    name = "ddpg"
    OPTIONS = (
        "warmup",
        "seed",
        "beta",
        "eps",
        "action",
        "prior",
        "max_epochs",
        "reward",
        "probe_windows",
    )
    TEXT_OPTIONS = ("action", "prior", "reward")

    def __init__(
        self,
        warmup: float = 0.02,
        seed: int = 0,
        beta: float | None = None,
        eps: float | None = None,
        agent: AgentConfig | None = None,
        *,
        action: str = "softmax",
        prior: str | None = None,
        max_epochs: float | None = None,
        reward: str = "alignment",
        probe_windows: int = DEFAULT_PROBE_WINDOWS,
    ) -> None:
        super().__init__()
        if not 0.0 <= warmup <= 1.0:
            raise MixerError(f"ddpg warmup must be in [0, 1], got {warmup}")
        if reward not in REWARDS:
            raise MixerError(f"ddpg reward must be one of {REWARDS}, got {reward!r}")
        if int(probe_windows) != probe_windows or probe_windows < 1:
            raise MixerError(f"ddpg probe_windows must be an integer >= 1, got {probe_windows}")
        self.reward = reward
        self.probe_windows = int(probe_windows) if reward == "probe" else 0
        self.probe = ProbeTracker()
        try:
            self.mapping = ActionMapping.make(
                action, beta=beta, eps=eps, prior=prior, max_epochs=max_epochs
            )
        except SpaceError as e:
            raise MixerError(f"ddpg: {e}") from e
        self.warmup, self.seed = float(warmup), int(seed)
        self.beta, self.eps = self.mapping.beta, self.mapping.eps
        config = replace(agent or small(), seed=int(seed))
        config = residual_agent_defaults(config, self.mapping.residual)
        self.agent_config = config
        self.model: Agent | None = None

    @classmethod
    def from_spec_arg(cls, arg: str | None) -> Mixer:
        opts = parse_options(arg, cls.OPTIONS)
        kw: dict[str, Any] = {
            k: v if k in cls.TEXT_OPTIONS else parse_number(v, f"ddpg {k}") for k, v in opts.items()
        }
        if "seed" in kw:
            kw["seed"] = int(kw["seed"])
        return cls(**kw)

    def describe(self) -> str:
        m = self.mapping
        head = f"ddpg:warmup={format_number(self.warmup)},seed={self.seed},"
        if m.residual:
            text = f"{head}action=residual,beta={format_number(m.beta)},prior={m.prior}"
        else:
            text = f"{head}beta={format_number(m.beta)},eps={format_number(m.eps)}"
        if m.max_epochs is not None:
            text += f",max_epochs={format_number(m.max_epochs)}"
        if self.reward != "alignment":
            text += f",reward={self.reward},probe_windows={self.probe_windows}"
        return text

    def _prepare(self, ctx: MixerContext) -> None:
        self.odm = make_mixer(ODM_EXPERT)
        self.odm.setup(ctx)
        intervals = -(-ctx.total_steps // ctx.interval)
        self.warmup_updates = warmup_count(max(intervals - 1, 1), self.warmup)
        self.model = None
        self.spec: ObservationSpec | None = None
        self.transitions: list[Transition] = []  # the warm-up's, for the pre-fit
        self.updates = 0  # transitions learned from so far
        self._pending_agent: dict[str, Any] | None = None
        self._obs: np.ndarray | None = None
        self._action = np.zeros(ctx.k, dtype=np.float32)
        self.probe = ProbeTracker()
        self.prior = self.mapping.prior_weights(ctx) if self.mapping.residual else None
        self._w = self._map(self._action, np.zeros(ctx.k), 0, ctx)

    def _weights(self) -> np.ndarray:
        return np.asarray(self._w, dtype=np.float64)

    def _map(
        self, action: np.ndarray, epochs: np.ndarray, step: int, ctx: MixerContext | None = None
    ) -> np.ndarray:
        """The action's weights with the run's prior and its live caps (none without a cap)."""
        ctx = ctx or self.ctx
        caps = self.mapping.caps(ctx, epochs, step)
        return self.mapping.weights(action, self.prior, caps)

    def _agent(self, dyn: Dynamics) -> Agent:
        if self.model is None:
            # a run with the agent console also observes its features and rewards with them
            features = CONSOLE_FEATURES if dyn.agents else DEFAULT_FEATURES
            self._build_agent(ObservationSpec(features, self.ctx.k, len(dyn.weight_norm)))
        assert self.model is not None
        return self.model

    def _reward_terms(self) -> tuple[RewardTerm, ...]:
        assert self.spec is not None
        return console_reward_terms() if "mean_quality" in self.spec.features else ()

    def _build_agent(self, spec: ObservationSpec) -> Agent:
        self.spec = spec
        low, high = spec.bounds()
        stub = _SpacesOnlyEnv(
            spaces.Box(low, high, dtype=np.float32),
            spaces.Box(-1.0, 1.0, (self.ctx.k,), dtype=np.float32),
        )
        self.model = make_agent(stub, self.agent_config)
        self.model.set_logger(Logger(folder=None, output_formats=[]))
        return self.model

    def _update(self, feedback: IntervalFeedback) -> None:
        dyn = feedback.need_dynamics("the ddpg mixer")
        model = self._agent(dyn)
        assert self.spec is not None
        probe = None
        if self.reward == "probe":
            dyn, probe = self._probe(dyn)
        if self._obs is None:  # the first interval: nothing was chosen yet, so no reward
            obs = build_observation(dyn, self.spec)
        else:
            obs, reward, _ = transition(self._w, dyn, self.spec, self._reward_terms(), probe)
            self._learn(model, Transition(self._obs, self._action, float(reward), obs))
        self.odm.update(feedback)
        self._obs = obs
        self._action = self._next_action(model, obs)
        self._w = self._map(self._action, feedback.epochs, feedback.step)

    def _probe(self, dyn: Dynamics) -> tuple[Dynamics, float | None]:
        """The interval's probe reward (None at the first interval, which starts the tracker:
        ``L_0``) and ``dyn`` with the probe's features."""
        losses = dyn.probe_loss
        if losses is None:
            raise MixerError(
                "ddpg:reward=probe needs the probe of the reward split after every interval: "
                "run the mixer through acodm pretrain (which measures it for "
                "Mixer.probe_windows), or use reward=alignment"
            )
        if self._obs is None:
            self.probe.start(losses)
            return with_probe(dyn, losses, None), None
        previous = self.probe.losses
        step = self.probe.step(losses)
        return with_probe(dyn, losses, previous), step.reward

    def _learn(self, model: Agent, t: Transition) -> None:
        fill_replay_buffer(model, [t])
        model.num_timesteps += 1
        self.updates += 1
        if self.updates <= self.warmup_updates:
            self.transitions.append(t)
            if self.updates == self.warmup_updates:
                if not self.agent_config.frozen_actor:
                    fit_actor_to_buffer(model, self.transitions, 300)
                fit_critic_to_buffer(model, self.transitions, 300)
            return
        model.train(gradient_steps=model.gradient_steps, batch_size=model.batch_size)

    def _next_action(self, model: Agent, obs: np.ndarray) -> np.ndarray:
        if self.updates < self.warmup_updates:
            return self.mapping.action(self.odm.weights(), self.prior)
        action, _ = model.predict(obs, deterministic=True)
        noise = model.action_noise() if model.action_noise is not None else 0.0
        return np.clip(np.asarray(action, np.float32) + noise, -1.0, 1.0).astype(np.float32)

    # -- state: small values in JSON, networks/optimizers/buffer as tensors ------------------
    def _state(self) -> dict[str, Any]:
        model = self.model
        state: dict[str, Any] = {
            "weights": np.asarray(self._w).tolist(),
            "action": np.asarray(self._action, np.float64).tolist(),
            "obs": None if self._obs is None else np.asarray(self._obs, np.float64).tolist(),
            "updates": self.updates,
            "odm": self.odm.state_dict(),
            "agent": None,
        }
        if self.reward == "probe":  # the tracker's last losses and baseline, exactly
            state["probe"] = self.probe.to_dict()
        if model is not None and self.spec is not None:
            rb = model.replay_buffer
            assert rb is not None
            name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
            state["agent"] = {
                "n_layers": self.spec.n_layers,
                "features": list(self.spec.features),
                "num_timesteps": int(model.num_timesteps),
                "n_updates": int(model._n_updates),
                "buffer_pos": int(rb.pos),
                "buffer_full": bool(rb.full),
                # SB3 draws noise and minibatches from the global numpy RNG (METHOD: resume).
                "numpy_rng": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), cached],
            }
        return state

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self._w = np.asarray(state["weights"], np.float64)
        if "updates" not in state:  # a state of an older acodm: the last decision only
            return
        self._action = np.asarray(state["action"], np.float32)
        self._obs = None if state["obs"] is None else np.asarray(state["obs"], np.float32)
        self.updates = int(state["updates"])
        self.odm.load_state_dict(state["odm"])
        if self.reward == "probe":
            if "probe" not in state:
                raise MixerError(
                    "the ddpg mixer's saved state has no probe reward state: it was saved "
                    "with reward=alignment; resume with the same mixer spec"
                )
            self.probe = ProbeTracker.from_dict(state["probe"])
        self._pending_agent = state["agent"]  # built by load_tensor_state, from its tensors

    def tensor_state(self) -> dict[str, torch.Tensor]:
        import torch

        model = self.model
        if model is None:
            return {}
        out = {f"policy/{k}": v.detach().cpu() for k, v in model.policy.state_dict().items()}
        for name, opt in (("actor", model.actor.optimizer), ("critic", model.critic.optimizer)):
            for pid, st in opt.state_dict()["state"].items():
                out.update({f"opt/{name}/{pid}/{k}": v.detach().cpu() for k, v in st.items()})
        rb = model.replay_buffer
        assert rb is not None
        n = rb.buffer_size if rb.full else rb.pos
        for key in _BUFFER_ARRAYS:
            out[f"buffer/{key}"] = torch.from_numpy(np.ascontiguousarray(getattr(rb, key)[:n]))
        out["rng/torch_cpu"] = torch.get_rng_state()
        out.update(
            {f"warmup/{i}/{f}": v for i, t in enumerate(self.transitions) for f, v in _tensors(t)}
        )
        return out

    def load_tensor_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        import torch

        meta = getattr(self, "_pending_agent", None)
        self._pending_agent = None
        if meta is None:
            return
        features = tuple(meta.get("features", DEFAULT_FEATURES))
        spec = ObservationSpec(features, self.ctx.k, int(meta["n_layers"]))
        model = self._build_agent(spec)  # reseeds the global RNGs: restored below
        try:
            model.policy.load_state_dict(
                {k[len("policy/") :]: v for k, v in tensors.items() if k.startswith("policy/")}
            )
            for name, opt in (("actor", model.actor.optimizer), ("critic", model.critic.optimizer)):
                blank = opt.state_dict()
                prefix = f"opt/{name}/"
                st: dict[int, dict[str, torch.Tensor]] = {}
                for key, v in tensors.items():
                    if key.startswith(prefix):
                        pid, field_name = key[len(prefix) :].split("/", 1)
                        st.setdefault(int(pid), {})[field_name] = v
                opt.load_state_dict({"state": st, "param_groups": blank["param_groups"]})
            rb = model.replay_buffer
            assert rb is not None
            for key in _BUFFER_ARRAYS:
                data = tensors[f"buffer/{key}"].numpy()
                getattr(rb, key)[: len(data)] = data
            torch.set_rng_state(tensors["rng/torch_cpu"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise MixerError(f"the ddpg mixer's saved agent does not fit ({e})") from e
        rb.pos, rb.full = int(meta["buffer_pos"]), bool(meta["buffer_full"])
        model.num_timesteps, model._n_updates = int(meta["num_timesteps"]), int(meta["n_updates"])
        self.transitions = [
            Transition(
                *(tensors[f"warmup/{i}/{f}"].numpy() for f in ("obs", "action")),
                float(tensors[f"warmup/{i}/reward"]),
                tensors[f"warmup/{i}/next_obs"].numpy(),
            )
            for i in range(min(self.updates, self.warmup_updates))
        ]
        name, keys, pos, has_gauss, cached = meta["numpy_rng"]
        np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))


_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _tensors(t: Transition) -> list[tuple[str, torch.Tensor]]:
    import torch

    return [
        ("obs", torch.as_tensor(np.asarray(t.obs, np.float32))),
        ("action", torch.as_tensor(np.asarray(t.action, np.float32))),
        ("reward", torch.tensor(float(t.reward), dtype=torch.float64)),
        ("next_obs", torch.as_tensor(np.asarray(t.next_obs, np.float32))),
    ]


def _ddpg_factory(arg: str | None) -> Mixer:
    return OnlineDDPGMixer.from_spec_arg(arg)


register_mixer("ddpg", _ddpg_factory, replace=True)
