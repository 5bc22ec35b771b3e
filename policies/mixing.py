"""The framework-agnostic mixing API: per-domain numbers in, domain weights out.

Any training loop (plain torch, JAX, a framework with its own data loader) can be driven by
an exported policy without acodm's trainer, gymnasium, stable-baselines3 or torch:

* :class:`PolicyMixer` takes, at the end of every interval of ``K`` optimizer steps
  (``mixer.interval``), the per-domain **sum of per-sequence training losses** and the
  **number of sequences** of that interval (and, when the policy observes them, the layer
  statistics, a Gram matrix of per-domain gradients, the epochs consumed), builds the same
  observation the proxy's env built (:func:`interval_dynamics`, then
  :func:`acodm.spaces.build_observation`) and returns the next interval's weights.
* :class:`MixingController` is the same for a caller that already has a
  :class:`~acodm.dynamics.interval.Dynamics` (acodm's trainer, the Hugging Face path and
  :class:`~acodm.dynamics.probe.DynamicsProbe` build one).

Importing this module imports numpy, safetensors' numpy reader and acodm's numpy-only parts
(``experiments/bench/import_time.py`` measures it); with ``backend="numpy"`` (the default of
:meth:`PolicyMixer.load`) nothing else is imported later either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from acodm.dynamics.interval import (
    AGENT_FEATURES,
    Dynamics,
    LossTracker,
    alignment_scores,
    host_array,
    permute_domains,
)
from acodm.mixers.base import MixerContext
from acodm.policies.files import (
    PolicyBase,
    PolicyError,
    check_domains,
    load_numpy_policies,
)
from acodm.spaces import (
    ActionMapping,
    ObservationSpec,
    SpaceError,
    build_observation,
)

__all__ = ["BACKENDS", "MixingController", "PolicyMixer", "interval_dynamics", "observation_spec"]

#: How an exported actor is evaluated: a torch module or numpy.
BACKENDS = ("torch", "numpy")


def load_any(path: str | Path | Sequence[str | Path], backend: str) -> PolicyBase:
    """An export (or several, an ensemble) as the ``backend``'s policy."""
    if backend == "numpy":
        return load_numpy_policies(path)
    if backend == "torch":
        from acodm.policies.export import load_policies  # imports torch

        return load_policies(path)
    raise PolicyError(f"backend must be one of {BACKENDS}, got {backend!r}")


# ----------------------------------------------------------------------------- controller


def observation_spec(policy: PolicyBase) -> ObservationSpec:
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
        policy: PolicyBase,
        domains: Sequence[str],
        *,
        n_layers: int | None = None,
        allow_reorder: bool = False,
        context: MixerContext | None = None,
    ) -> None:
        self.policy = policy
        self.spec = observation_spec(policy)
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
        backend: str = "torch",
    ) -> MixingController:
        """Load ``path`` (export folder or ``policy.json``, or several joined by ``;``, an
        ensemble; never unpickles) for ``domains``. ``backend``: ``"torch"`` (the actor as a
        torch module, :class:`~acodm.policies.export.MixingPolicy`; the default, as acodm's
        own runs use it) or ``"numpy"`` (:class:`~acodm.policies.files.NumpyPolicy`: no torch
        is imported; actions equal to float32 rounding)."""
        return cls(
            load_any(path, backend),
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


# ----------------------------------------------------------------------------- numbers in


def _vector(name: str, x: Any, n: int) -> np.ndarray:
    """``x`` as a finite float64 ``(n,)`` array (a torch tensor is read on the host)."""
    v = host_array(x)
    if v.shape != (n,):
        raise PolicyError(f"{name} must have shape ({n},), got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise PolicyError(f"{name} must be finite, got {v.tolist()}")
    return v


def interval_dynamics(
    *,
    step: int,
    total_steps: int,
    loss_sums: Any,
    counts: Any,
    tracker: LossTracker,
    n_layers: int,
    epochs: Any = None,
    weight_norm: Any = None,
    weight_distance: Any = None,
    gram: Any = None,
    grad_counts: Any = None,
    agents: Mapping[str, Any] | None = None,
    probe_loss: Any = None,
    probe_delta: Any = None,
) -> Dynamics:
    """One interval's :class:`Dynamics` from per-domain numbers a training loop computed itself.

    The same rules as acodm's own meter (:func:`acodm.dynamics.features.measure_interval`):

    * ``loss_sums`` / ``counts`` ``(k,)``: the sum of the per-sequence mean token losses and
      the number of sequences of each domain in the interval (all data-parallel ranks
      together: sum both over ranks before calling). A domain without sequences keeps its last
      loss (``tracker``, one :class:`LossTracker` per run) and its loss change is 0.
    * ``epochs`` ``(k,)``: epochs of each domain consumed so far (zeros if not given).
    * ``weight_norm`` / ``weight_distance`` ``(n_layers,)``: ``||W|| / ||W_0||`` and
      ``||W - W_0|| / ||W_0||`` of the monitored weight matrices (zeros if not given).
    * ``gram`` ``(k, k)``: ``gram[i, j] = <G_i, G_j>`` with ``G_i`` the sum over the interval
      of domain ``i``'s per-sequence loss gradients of the monitored weights (any common
      positive factor, e.g. a loss scale or a random projection's, cancels);
      ``grad_counts``: the sequences in each ``G_i`` (default ``counts``). Gives the
      alignment scores; zeros without it.
    * ``agents`` / ``probe_loss`` / ``probe_delta``: the agent console's features and the
      probe of the reward split, for policies that observe them.
    """
    sums = _vector("loss_sums", loss_sums, len(np.atleast_1d(np.asarray(counts))))
    k = sums.shape[0]
    n = _vector("counts", counts, k)
    if np.any(n < 0):
        raise PolicyError(f"counts must be >= 0, got {n.tolist()}")
    raw = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
    loss, change = tracker.update(raw)
    zeros_layers = np.zeros(n_layers)
    if gram is not None:
        g = host_array(gram)
        if g.shape != (k, k):
            raise PolicyError(f"gram must have shape ({k}, {k}), got {g.shape}")
        gc = n if grad_counts is None else _vector("grad_counts", grad_counts, k)
        scores = alignment_scores(g.astype(np.float64), gc)
    else:
        g, scores = np.zeros((k, k)), np.zeros(k)
    return Dynamics(
        step=int(step),
        progress=min(1.0, int(step) / max(int(total_steps), 1)),
        loss=loss,
        loss_change=change,
        share=n / max(float(n.sum()), 1.0),
        epochs=np.zeros(k) if epochs is None else _vector("epochs", epochs, k),
        alignment=scores,
        gram=np.asarray(g, dtype=np.float64),
        weight_norm=zeros_layers
        if weight_norm is None
        else _vector("weight_norm", weight_norm, n_layers),
        weight_distance=zeros_layers
        if weight_distance is None
        else _vector("weight_distance", weight_distance, n_layers),
        agents={a: _vector(f"agents[{a!r}]", v, k) for a, v in (agents or {}).items()},
        probe_loss=None if probe_loss is None else _vector("probe_loss", probe_loss, k),
        probe_delta=None if probe_delta is None else _vector("probe_delta", probe_delta, k),
    )


#: The argument of :meth:`PolicyMixer.update` each observed feature group reads.
_NEEDS: dict[str, str] = {
    "epochs": "epochs",
    "log_epochs": "epochs",
    "cap_left": "epochs",
    "alignment": "gram",
    "weight_norm": "weight_norm",
    "weight_distance": "weight_distance",
    **{f: "agents" for f in AGENT_FEATURES},
    "probe_loss": "probe_loss",
    "probe_delta": "probe_delta",
}


class PolicyMixer:
    """An exported policy for any training loop: per-domain numbers in, weights out.

    ::

        from acodm.policies.mixing import PolicyMixer

        mixer = PolicyMixer.load("runs/policy", domains=names, domain_tokens=tokens,
                                 total_steps=T, tokens_per_step=B * L)
        weights = mixer.weights                     # the first interval's (k,) weights
        for step in range(1, T + 1):
            ...                                     # sample by `weights`, train one step,
            ...                                     # add per-sequence losses to loss_sums[d]
            if step % mixer.interval == 0:
                weights = mixer.update(step, loss_sums, counts, epochs=epochs)
                loss_sums[:], counts[:] = 0, 0

    ``domains``: the run's domain names (the policy's, in its order unless
    ``allow_reorder``); ``domain_tokens``: training tokens per domain; ``total_steps`` and
    ``tokens_per_step`` (all ranks together): the run's budget. From these the policy's prior
    (a residual policy acts around the run's own UniMax / natural prior) and epoch caps are
    computed, as :class:`MixingController` does for acodm's runs. ``n_layers``: the monitored
    layer count the policy was trained with is checked against it when given.

    :meth:`update` refuses a call that leaves out a number the policy observes (e.g. ``gram``
    for the ``alignment`` feature): the observation would silently differ from the proxy's.
    ``state_dict`` / ``load_state_dict`` carry the weights and the loss memory across a
    resume (plain JSON-able values).
    """

    def __init__(self, controller: MixingController, total_steps: int) -> None:
        self.controller = controller
        self.total_steps = int(total_steps)
        self.tracker = LossTracker(controller.k)
        self.needs = sorted({_NEEDS[f] for f in controller.spec.features if f in _NEEDS})

    @classmethod
    def load(
        cls,
        path: str | Path | Sequence[str | Path],
        *,
        domains: Sequence[str],
        domain_tokens: Sequence[float] | np.ndarray,
        total_steps: int,
        tokens_per_step: int,
        allow_reorder: bool = False,
        n_layers: int | None = None,
        backend: str = "numpy",
    ) -> PolicyMixer:
        """Load ``path`` (an export folder, its ``policy.json``, or several joined by ``;``:
        an ensemble) for a run; ``backend="numpy"`` imports no torch."""
        policy = load_any(path, backend)
        ctx = MixerContext(
            tuple(domains),
            np.asarray(domain_tokens, dtype=np.float64),
            int(total_steps),
            int(tokens_per_step),
            interval=policy.interval,
        )
        ctl = MixingController(
            policy, domains, n_layers=n_layers, allow_reorder=allow_reorder, context=ctx
        )
        return cls(ctl, total_steps)

    @property
    def interval(self) -> int:
        """Optimizer steps per decision (the policy's K)."""
        return self.controller.interval

    @property
    def domains(self) -> tuple[str, ...]:
        return self.controller.domains

    @property
    def n_layers(self) -> int:
        """The monitored-layer count the policy reads (``weight_norm`` / ``weight_distance``)."""
        return self.controller.spec.n_layers

    @property
    def weights(self) -> np.ndarray:
        """The current weights, ``(k,)`` float64 in the run's domain order (a copy)."""
        return self.controller.weights.copy()

    def update(
        self,
        step: int,
        loss_sums: Any,
        counts: Any,
        *,
        epochs: Any = None,
        weight_norm: Any = None,
        weight_distance: Any = None,
        gram: Any = None,
        grad_counts: Any = None,
        agents: Mapping[str, Any] | None = None,
        probe_loss: Any = None,
        probe_delta: Any = None,
    ) -> np.ndarray:
        """The weights of the next interval from the one that ended at ``step`` (optimizer
        steps done); arguments as :func:`interval_dynamics`, in the run's domain order."""
        given = {
            "epochs": epochs,
            "weight_norm": weight_norm,
            "weight_distance": weight_distance,
            "gram": gram,
            "agents": agents,
            "probe_loss": probe_loss,
            "probe_delta": probe_delta,
        }
        missing = [name for name in self.needs if given[name] is None]
        if missing:
            feats = [f for f in self.controller.spec.features if _NEEDS.get(f) in missing]
            raise PolicyError(
                f"this policy observes {feats}: pass {missing} to update() (see "
                "acodm.policies.mixing.interval_dynamics for what each one is)"
            )
        dyn = interval_dynamics(
            step=step,
            total_steps=self.total_steps,
            loss_sums=loss_sums,
            counts=counts,
            tracker=self.tracker,
            n_layers=self.n_layers,
            **given,
            grad_counts=grad_counts,
        )
        return self.controller.observe(dyn)

    def state_dict(self) -> dict[str, Any]:
        """The weights and the loss memory (JSON-able): resume with :meth:`load_state_dict`."""
        return {"weights": self.controller.weights.tolist(), "loss": self.tracker.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        w = np.asarray(state["weights"], dtype=np.float64)
        if w.shape != (self.controller.k,):
            raise PolicyError(
                f"saved weights have shape {w.shape}, expected ({self.controller.k},)"
            )
        self.controller.weights = w
        self.tracker.load_state_dict(list(state["loss"]))
