"""An analytic stand-in for the data-mixing env: the reward peaks at a known target mixture.

Used to test the agent path (DDPG/TD3, warm-up, export) without LM noise or cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from acodm.spaces import action_to_weights


class TargetMixtureEnv(gym.Env[np.ndarray, np.ndarray]):
    """Choose domain weights; the reward is highest at a fixed target mixture ``w*``.

    ## Action space
    ``Box(-1, 1, (k,), float32)``, mapped to weights by METHOD.md's
    ``w = (1 - eps) * softmax(beta * a) + eps / k`` (:func:`acodm.spaces.action_to_weights`).

    ## Observation space
    ``Box(low, high, (2k + 1,), float32)``:

    | index      | feature                                    | range    |
    |------------|--------------------------------------------|----------|
    | 0 .. k-1   | per-domain feature: fixed value + N(0, noise) | [-3, 3] |
    | k .. 2k-1  | previous weights (uniform at reset)        | [0, 1]   |
    | 2k         | progress ``t / episode_length``            | [0, 1]   |

    ## Reward
    ``r = -scale * k * ||w - w*||^2``: concave in ``w``, 0 at ``w*``, about -2 at uniform weights
    for the default ``w*`` and scale. It does not depend on the state, so the optimal policy is
    the constant action ``weights_to_action(w*)`` (reachable when ``max p / min p <= e^{2 beta}``).

    ## Episode
    ``episode_length`` steps, then ``terminated`` (like the LM env's token budget); never truncated.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (gymnasium convention)

    def __init__(
        self,
        target: Sequence[float] = (0.4, 0.3, 0.2, 0.1),
        *,
        beta: float = 2.0,
        eps: float = 0.1,
        episode_length: int = 16,
        noise: float = 0.0,
        scale: float = 10.0,
    ) -> None:
        w = np.asarray(target, dtype=np.float64)
        if w.ndim != 1 or len(w) < 2 or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
            raise ValueError(
                f"target must be k >= 2 non-negative weights summing to 1, got {target}"
            )
        if episode_length <= 0:
            raise ValueError("episode_length must be > 0")
        self.target, self.k = w, len(w)
        self.beta, self.eps = float(beta), float(eps)
        self.episode_length, self.noise, self.scale = (
            int(episode_length),
            float(noise),
            float(scale),
        )
        self.domains = [f"d{i}" for i in range(self.k)]
        # A fixed, domain-specific feature (like a domain's typical loss), in [-1, 1].
        self._base = np.linspace(-1.0, 1.0, self.k)
        k = self.k
        low = np.concatenate([np.full(k, -3.0), np.zeros(k), [0.0]]).astype(np.float32)
        high = np.concatenate([np.full(k, 3.0), np.ones(k), [1.0]]).astype(np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (k,), dtype=np.float32)
        self._t = 0
        self._weights = np.full(k, 1.0 / k)

    def observation_spec(self) -> dict[str, Any]:
        """The feature spec an exported policy stores (opaque to the exporter)."""
        return {
            "env": "TargetMixtureEnv",
            "groups": [
                {"name": "feature", "per_domain": True},
                {"name": "prev_weight", "per_domain": True},
                {"name": "progress", "size": 1},
            ],
        }

    def _obs(self) -> np.ndarray:
        feat = self._base + self.noise * self.np_random.standard_normal(self.k)
        obs = np.concatenate([np.clip(feat, -3, 3), self._weights, [self._t / self.episode_length]])
        return obs.astype(np.float32)

    def reward(self, weights: np.ndarray) -> float:
        return float(-self.scale * self.k * np.sum((weights - self.target) ** 2))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._weights = np.full(self.k, 1.0 / self.k)
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self._weights = action_to_weights(a, self.beta, self.eps)
        self._t += 1
        r = self.reward(self._weights)
        info = {"weights": self._weights.copy()}
        return self._obs(), r, self._t >= self.episode_length, False, info
