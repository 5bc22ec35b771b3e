"""acodm.policies: the DDPG/TD3 agent, actor export and loading (METHOD.md, "The agent",
"Proxy mode and transfer").

* :mod:`acodm.policies.agent` - ``AgentConfig`` (presets ``small``, ``paper``), ``make_agent``
  (SB3 DDPG/TD3), expert warm-up with behaviour cloning, ``MixingCallback`` (logging and
  checkpoints), ``save_checkpoint``/``load_agent`` (SB3 pickle: own runs only). Imports SB3.
* :mod:`acodm.policies.export` - ``export_actor`` (``actor.safetensors`` + ``policy.json``),
  ``MixingPolicy`` (a plain torch module, loaded without SB3 or pickle), ``check_domains``,
  ``PolicyError``, and the action <-> weights mapping.
* :mod:`acodm.policies.analytic` - ``TargetMixtureEnv``, an analytic test env.

Installed as ``acodm.policies`` (never a top-level ``policies``). Importing this package does
not import stable-baselines3; the agent names below load it on first use.
"""

from __future__ import annotations

from typing import Any

from acodm.policies.export import (
    MixingPolicy,
    PolicyError,
    action_to_weights,
    check_domains,
    export_actor,
    load_policy,
    weights_to_action,
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

__all__ = [
    "MixingPolicy",
    "PolicyError",
    "action_to_weights",
    "check_domains",
    "export_actor",
    "load_policy",
    "weights_to_action",
    *_AGENT_NAMES,
]


def __getattr__(name: str) -> Any:
    """Lazy access to the SB3-based agent API, so a target run loading a policy needs no SB3."""
    if name in _AGENT_NAMES:
        from acodm.policies import agent

        return getattr(agent, name)
    raise AttributeError(f"module 'acodm.policies' has no attribute {name!r}")
