"""acodm.policies: the DDPG/TD3 agent, actor export and loading (METHOD.md, "The agent",
"Proxy mode and transfer").

* :mod:`acodm.policies.agent` - ``AgentConfig`` (presets ``small``, ``paper``), ``make_agent``
  (SB3 DDPG/TD3), expert warm-up with behaviour cloning, ``MixingCallback`` (logging and
  checkpoints), ``save_checkpoint``/``load_agent`` (SB3 pickle: own runs only, checked with
  :mod:`acodm.trust`; ``trust_pickle=True`` for others). Imports SB3.
* :mod:`acodm.policies.mixing` - ``PolicyMixer`` (the framework-agnostic API: per-domain
  loss sums and counts in, weights out; no torch), ``MixingController`` (the same from a
  ``Dynamics``), ``interval_dynamics``.
* :mod:`acodm.policies.files` - the export's format and checks, ``read_policy``,
  ``NumpyPolicy`` / ``load_numpy_policies`` (the actor in numpy), ``check_domains``,
  ``PolicyError``.
* :mod:`acodm.policies.export` - ``export_actor``/``write_policy`` (``actor.safetensors`` +
  ``policy.json``, hashed spec and weights), ``MixingPolicy`` (a plain torch module, loaded
  without SB3 or pickle), ``check_domains``, ``PolicyError`` (the action <-> weights mapping
  is :mod:`acodm.spaces`'s, re-exported here).
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
* :mod:`acodm.policies.hf` - ``MixtureDataset``, ``MixingTrainer``, ``MixingCallback``,
  ``SequenceLoss`` (the loss-function hook, no subclass): the Hugging Face ``Trainer`` path,
  multi-process and resumable.
* :mod:`acodm.policies.hf_datasets` - ``DatasetsMixture``: a dict of Hugging Face datasets
  (one per domain, streaming allowed) mixed by changing weights, for the same path.
* :mod:`acodm.policies.quickstart` - ``quickstart`` (the ``acodm quickstart`` command).
* :mod:`acodm.policies.analytic` - ``TargetMixtureEnv``, an analytic test env.

Installed as ``acodm.policies`` (never a top-level ``policies``). Importing this package imports
neither torch, gymnasium, stable-baselines3 nor acodm's trainer (numpy and acodm's numpy-only
parts: ``experiments/bench/import_time.py`` measures it); the torch-based names below load
their modules on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from acodm.policies.files import (
    NumpyPolicy,
    PolicyError,
    check_domains,
    load_numpy_policies,
    read_policy,
)
from acodm.policies.mixing import MixingController, PolicyMixer, interval_dynamics
from acodm.spaces import action_to_weights, weights_to_action

if TYPE_CHECKING:  # the lazy names, for type checkers (listed in __all__ through _LAZY)
    from acodm.policies.agent import (  # noqa: F401
        AgentConfig,
        MixingCallback,
        continue_learning,
        fill_replay_buffer,
        load_agent,
        make_agent,
        save_checkpoint,
        warmup,
    )
    from acodm.policies.ddpg import OnlineDDPGMixer  # noqa: F401
    from acodm.policies.export import (  # noqa: F401
        MixingPolicy,
        PolicyEnsemble,
        export_actor,
        load_policies,
        load_policy,
    )
    from acodm.policies.train import export_from_checkpoint, train_policy  # noqa: F401
    from acodm.policies.transfer import ActorMixer, DynamicsProbe  # noqa: F401

#: name -> the module that defines it (imported on first use: these import torch or SB3)
_LAZY: dict[str, str] = {
    **{
        n: "acodm.policies.agent"
        for n in (
            "AgentConfig",
            "MixingCallback",
            "load_agent",
            "make_agent",
            "warmup",
            "save_checkpoint",
            "continue_learning",
            "fill_replay_buffer",
        )
    },
    "train_policy": "acodm.policies.train",
    "export_from_checkpoint": "acodm.policies.train",
    "OnlineDDPGMixer": "acodm.policies.ddpg",
    **{
        n: "acodm.policies.export"
        for n in ("MixingPolicy", "PolicyEnsemble", "export_actor", "load_policies", "load_policy")
    },
    "ActorMixer": "acodm.policies.transfer",
    "DynamicsProbe": "acodm.policies.transfer",
}

__all__ = [
    "MixingController",
    "NumpyPolicy",
    "PolicyError",
    "PolicyMixer",
    "action_to_weights",
    "check_domains",
    "interval_dynamics",
    "load_numpy_policies",
    "read_policy",
    "weights_to_action",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """The torch / SB3-based names, imported on first use (a loop that only mixes needs none)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'acodm.policies' has no attribute {name!r}")
