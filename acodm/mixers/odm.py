"""ODM: online data mixing as a multi-armed bandit (Albalak et al. 2023, "Efficient Online
Data Mixing For Language Model Pre-Training"), in the form METHOD.md specifies.

Each domain is an arm. After every interval (METHOD.md, "Baselines"):

    R_i   <- a R_i + (1 - a) exp(loss_i)          smoothed reward, a = 0.5, R_0 = 1
                                                  (only domains sampled in the interval)
    eps_t  = min(1/k, sqrt(ln k / (k t)))         exploration, t = updates so far (>= 1)
    w_i    = (1 - k eps_t) R_i / sum_j R_j + eps_t

A domain with a high loss earns a high reward and is sampled more; ``eps_t`` keeps every
domain sampled and decays with t (for ``t <= k ln k`` it is ``1/k``: weights are uniform).
For the first ``warmup`` fraction of the run the weights come from a static mixer while R
is still updated (METHOD.md: "warm-up on static weights").

Deviation: the ODM paper's Algorithm 1 is EXP3 proper (a Gibbs policy
``exp(eps_{t-1} R_i) / sum_j exp(eps_{t-1} R_j)`` mixed with ``eps_t``, and the reward the
importance-weighted loss ``L / pi_i``, starting at 0). acodm implements the form above,
which METHOD.md specifies; the exponent sits on the loss (``exp(loss)`` is the perplexity).

Spec: ``odm`` or ``odm:warmup=0.02,alpha=0.5,static=uniform`` (any subset, any order);
``static`` takes any static mixer spec without commas (``natural``, ``unimax:4``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from acodm.mixers.base import (
    IntervalFeedback,
    Mixer,
    MixerContext,
    MixerError,
    format_number,
)
from acodm.mixers.spec import check_number, make_mixer, parse_number, parse_options
from acodm.mixers.static import StaticMixer

LOSS_CLIP = 30.0
"""Losses are clipped to ``[0, LOSS_CLIP]`` nats before ``exp``. Above: float64 ``exp``
overflows past ~709, and any loss above ~ln(vocab) (about 11 nats for 50k tokens) already
means the model diverged; 30 keeps ``exp(loss)`` (~1e13) finite and the ranking of sane
losses intact. Below: cross-entropy is never negative; the bound keeps ``R > 0`` (so the
weights stay defined) even if a broken loss of ``-inf`` arrives."""


def odm_exploration(k: int, t: int) -> float:
    """``eps_t = min(1/k, sqrt(ln k / (k t)))`` (Albalak et al. 2023, Algorithm 1); t >= 1."""
    t = max(int(t), 1)
    return min(1.0 / k, math.sqrt(math.log(k) / (k * t)))


def odm_reward_update(
    reward: np.ndarray, loss: np.ndarray, counts: np.ndarray, alpha: float
) -> np.ndarray:
    """``R_i <- a R_i + (1 - a) exp(clip(loss_i, 0, LOSS_CLIP))`` where domain i was sampled.

    Domains with ``counts == 0`` or a NaN loss keep their reward. Returns a new ``(k,)`` array.
    """
    seen = (counts > 0) & ~np.isnan(loss)
    new = reward.copy()
    clipped = np.clip(loss[seen], 0.0, LOSS_CLIP)
    new[seen] = alpha * reward[seen] + (1.0 - alpha) * np.exp(clipped)
    return new


def odm_weights(reward: np.ndarray, eps: float) -> np.ndarray:
    """``w = (1 - k eps) R / sum R + eps``: on the simplex for ``0 <= eps <= 1/k``, ``R > 0``."""
    k = reward.size
    return (1.0 - k * eps) * reward / reward.sum() + eps


class ODMMixer(Mixer):
    """The ODM bandit baseline; see the module docstring for the formulas."""

    name = "odm"
    usage = "odm[:warmup=W,alpha=A,static=SPEC]"
    example = "odm"
    OPTIONS = ("warmup", "alpha", "static")

    def __init__(self, warmup: float = 0.02, alpha: float = 0.5, static: str = "uniform") -> None:
        super().__init__()
        self.warmup = check_number(warmup, "ODM warmup", at_most=1.0)
        self.alpha = check_number(alpha, "ODM alpha", at_most=1.0)
        if self.warmup < 0 or self.alpha < 0:
            raise MixerError(f"ODM warmup and alpha must be in [0, 1], got {warmup}, {alpha}")
        self.static = make_mixer(static)
        if not isinstance(self.static, StaticMixer):
            raise MixerError(f"ODM static={static!r} is not a static mixer")
        self._reward = np.ones(0)
        self._updates = 0  # t: updates so far
        self._step = 0  # optimizer steps done, from the last feedback

    @classmethod
    def from_spec_arg(cls, arg: str | None) -> Mixer:
        opts = parse_options(arg, cls.OPTIONS)
        kwargs: dict[str, Any] = {
            key: parse_number(opts[key], f"ODM {key}") for key in ("warmup", "alpha") if key in opts
        }
        if "static" in opts:
            kwargs["static"] = opts["static"]
        return cls(**kwargs)

    def describe(self) -> str:
        return (
            f"{self.name}:warmup={format_number(self.warmup)},alpha={format_number(self.alpha)},"
            f"static={self.static.describe()}"
        )

    @property
    def in_warmup(self) -> bool:
        """True while fewer than ``warmup * total_steps`` optimizer steps are done."""
        return self._step < self.warmup * self.ctx.total_steps

    def _prepare(self, ctx: MixerContext) -> None:
        self.static.setup(ctx)
        self._reward = np.ones(ctx.k)
        self._updates = 0
        self._step = 0

    def _weights(self) -> np.ndarray:
        if self.in_warmup:
            return self.static.weights()
        return odm_weights(self._reward, odm_exploration(self.ctx.k, self._updates))

    def _update(self, feedback: IntervalFeedback) -> None:
        self._reward = odm_reward_update(self._reward, feedback.loss, feedback.counts, self.alpha)
        self._updates += 1
        self._step = int(feedback.step)

    def _state(self) -> dict[str, Any]:
        return {"reward": self._reward.tolist(), "updates": self._updates, "step": self._step}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        reward = np.asarray(state.get("reward", []), dtype=np.float64)
        updates, step = state.get("updates"), state.get("step")
        if reward.shape != (self.ctx.k,) or not np.all(np.isfinite(reward) & (reward > 0)):
            raise MixerError(f"ODM state reward must be {self.ctx.k} finite values > 0: {reward}")
        if not (isinstance(updates, int) and isinstance(step, int) and updates >= 0 and step >= 0):
            raise MixerError(f"ODM state updates/step must be integers >= 0: {updates}, {step}")
        self._reward, self._updates, self._step = reward, updates, step
