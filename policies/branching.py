"""Branching: several actions from one proxy state, all into the replay buffer (issue 11).

DDPG is off-policy: any ``(s, a, r, s')`` the env really produced is a valid transition,
whoever chose ``a``. From the proxy's current state, :func:`branch_transitions` saves the
env (:meth:`DataMixingEnv.save_state`: the LM run, its optimizer and RNGs), trains one
interval with each extra action, and restores the saved state exactly, so the main
trajectory goes on as if nothing happened (bitwise on CPU, ``tests/policies/test_branching.py``)
while the critic has seen several actions of the same state: what it needs to rank them.

:func:`branch_actions` draws the extra actions around the prior: ``a = clip(N(0, sigma^2))``
(``a = 0`` *is* the prior with the residual action, uniform with the softmax one), from a
generator seeded by ``(seed, step)``, so a resumed run draws the same ones.

Cost: one interval of the proxy per branch, plus one save and one load of the LM run per
branch (each load rebuilds the trainer from its checkpoint).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from acodm.envs import DataMixingEnv
from acodm.policies.agent import Transition

__all__ = ["BRANCH_SIGMA", "branch_actions", "branch_transitions"]

#: Standard deviation of the branch actions around the prior's ``a = 0``: with the residual
#: action's beta = ln 4, ``a = 0.5`` scales a domain's prior share by 2 (before normalising).
BRANCH_SIGMA = 0.5


def branch_actions(
    count: int, k: int, seed: int, step: int, sigma: float = BRANCH_SIGMA
) -> np.ndarray:
    """``count`` actions ``clip(N(0, sigma^2 I_k), -1, 1)`` for env step ``step``: (count, k)."""
    rng = np.random.default_rng([int(seed), int(step)])
    return np.clip(rng.normal(0.0, sigma, size=(count, k)), -1.0, 1.0).astype(np.float32)


def branch_transitions(
    env: DataMixingEnv,
    obs: np.ndarray,
    actions: Sequence[np.ndarray] | np.ndarray,
    workdir: str | Path | None = None,
) -> list[Transition]:
    """From ``env``'s running state (whose observation is ``obs``), train one interval with
    each of ``actions``; return their transitions and leave ``env`` exactly as it was.

    The state is saved once into a temporary folder under ``workdir`` (default: the system's),
    each branch after the first starts from it, and it is loaded once more at the end.
    """
    if env.trainer is None or env.trainer.done:
        raise ValueError("branching needs a running episode (call reset first)")
    out: list[Transition] = []
    with tempfile.TemporaryDirectory(prefix="acodm-branch-", dir=workdir) as tmp:
        env.save_state(tmp)
        for j, action in enumerate(actions):
            if j > 0:
                env.load_state(tmp)
            next_obs, reward, terminated, truncated, _ = env.step(np.asarray(action))
            out.append(
                Transition(
                    np.array(obs, copy=True),
                    np.asarray(action, np.float32),
                    float(reward),
                    np.asarray(next_obs),
                    terminated=bool(terminated),
                    truncated=bool(truncated),
                )
            )
        env.load_state(tmp)
    return out
