"""Several proxy runs at once for proxy-mode training: SB3 vector envs over DataMixingEnv.

:func:`make_proxy_vec_env` builds what :func:`acodm.policies.train.train_policy` hands the
agent: ``n`` copies of the env, each wrapped as ``Monitor(ProxyEnv(DataMixingEnv))``, in a
``DummyVecEnv`` for one env (in this process, so its LM run can be saved for an exact resume)
or a ``SubprocVecEnv`` for several (one process per proxy: CPU proxies run in parallel, each
with ``cpu_count // n`` torch threads). Env ``i`` is seeded ``seed + i`` by SB3 at the first
reset; every later run draws its seed from that env's own RNG, so runs are deterministic.

:class:`ProxyEnv` keeps what the trainer side needs inside the env's own process:

* the warm-up expert, an ODM bandit over the env's running LM (``expert_action``), updated
  with every interval's feedback and replaced at every new LM run (METHOD.md, "The agent");
* the interval's per-domain training losses, copied into the step's ``info``
  (``train_metrics``), which is all that crosses the process boundary.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from acodm.envs import DataMixingEnv, EnvError
from acodm.mixers import Mixer, make_mixer
from acodm.policies.agent import ODM_EXPERT, PRIOR_EXPERT

__all__ = ["ProxyEnv", "make_proxy_vec_env", "unwrap_proxy"]


class ProxyEnv(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """A :class:`DataMixingEnv` with its warm-up expert and per-domain losses in ``info``."""

    def __init__(self, env: DataMixingEnv) -> None:
        super().__init__(env)
        self.mixing_env = env
        self._expert: Mixer | None = None
        self._expert_on = True
        self._expert_spec = ODM_EXPERT

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self._expert = None  # a new LM run: a new bandit
        return self.env.reset(**kwargs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        report = self.mixing_env.last_report
        if report is not None:
            if self._expert is not None:
                self._expert.update(report.feedback)
            info["train_metrics"] = {
                k: float(v) for k, v in report.metrics.items() if k.startswith("train/loss/")
            }
        return obs, float(reward), terminated, truncated, info

    def set_expert(self, spec: str) -> None:
        """Choose the warm-up expert: ``ODM_EXPERT`` (the default) or ``PRIOR_EXPERT``."""
        if spec not in (ODM_EXPERT, PRIOR_EXPERT):
            raise EnvError(
                f"unknown warm-up expert {spec!r}; use {ODM_EXPERT!r} or {PRIOR_EXPERT!r}"
            )
        self._expert_spec, self._expert = spec, None

    def expert_action(self) -> np.ndarray:
        """The warm-up expert's action for the next interval: the ODM bandit's weights as
        this env's action (lossy beyond the action's range; the bandit starts with the
        running LM run), or with ``PRIOR_EXPERT`` the zero action (the prior)."""
        env = self.mixing_env
        tr = env.trainer
        if tr is None:
            raise EnvError("the env has no running LM episode during the warm-up")
        if not self._expert_on:
            raise EnvError("the warm-up expert was stopped (the warm-up is over)")
        if self._expert_spec == PRIOR_EXPERT:
            return np.zeros(env.k, dtype=np.float32)
        if self._expert is None:
            self._expert = make_mixer(ODM_EXPERT)
            self._expert.setup(tr.mixer_context())
        return env.action_mapping.action(self._expert.weights(), env.prior)

    def stop_expert(self) -> None:
        """End the warm-up: the bandit is dropped and no longer updated."""
        self._expert, self._expert_on = None, False


def unwrap_proxy(venv: VecEnv) -> DataMixingEnv:
    """The in-process env of a one-env :func:`make_proxy_vec_env` (for save/load_state)."""
    if not isinstance(venv, DummyVecEnv) or venv.num_envs != 1:
        raise TypeError("only a one-env DummyVecEnv holds its env in this process")
    env = venv.envs[0].unwrapped
    assert isinstance(env, DataMixingEnv)
    return env


def _worker_env(make_env: Callable[[], DataMixingEnv], threads: int) -> gym.Env[Any, Any]:
    import torch

    torch.set_num_threads(threads)  # n proxies share the cores
    return Monitor(ProxyEnv(make_env()))


def make_proxy_vec_env(
    make_env: Callable[[], DataMixingEnv],
    n: int,
    *,
    env: DataMixingEnv | None = None,
    start_method: str | None = None,
) -> VecEnv:
    """``n`` proxies as one SB3 vector env (see the module docstring).

    ``make_env`` builds one env; for ``n > 1`` it is sent to each worker process, so it must
    pickle (a ``functools.partial`` of a module-level function). ``env``: for ``n == 1``, an
    env already built here to use instead. ``start_method``: of the worker processes
    (default SB3's: ``forkserver`` where available, else ``spawn``).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        one = env if env is not None else make_env()
        return DummyVecEnv([lambda: Monitor(ProxyEnv(one))])
    threads = max(1, (os.cpu_count() or 1) // n)
    fns = [_env_fn(make_env, threads) for _ in range(n)]
    return SubprocVecEnv(fns, start_method=start_method)


def _env_fn(make_env: Callable[[], DataMixingEnv], threads: int) -> Callable[[], gym.Env[Any, Any]]:
    import functools

    return functools.partial(_worker_env, make_env, threads)
