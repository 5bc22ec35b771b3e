"""acodm.envs: LLM pretraining as a Gymnasium environment (``acodm/DataMixing-v0``).

Importing this package registers the id, so::

    import gymnasium as gym
    import acodm.envs  # noqa: F401  (registers acodm/DataMixing-v0)
    env = gym.make("acodm/DataMixing-v0")

or, without the explicit import, ``gym.make("acodm.envs:acodm/DataMixing-v0")``.
The MDP is :class:`DataMixingEnv` (its docstring is the spec); the action mapping, the
observation and the reward are pure functions in :mod:`acodm.envs.spaces`. This package is
installed as ``acodm.envs`` (never as a top-level ``envs``) so that its import path is stable.
"""

import gymnasium

from .data_mixing import DEFAULT_INTERVAL, DataMixingEnv, EnvError, default_config
from .spaces import (
    ACTION_KINDS,
    AGENT_FEATURES,
    CONSOLE_FEATURES,
    DEFAULT_BETA,
    DEFAULT_EPS,
    DEFAULT_FEATURES,
    DEFAULT_RESIDUAL_BETA,
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

ENV_ID = "acodm/DataMixing-v0"

if ENV_ID not in gymnasium.registry:  # re-imports (e.g. importlib.reload) must not warn
    gymnasium.register(
        id=ENV_ID, entry_point="acodm.envs.data_mixing:DataMixingEnv", nondeterministic=False
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
    "FEATURES",
    "MAX_EXTRA_REWARD_WEIGHT",
    "PROBE_FEATURES",
    "REPETITION_FEATURES",
    "REWARDS",
    "V1_FEATURES",
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
