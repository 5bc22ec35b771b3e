"""Drive a target run with an exported actor (METHOD.md, "Proxy mode and transfer").

The actor learned on a proxy run is loaded from ``actor.safetensors`` + ``policy.json``
(:class:`~acodm.policies.export.MixingPolicy`, no SB3, no pickle). Each interval the target
measures its *own* dynamics, builds the *same* observation as the proxy's env
(:func:`acodm.envs.spaces.build_observation` with the exported :class:`ObservationSpec`) and
the actor gives the next weights. No reward, no critic, no replay buffer. As in the env's
``reset``, the first interval runs with uniform weights.

Three ways in:

* acodm's own trainer: ``acodm pretrain --mixer actor:PATH`` (:class:`ActorMixer`, registered
  as ``actor``; ``make_mixer`` imports this module on first use of the name).
* A Hugging Face ``Trainer``: :mod:`acodm.policies.hf`.
* Any torch loop: :class:`MixingController` + :class:`DynamicsProbe`::

    ctl = MixingController.load("runs/policy", domains=sampler.domains)
    probe = DynamicsProbe(model, sampler.domains)           # hooks on 3 monitored layers
    sampler.set_weights(ctl.weights)                         # uniform first interval
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
import torch
from torch import nn

from acodm.dynamics.alignment import GradientAlignment
from acodm.dynamics.features import (
    Dynamics,
    LayerStats,
    LossTracker,
    measure_interval,
    permute_domains,
)
from acodm.envs.spaces import ObservationSpec, SpaceError, build_observation
from acodm.mixers.base import IntervalFeedback, Mixer, MixerContext, MixerError
from acodm.mixers.spec import register_mixer, require_arg
from acodm.policies.export import MixingPolicy, PolicyError, check_domains

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
    """

    def __init__(
        self,
        policy: MixingPolicy,
        domains: Sequence[str],
        *,
        n_layers: int | None = None,
        allow_reorder: bool = False,
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

    @classmethod
    def load(
        cls,
        path: str | Path,
        domains: Sequence[str],
        *,
        n_layers: int | None = None,
        allow_reorder: bool = False,
    ) -> MixingController:
        """Load ``path`` (export folder or ``policy.json``; never unpickles) for ``domains``."""
        return cls(MixingPolicy.load(path), domains, n_layers=n_layers, allow_reorder=allow_reorder)

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
        """Weights for the next interval (run order) from the interval that just ended; kept."""
        obs = self.observation(dynamics)
        self.last_observation = obs
        w = np.asarray(self.policy.weights(obs), dtype=np.float64)  # the policy's order
        if self._order is not None:
            w_run = np.empty_like(w)
            w_run[list(self._order)] = w
            w = w_run
        self.weights = w
        return self.weights.copy()

    def weight_dict(self) -> dict[str, float]:
        """The current weights by domain name."""
        return {d: float(w) for d, w in zip(self.domains, self.weights, strict=True)}


# ----------------------------------------------------------------------------- probe


def _effective_rank(rank: int | None, modules: Sequence[tuple[str, nn.Linear]]) -> int | None:
    """As the trainer: exact accumulators where a projection would cost more."""
    from acodm.trainer import effective_rank

    return effective_rank(rank, list(modules))


class DynamicsProbe:
    """Measure a torch loop's per-interval :class:`Dynamics`, as acodm's trainer does.

    Wraps :class:`GradientAlignment` (hooks on the monitored layers: per-domain gradients in
    the normal backward), :class:`LayerStats` and :class:`LossTracker`. Per micro-batch:
    :meth:`set_domains` before the forward, :meth:`record` after it (per-sequence losses of
    the same forward); at the end of an interval :meth:`interval_end`. Single process: in
    DDP, the alignment is all-reduced but per-domain losses are this rank's only.

    Args:
        model: the causal LM being trained (its monitored layers are hooked at once).
        domains: the run's domain names (their order gives the domain ids).
        monitored: ``(name, nn.Linear)`` pairs; default :func:`acodm.models.monitored_layers`
            with ``count`` layers (what acodm's trainer uses).
        rank: projection rank of the alignment (exact where cheaper, as in the trainer).
    """

    def __init__(
        self,
        model: nn.Module,
        domains: Sequence[str],
        *,
        count: int = 3,
        monitored: Sequence[tuple[str, nn.Linear]] | None = None,
        rank: int | None = 256,
        seed: int = 0,
    ) -> None:
        from acodm.models import distinct_layers, monitored_layers

        self.domains = tuple(domains)
        self.k = len(self.domains)
        mods = list(monitored) if monitored is not None else monitored_layers(model, count=count)
        self.monitored = mods
        hooked = distinct_layers(mods)  # a small model lists a layer twice (as the trainer)
        self.alignment = GradientAlignment(
            hooked, self.k, rank=_effective_rank(rank, hooked), seed=seed
        )
        self.layer_stats = LayerStats(mods)
        self.loss_tracker = LossTracker(self.k)
        self._sums = np.zeros(self.k)
        self._counts = np.zeros(self.k)

    @property
    def n_layers(self) -> int:
        return len(self.monitored)

    def set_domains(self, seq_domains: torch.Tensor | np.ndarray | Sequence[int]) -> None:
        """Domain id of each sequence of the next forward, ``(B,)``; call before it."""
        self.alignment.set_domains(torch.as_tensor(seq_domains).detach().cpu())

    def record(
        self, seq_loss: torch.Tensor | np.ndarray, seq_domains: torch.Tensor | np.ndarray
    ) -> None:
        """Add a micro-batch's per-sequence losses ``(B,)`` with their domain ids ``(B,)``."""
        loss = torch.as_tensor(seq_loss).detach().double().cpu().numpy().reshape(-1)
        ids = torch.as_tensor(seq_domains).detach().cpu().numpy().reshape(-1).astype(np.int64)
        if loss.shape != ids.shape:
            raise MixerError(f"seq_loss {loss.shape} and seq_domains {ids.shape} must match")
        if ids.size and (ids.min() < 0 or ids.max() >= self.k):
            raise MixerError(f"domain ids must be in [0, {self.k}), got {ids.tolist()}")
        ok = np.isfinite(loss)
        np.add.at(self._sums, ids[ok], loss[ok])
        np.add.at(self._counts, ids[ok], 1.0)

    def interval_feedback(
        self, step: int, total_steps: int, epochs: np.ndarray | Sequence[float] | None = None
    ) -> IntervalFeedback:
        """Close the interval: its :class:`IntervalFeedback` (``.dynamics`` set); resets."""
        counts = self._counts.copy()
        raw = np.where(counts > 0, self._sums / np.maximum(counts, 1), np.nan)
        self.alignment.all_reduce()
        ep = np.zeros(self.k) if epochs is None else np.asarray(epochs, dtype=np.float64)
        dyn = measure_interval(
            step=int(step),
            total_steps=total_steps,
            raw_loss=raw,
            counts=counts,
            epochs=ep,
            loss_tracker=self.loss_tracker,
            alignment=self.alignment,
            layer_stats=self.layer_stats,
        )
        self._sums[:] = 0
        self._counts[:] = 0
        self.alignment.reset()
        return IntervalFeedback(int(step), raw, counts, ep, dynamics=dyn)

    def interval_end(
        self, step: int, total_steps: int, epochs: np.ndarray | Sequence[float] | None = None
    ) -> Dynamics:
        """Close the interval and return its :class:`Dynamics` (``step`` optimizer steps done)."""
        return self.interval_feedback(step, total_steps, epochs).need_dynamics("the probe")

    def close(self) -> None:
        """Remove the hooks."""
        self.alignment.remove()


# ----------------------------------------------------------------------------- mixer


class ActorMixer(Mixer):
    """``actor:PATH``: an exported actor sets the weights from the run's own dynamics.

    The policy is loaded at construction (a bad path fails before the model is built);
    :meth:`setup` checks the domains; the observation length (the monitored layer count) is
    checked at the first update, the first place the run's layers are seen. Needs the
    trainer's dynamics (``TrainConfig.dynamics=True``, the default).
    """

    name = "actor"

    def __init__(self, path: str | Path, *, reorder: bool = False) -> None:
        super().__init__()
        self.path = str(path)
        self.reorder = bool(reorder)
        try:
            self.policy = MixingPolicy.load(path)
            _observation_spec(self.policy)
        except PolicyError as e:
            raise MixerError(str(e)) from e
        self.controller: MixingController | None = None

    def describe(self) -> str:
        return f"actor:{self.path}" + (",reorder=1" if self.reorder else "")

    def _prepare(self, ctx: MixerContext) -> None:
        try:
            self.controller = MixingController(self.policy, ctx.domains, allow_reorder=self.reorder)
        except PolicyError as e:
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
    path may hold commas)."""
    path = require_arg("actor", arg, "actor:runs/policy")
    head, sep, tail = path.rpartition(",")
    key, eq, value = tail.partition("=")
    if sep and eq and key.strip() == "reorder":
        if value.strip().lower() not in _REORDER:
            raise MixerError(f"actor option reorder must be 1 or 0, got {value!r}")
        return ActorMixer(head.strip(), reorder=_REORDER[value.strip().lower()])
    return ActorMixer(path)


register_mixer("actor", _factory, replace=True)
