"""Drive a target run with an exported actor (METHOD.md, "Proxy mode and transfer").

The actor learned on a proxy run is loaded from ``actor.safetensors`` + ``policy.json``
(:class:`~acodm.policies.export.MixingPolicy`, no SB3, no pickle). Each interval the target
measures its *own* dynamics, builds the *same* observation as the proxy's env
(:func:`acodm.spaces.build_observation` with the exported :class:`ObservationSpec`) and
the actor gives the next weights. No reward, no critic, no replay buffer. As in the env's
``reset``, the first interval runs with uniform weights (a residual policy: with its prior).

A residual policy (``policy.mapping.kind == "residual"``) acts around a prior that the target
computes from *its own* run (its budget and store, :class:`~acodm.mixers.MixerContext`: the
target's UniMax, not the proxy's), and a policy with an epoch cap projects every decision onto
the target's live caps (its epochs so far and its remaining budget). The controller needs the
run's context for both (``MixingController(..., context=ctx)`` or :meth:`MixingController.setup`;
:class:`ActorMixer` and the Hugging Face callback give it).

Four ways in:

* acodm's own trainer: ``acodm pretrain --mixer actor:PATH`` (:class:`ActorMixer`, registered
  as ``actor``; ``make_mixer`` imports this module on first use of the name).
* A Hugging Face ``Trainer``: :mod:`acodm.policies.hf`.
* Any torch loop: :class:`MixingController` + :class:`~acodm.dynamics.probe.DynamicsProbe`
  (the meter acodm's own trainer uses, so the loop observes what the proxy observed)::

    ctl = MixingController.load("runs/policy", domains=sampler.domains)
    ctl.setup(MixerContext(sampler.domains, tokens, total_steps, tokens_per_step))
    probe = DynamicsProbe(model, sampler.domains)           # hooks on 3 monitored layers
    sampler.set_weights(ctl.weights)                         # uniform (or prior) first interval
    for step in range(1, total_steps + 1):
        batch = sampler.next_batch()
        probe.set_domains(batch.domains)                     # before the forward
        seq_loss = per_sequence_loss(model, batch.tokens)    # (B,), same forward
        seq_loss.mean().backward(); opt.step(); opt.zero_grad()
        probe.record(seq_loss, batch.domains)
        if step % ctl.interval == 0:
            dyn = probe.interval_end(step, total_steps, epochs=sampler.epochs())
            sampler.set_weights(ctl.observe(dyn))

* Any loop in any framework, without torch: :class:`acodm.policies.mixing.PolicyMixer`
  (per-domain loss sums and counts, and the other numbers the policy observes, in; weights
  out).

Size transfer: the observation is size-agnostic (per-domain groups of length ``k``, per-layer
groups of the monitored-layer *count*, each z-scored), so a policy from a ``tiny`` proxy reads
a ``14m`` target's vector as long as both monitor the same number of layers (default 3).
Domains must match by name and order (:func:`~acodm.policies.export.check_domains`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from acodm.data.weights import normalize_weights
from acodm.dynamics.probe import DynamicsProbe  # its home before the trainer shared it
from acodm.mixers.base import IntervalFeedback, Mixer, MixerContext, MixerError
from acodm.mixers.spec import register_mixer, require_arg
from acodm.policies.export import load_policies
from acodm.policies.files import PolicyError

# the controller is torch-free (acodm.policies.mixing); re-exported from its old home
from acodm.policies.mixing import MixingController, observation_spec
from acodm.spaces import SpaceError

__all__ = ["ActorMixer", "DynamicsProbe", "MixingController"]


# ----------------------------------------------------------------------------- mixer


class ActorMixer(Mixer):
    """``actor:PATH``: an exported actor sets the weights from the run's own dynamics.

    ``actor:A;B;C``: several exported actors of one spec act as one, the mean of their actions
    (:class:`~acodm.policies.export.PolicyEnsemble`: e.g. one recipe trained with several agent
    seeds).

    The policy is loaded at construction (a bad path fails before the model is built);
    :meth:`setup` checks the domains; the observation length (the monitored layer count) is
    checked at the first update, the first place the run's layers are seen. Needs the
    trainer's dynamics (``TrainConfig.dynamics=True``, the default). A residual policy acts
    around the prior of *this* run's context, and a capped one within this run's live caps.
    """

    name = "actor"

    def __init__(self, path: str | Path, *, reorder: bool = False) -> None:
        super().__init__()
        self.path = str(path)
        self.reorder = bool(reorder)
        try:
            self.policy = load_policies(str(path))
            observation_spec(self.policy)
        except PolicyError as e:
            raise MixerError(str(e)) from e
        self.controller: MixingController | None = None

    def describe(self) -> str:
        return f"actor:{self.path}" + (",reorder=1" if self.reorder else "")

    def _prepare(self, ctx: MixerContext) -> None:
        try:
            # the run's own prior and caps (a residual or capped policy)
            self.controller = MixingController(
                self.policy, ctx.domains, allow_reorder=self.reorder, context=ctx
            )
        except (PolicyError, SpaceError) as e:
            raise MixerError(str(e)) from e
        if ctx.interval != self.policy.interval:
            warnings.warn(
                f"the policy was trained with interval K={self.policy.interval}, this run "
                f"uses K={ctx.interval}",
                stacklevel=3,
            )

    def _ctl(self) -> MixingController:
        if self.controller is None:
            raise MixerError("actor mixer is not set up")
        return self.controller

    def _weights(self) -> np.ndarray:
        return self._ctl().weights.copy()

    def weights(self) -> np.ndarray:
        """The controller's mixture, checked but not renormalised (it is one already): so a
        zero residual actor gives its prior's weights bit for bit, as the prior's own mixer
        does (renormalising a mixture moves its last bits about one time in four)."""
        ctx = self.ctx
        w = self._weights()
        normalize_weights(w, what=f"weights of mixer {self.describe()!r}", domains=ctx.domains)
        return w

    def _update(self, feedback: IntervalFeedback) -> None:
        dynamics = feedback.need_dynamics("the actor mixer")
        try:
            self._ctl().observe(dynamics)
        except (PolicyError, SpaceError) as e:
            raise MixerError(str(e)) from e

    def _state(self) -> dict[str, Any]:
        return {"weights": self._ctl().weights.tolist()}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        if "weights" in state:
            w = np.asarray(state["weights"], dtype=np.float64)
            if w.shape != (self.ctx.k,):
                raise MixerError(f"saved actor weights have shape {w.shape}")
            self._ctl().weights = w


_REORDER = {"1": True, "true": True, "0": False, "false": False}


def _factory(arg: str | None) -> Mixer:
    """``actor:PATH`` or ``actor:PATH,reorder=1`` (the option only as the last item, so a
    path may hold commas); ``PATH`` may be several paths joined by ``;`` (an ensemble)."""
    path = require_arg("actor", arg, "actor:runs/policy")
    head, sep, tail = path.rpartition(",")
    key, eq, value = tail.partition("=")
    if sep and eq and key.strip() == "reorder":
        if value.strip().lower() not in _REORDER:
            raise MixerError(f"actor option reorder must be 1 or 0, got {value!r}")
        return ActorMixer(head.strip(), reorder=_REORDER[value.strip().lower()])
    return ActorMixer(path)


register_mixer("actor", _factory, replace=True)
