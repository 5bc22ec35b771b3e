"""Drive a target run with an exported actor (METHOD.md, "Proxy mode and transfer").

The actor learned on a proxy run is loaded from ``actor.safetensors`` + ``policy.json``
(:class:`~acodm.policies.export.MixingPolicy`, no SB3, no pickle). Each interval the target
measures its *own* dynamics, builds the *same* observation as the proxy's env
(:func:`acodm.envs.spaces.build_observation` with the exported :class:`ObservationSpec`) and
the actor gives the next weights. No reward, no critic, no replay buffer. As in the env's
``reset``, the first interval runs with uniform weights (a residual policy: with its prior).

A residual policy (``policy.mapping.kind == "residual"``) acts around a prior that the target
computes from *its own* run (its budget and store, :class:`~acodm.mixers.MixerContext`: the
target's UniMax, not the proxy's), and a policy with an epoch cap projects every decision onto
the target's live caps (its epochs so far and its remaining budget). The controller needs the
run's context for both (``MixingController(..., context=ctx)`` or :meth:`MixingController.setup`;
:class:`ActorMixer` and the Hugging Face callback give it).

Three ways in:

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

Size transfer: the observation is size-agnostic (per-domain groups of length ``k``, per-layer
groups of the monitored-layer *count*, each z-scored), so a policy from a ``tiny`` proxy reads
a ``14m`` target's vector as long as both monitor the same number of layers (default 3).
Domains must match by name and order (:func:`~acodm.policies.export.check_domains`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from acodm.data.weights import normalize_weights
from acodm.dynamics.features import Dynamics, permute_domains
from acodm.dynamics.probe import DynamicsProbe  # its home before the trainer shared it
from acodm.envs.spaces import ActionMapping, ObservationSpec, SpaceError, build_observation
from acodm.mixers.base import IntervalFeedback, Mixer, MixerContext, MixerError
from acodm.mixers.spec import register_mixer, require_arg
from acodm.policies.export import MixingPolicy, PolicyError, check_domains, load_policies

__all__ = ["ActorMixer", "DynamicsProbe", "MixingController"]


# ----------------------------------------------------------------------------- controller


def _observation_spec(policy: MixingPolicy) -> ObservationSpec:
    """The exported observation spec, checked against the network's input size."""
    try:
        spec = ObservationSpec.from_dict(policy.spec["observation"])
    except (SpaceError, TypeError, AttributeError) as e:
        raise PolicyError(f"the policy's observation spec is not an acodm spec: {e}") from e
    if spec.size != policy.obs_dim:
        raise PolicyError(
            f"the policy's observation spec has {spec.size} entries but its network reads "
            f"{policy.obs_dim}; the export is inconsistent"
        )
    if spec.k != len(policy.domains):
        raise PolicyError(f"observation spec k={spec.k} for {len(policy.domains)} domains")
    return spec


class MixingController:
    """An exported policy plus the last weights: ``observe(dynamics) -> weights``.

    Sampler-agnostic: it returns ``(k,)`` float64 weights in the run's domain order (which
    must be the policy's, see :func:`check_domains`); the caller hands them to its sampler.
    ``weights`` starts uniform (the env's first interval). ``n_layers`` (the run's monitored
    layer count), when known, is checked at once; else at the first :meth:`observe`.
    ``allow_reorder``: the run may list the policy's domains in another order; the controller
    then reads the dynamics in the policy's order (:func:`permute_domains`) and returns the
    weights in the run's order, so the caller never permutes anything.

    ``context``: the run's :class:`MixerContext` (domains in the run's order, training tokens,
    budget), or later :meth:`setup`. A residual policy needs it for its prior (computed from
    the run, ``prior``) and a capped one for its caps, recomputed at every decision from the
    interval's ``epochs`` and ``step``; ``weights`` then starts at the (capped) prior.
    """

    def __init__(
        self,
        policy: MixingPolicy,
        domains: Sequence[str],
        *,
        n_layers: int | None = None,
        allow_reorder: bool = False,
        context: MixerContext | None = None,
    ) -> None:
        self.policy = policy
        self.spec = _observation_spec(policy)
        # PolicyError naming missing / extra domains; order[i]: run index of policy domain i
        order = check_domains(policy, list(domains), allow_reorder=allow_reorder)
        self._order: tuple[int, ...] | None = None if order == tuple(range(len(order))) else order
        self.domains: tuple[str, ...] = tuple(domains)
        if n_layers is not None:
            self._check_layers(n_layers)
        self.weights: np.ndarray = np.full(self.k, 1.0 / self.k)
        self.last_observation: np.ndarray | None = None
        self.context: MixerContext | None = None
        #: The run's prior weights (run order; None for the softmax mapping).
        self.prior: np.ndarray | None = None
        if context is not None:
            self.setup(context)

    @property
    def mapping(self) -> ActionMapping:
        """The policy's action mapping (softmax or residual, with its epoch cap)."""
        return self.policy.mapping

    @property
    def needs_context(self) -> bool:
        """Whether the policy needs the run's context: a residual or a capped mapping."""
        return self.mapping.residual or self.mapping.max_epochs is not None

    def setup(self, context: MixerContext) -> np.ndarray:
        """Tie the controller to a run: its prior from the run's own context, and the first
        interval's weights (uniform, or the prior; within the caps at step 0). Returns them."""
        if tuple(context.domains) != self.domains:
            raise PolicyError(
                f"the context's domains {list(context.domains)} are not the run's "
                f"{list(self.domains)}"
            )
        self.context = context
        mapping = self.mapping
        self.prior = mapping.prior_weights(context) if mapping.residual else None
        self.weights = mapping.initial_weights(context, self.prior)
        return self.weights.copy()

    @classmethod
    def load(
        cls,
        path: str | Path,
        domains: Sequence[str],
        *,
        n_layers: int | None = None,
        allow_reorder: bool = False,
        context: MixerContext | None = None,
    ) -> MixingController:
        """Load ``path`` (export folder or ``policy.json``, or several joined by ``;``, an
        ensemble; never unpickles) for ``domains``."""
        return cls(
            load_policies(path),
            domains,
            n_layers=n_layers,
            allow_reorder=allow_reorder,
            context=context,
        )

    @property
    def k(self) -> int:
        return len(self.domains)

    @property
    def interval(self) -> int:
        """The interval K the policy was trained with (optimizer steps per decision)."""
        return self.policy.interval

    def _check_layers(self, n_layers: int) -> None:
        if n_layers != self.spec.n_layers:
            raise PolicyError(
                f"the run monitors {n_layers} layers but the policy was trained on "
                f"{self.spec.n_layers}; set monitored_layers={self.spec.n_layers} on the target"
            )

    def observation(self, dynamics: Dynamics) -> np.ndarray:
        """The policy's observation vector for one interval's dynamics (float32)."""
        self._check_layers(int(np.asarray(dynamics.weight_norm).size))
        if self._order is not None:
            dynamics = permute_domains(dynamics, self._order)
        return build_observation(dynamics, self.spec)

    def observe(self, dynamics: Dynamics) -> np.ndarray:
        """Weights for the next interval (run order) from the interval that just ended; kept.

        A residual or capped policy maps its action with the run's prior and the caps of the
        run's live epochs and remaining budget (``dynamics.epochs``, ``dynamics.step``).
        """
        obs = self.observation(dynamics)
        self.last_observation = obs
        if self.needs_context:
            self.weights = self._mapped(obs, dynamics)
            return self.weights.copy()
        w = np.asarray(self.policy.weights(obs), dtype=np.float64)  # the policy's order
        if self._order is not None:
            w_run = np.empty_like(w)
            w_run[list(self._order)] = w
            w = w_run
        self.weights = w
        return self.weights.copy()

    def _mapped(self, obs: np.ndarray, dynamics: Dynamics) -> np.ndarray:
        """The residual / capped mapping in the run's order (it is order-equivariant)."""
        ctx = self.context
        if ctx is None:
            raise PolicyError(
                f"this policy's action mapping ({self.mapping.kind}, max_epochs="
                f"{self.mapping.max_epochs}) needs the run's context: pass "
                "MixingController(..., context=MixerContext(...)) or call setup(ctx) first"
            )
        a = np.asarray(self.policy.act(obs), dtype=np.float64)  # the policy's order
        if self._order is not None:
            a_run = np.empty_like(a)
            a_run[list(self._order)] = a
            a = a_run
        caps = self.mapping.caps(ctx, dynamics.epochs, int(dynamics.step))
        return self.mapping.weights(a, self.prior, caps)

    def weight_dict(self) -> dict[str, float]:
        """The current weights by domain name."""
        return {d: float(w) for d, w in zip(self.domains, self.weights, strict=True)}


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
            _observation_spec(self.policy)
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
