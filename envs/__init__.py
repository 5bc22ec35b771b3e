"""acodm.envs: LLM pretraining as a Gymnasium environment (``acodm/DataMixing-v1``, ``-v0``).

Importing this package registers the ids, so::

    import gymnasium as gym
    import acodm.envs  # noqa: F401  (registers acodm/DataMixing-v0 and -v1)
    env = gym.make("acodm/DataMixing-v1")

or, without the explicit import, ``gym.make("acodm.envs:acodm/DataMixing-v1")``. v1 (probe
reward, residual action around a prior, epoch cap, repetition and probe features) is the
default recipe; v0 is the paper's formulation (alignment reward, softmax around uniform).
Both are :class:`DataMixingEnv` with other defaults (``ENV_VERSIONS``).
The MDP is :class:`DataMixingEnv` (its docstring is the spec); the action mapping, the
observation and the reward are pure functions in :mod:`acodm.spaces` (also importable as
``acodm.envs.spaces``, the same module). This package is
installed as ``acodm.envs`` (never as a top-level ``envs``) so that its import path is stable.
"""

import gymnasium

from acodm.spaces import (
    ACTION_KINDS,
    AGENT_FEATURES,
    CONSOLE_FEATURES,
    DEFAULT_BETA,
    DEFAULT_EPS,
    DEFAULT_FEATURES,
    DEFAULT_RESIDUAL_BETA,
    ENV_VERSIONS,
    FEATURES,
    MAX_EXTRA_REWARD_WEIGHT,
    PROBE_FEATURES,
    REPETITION_FEATURES,
    REWARDS,
    V1_FEATURES,
    ActionMapping,
    ObservationSpec,
    ProbeStep,
    ProbeTracker,
    RewardTerm,
    SpaceError,
    action_to_weights,
    alignment_reward,
    build_observation,
    check_mapping,
    console_reward_terms,
    env_version,
    observation_size,
    prior_weights,
    probe_reward,
    residual_action,
    residual_weights,
    resolve_prior,
    run_caps,
    total_reward,
    transition,
    weights_to_action,
    zscore_clip,
)

from . import spaces as spaces  # acodm.envs.spaces: the alias of acodm.spaces
from .data_mixing import DEFAULT_INTERVAL, DataMixingEnv, EnvError, default_config

ENV_ID = "acodm/DataMixing-v0"
ENV_ID_V1 = "acodm/DataMixing-v1"

for _version in ENV_VERSIONS:
    _id = f"acodm/DataMixing-{_version}"
    if _id not in gymnasium.registry:  # re-imports (e.g. importlib.reload) must not warn
        gymnasium.register(
            id=_id,
            entry_point="acodm.envs.data_mixing:DataMixingEnv",
            nondeterministic=False,
            kwargs=env_version(_version),
        )

__all__ = [
    "ACTION_KINDS",
    "AGENT_FEATURES",
    "CONSOLE_FEATURES",
    "DEFAULT_BETA",
    "DEFAULT_EPS",
    "DEFAULT_FEATURES",
    "DEFAULT_INTERVAL",
    "DEFAULT_RESIDUAL_BETA",
    "ENV_ID",
    "ENV_ID_V1",
    "ENV_VERSIONS",
    "FEATURES",
    "MAX_EXTRA_REWARD_WEIGHT",
    "PROBE_FEATURES",
    "REPETITION_FEATURES",
    "REWARDS",
    "V1_FEATURES",
    "V1_MAX_EPOCHS",
    "ActionMapping",
    "DataMixingEnv",
    "EnvError",
    "ObservationSpec",
    "ProbeStep",
    "ProbeTracker",
    "RewardTerm",
    "SpaceError",
    "action_to_weights",
    "alignment_reward",
    "build_observation",
    "check_mapping",
    "console_reward_terms",
    "default_config",
    "env_version",
    "observation_size",
    "prior_weights",
    "probe_reward",
    "residual_action",
    "residual_weights",
    "resolve_prior",
    "run_caps",
    "total_reward",
    "transition",
    "weights_to_action",
    "zscore_clip",
]
