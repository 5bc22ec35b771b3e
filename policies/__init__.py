"""acodm.policies: the DDPG/TD3 agent, actor export and loading (METHOD.md, "The agent",
"Proxy mode and transfer").

* :mod:`acodm.policies.agent` - ``AgentConfig`` (presets ``small``, ``paper``), ``make_agent``
  (SB3 DDPG/TD3), expert warm-up with behaviour cloning, ``MixingCallback`` (logging and
  checkpoints), ``save_checkpoint``/``load_agent`` (SB3 pickle: own runs only, checked with
  :mod:`acodm.trust`; ``trust_pickle=True`` for others). Imports SB3.
* :mod:`acodm.policies.export` - ``export_actor``/``write_policy`` (``actor.safetensors`` +
  ``policy.json``, hashed spec and weights), ``MixingPolicy`` (a plain torch module, loaded
  without SB3 or pickle), ``check_domains``, ``PolicyError`` (the action <-> weights mapping
  is :mod:`acodm.envs.spaces`'s, re-exported here).
* :mod:`acodm.policies.train` - ``train_policy`` (proxy training -> exported actor; the
  ``acodm train-policy`` command), ``export_from_checkpoint``. Imports SB3.
* :mod:`acodm.policies.vector` - ``make_proxy_vec_env`` (several proxies at once, one
  process each), ``ProxyEnv`` (the warm-up expert inside each proxy). Imports SB3.
* :mod:`acodm.policies.branching` - ``branch_transitions`` (extra actions from a saved proxy
  state, the state restored exactly), ``branch_actions``.
* :mod:`acodm.policies.ddpg` - ``OnlineDDPGMixer`` (mixer ``ddpg``: non-proxy mode, learning
  on the target run itself). Imports SB3.
* :mod:`acodm.policies.transfer` - ``ActorMixer`` (mixer ``actor:PATH``), ``MixingController``
  and ``DynamicsProbe`` (the small API for any torch loop).
* :mod:`acodm.policies.hf` - ``MixtureDataset``, ``MixingTrainer``, ``MixingCallback``: the
  Hugging Face ``Trainer`` path.
* :mod:`acodm.policies.quickstart` - ``quickstart`` (the ``acodm quickstart`` command).
* :mod:`acodm.policies.analytic` - ``TargetMixtureEnv``, an analytic test env.

Installed as ``acodm.policies`` (never a top-level ``policies``). Importing this package does
not import stable-baselines3; the agent names below load it on first use.
"""

from __future__ import annotations

from typing import Any

from acodm.envs.spaces import action_to_weights, weights_to_action
from acodm.policies.export import (
    MixingPolicy,
    PolicyEnsemble,
    PolicyError,
    check_domains,
    export_actor,
    load_policies,
    load_policy,
)

_AGENT_NAMES = (
    "AgentConfig",
    "MixingCallback",
    "load_agent",
    "make_agent",
    "warmup",
    "save_checkpoint",
    "continue_learning",
    "fill_replay_buffer",
)
_TRAIN_NAMES = ("train_policy", "export_from_checkpoint")
_DDPG_NAMES = ("OnlineDDPGMixer",)
_TRANSFER_NAMES = ("ActorMixer", "MixingController", "DynamicsProbe")

__all__ = [
    "MixingPolicy",
    "PolicyEnsemble",
    "PolicyError",
    "action_to_weights",
    "check_domains",
    "export_actor",
    "load_policies",
    "load_policy",
    "weights_to_action",
    *_AGENT_NAMES,
    *_TRAIN_NAMES,
    *_DDPG_NAMES,
    *_TRANSFER_NAMES,
]


def __getattr__(name: str) -> Any:
    """Lazy access to the SB3-based agent API, so a target run loading a policy needs no SB3."""
    if name in _AGENT_NAMES:
        from acodm.policies import agent

        return getattr(agent, name)
    if name in _TRAIN_NAMES:
        from acodm.policies import train

        return getattr(train, name)
    if name in _DDPG_NAMES:
        from acodm.policies import ddpg

        return getattr(ddpg, name)
    if name in _TRANSFER_NAMES:
        from acodm.policies import transfer

        return getattr(transfer, name)
    raise AttributeError(f"module 'acodm.policies' has no attribute {name!r}")
