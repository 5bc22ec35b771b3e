"""One meter for every training loop: per-sequence losses and each interval's :class:`Dynamics`.

acodm's :class:`~acodm.trainer.Trainer` owns a :class:`DynamicsProbe`; the Hugging Face
``Trainer`` path (:mod:`acodm.policies.hf`) and any hand-written torch loop use one too. So all
three measure an interval by the same code (per-domain losses of the training forward pass,
sample shares, the gradient-alignment Gram from hooks, layer statistics) and a policy reads
the same observation whichever loop it drives. A feature is added here (or in
:func:`~acodm.dynamics.features.measure_interval`), never in one loop only.

Per micro-batch, in training order::

    probe.set_domains(ids)                         # (B,) domain ids, before the forward
    seq_loss = window_losses(model, tokens)        # (B,) fp32, the same forward pass
    seq_loss.mean().backward()
    probe.record(seq_loss, ids)
    ...                                            # optimizer step (the trainer: end_step)
    feedback = probe.interval_feedback(step, total_steps, epochs=sampler.epochs())

A new interval begins at the first :meth:`DynamicsProbe.set_domains` (or
:meth:`~DynamicsProbe.record`) after :meth:`~DynamicsProbe.interval_feedback`, so between two
intervals the closed one's alignment state (credits, reference) is still readable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from acodm import distributed as dist
from acodm.dynamics.alignment import AlignmentError, GradientAlignment
from acodm.dynamics.features import Dynamics, LayerStats, LossTracker, measure_interval
from acodm.dynamics.layers import weight_io
from acodm.mixers.base import IntervalFeedback

__all__ = ["DynamicsProbe", "effective_rank", "sequence_losses", "window_losses"]


def sequence_losses(
    logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence, (B,) fp32.

    ``logits`` (B, L, V) and ``targets`` (B, L) already aligned (the targets of position
    ``t`` at ``t``). With ``ignore_index`` (e.g. HF's ``-100`` padding) the mean runs over
    each sequence's other targets; without it over all ``L`` (acodm's packed windows).
    """
    tok = F.cross_entropy(
        logits.float().flatten(0, 1),
        targets.flatten(),
        ignore_index=-100 if ignore_index is None else ignore_index,
        reduction="none",
    ).view(targets.shape)  # (B, L)
    if ignore_index is None:
        return tok.mean(dim=1)
    valid = (targets != ignore_index).sum(dim=1).clamp_min(1)
    return tok.sum(dim=1) / valid


def window_losses(model: nn.Module, tokens: torch.Tensor, *, bf16: bool = False) -> torch.Tensor:
    """(B,) fp32 mean loss of each window ``tokens`` (B, L + 1) from one forward pass.

    The model reads ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``; ``bf16``: under bf16
    autocast (the loss itself in fp32).
    """
    autocast = (
        torch.autocast(tokens.device.type, dtype=torch.bfloat16)
        if bf16
        else contextlib.nullcontext()
    )
    with autocast:
        logits = model(input_ids=tokens[:, :-1], use_cache=False).logits  # (B, L, V)
    return sequence_losses(logits, tokens[:, 1:])


def effective_rank(rank: int | None, modules: Sequence[tuple[str, nn.Module]]) -> int | None:
    """The projection rank, or None (exact) where projecting would cost more than exact.

    A rank-r projection costs about ``r (in + out + r)`` per token and layer against
    ``in * out`` for the exact per-domain gradient; small models take the exact path.
    """
    if rank is None:
        return None
    widths = [weight_io(m) or (0, 0) for _, m in modules]
    if all(rank * (n_in + n_out + rank) >= n_in * n_out for n_in, n_out in widths):
        return None
    return rank


class DynamicsProbe:
    """Measure a training loop's per-interval :class:`Dynamics` (what the mixing policy observes).

    Wraps :class:`GradientAlignment` (hooks on the monitored layers: per-domain gradients in
    the normal backward), :class:`LayerStats` and :class:`LossTracker`. Per micro-batch:
    :meth:`set_domains` before the forward, :meth:`record` after it (per-sequence losses of
    the same forward); at the end of an interval :meth:`interval_feedback` (or
    :meth:`interval_end` for the :class:`Dynamics` alone).

    Losses are summed where they are recorded (no host sync per micro-batch on a GPU). A loop
    that wants acodm's trainer's rules calls :meth:`end_step` after each optimizer step: the
    step's losses are summed over DDP ranks and dropped when a loss or the gradient norm was
    not finite. Without it, non-finite sequences are dropped one by one and, in DDP, the
    per-domain losses are this rank's (the alignment is all-reduced either way).

    Args:
        model: the causal LM being trained (its monitored layers are hooked at once).
        domains: the run's domain names (their order gives the domain ids).
        count: monitored layers chosen by relative depth (:func:`acodm.dynamics.layers.monitored_layers`).
        patterns: name patterns for the monitored layers instead of ``count``.
        monitored: ``(name, module)`` pairs, instead of ``count`` / ``patterns`` (any module
            with a 2-D weight: :func:`acodm.dynamics.layers.weight_io`).
        rank: projection rank of the alignment (exact where cheaper: :func:`effective_rank`).
        seed: seeds the alignment's projections.
        device: where the alignment's buffers live (default: each layer's weight device).
        alignment: False measures no alignment, Gram or layer statistics (zeros; no hooks).
    """

    def __init__(
        self,
        model: nn.Module,
        domains: Sequence[str],
        *,
        count: int = 3,
        patterns: Sequence[str] | None = None,
        monitored: Sequence[tuple[str, nn.Module]] | None = None,
        rank: int | None = 256,
        seed: int = 0,
        device: torch.device | str | None = None,
        alignment: bool = True,
    ) -> None:
        from acodm.dynamics.layers import distinct_layers, monitored_layers

        self.domains = tuple(domains)
        self.k = len(self.domains)
        mods: list[tuple[str, nn.Module]] = (
            list(monitored)
            if monitored is not None
            else list(monitored_layers(model, count=count, patterns=list(patterns or []) or None))
        )
        self.monitored = mods
        hooked = distinct_layers(mods)  # a small model lists a layer twice
        self.alignment: GradientAlignment | None = (
            GradientAlignment(
                hooked, self.k, seed=seed, device=device, rank=effective_rank(rank, hooked)
            )
            if alignment
            else None
        )
        self.layer_stats = LayerStats(mods)
        self.loss_tracker = LossTracker(self.k)
        where = torch.device(device) if device is not None else torch.device("cpu")
        # rows: loss sums and counts of finite sequences, count of non-finite ones; (3, k)
        self._step = torch.zeros(3, self.k, dtype=torch.float64, device=where)
        self._interval = torch.zeros(2, self.k, dtype=torch.float64, device=where)
        self._open = False  # the first set_domains / record begins an interval
        self._reduced = False
        self.loss_sums = np.zeros(self.k)  # (k,) of the last closed interval

    @property
    def n_layers(self) -> int:
        """The monitored-layer count (the per-layer feature length)."""
        return len(self.monitored)

    # -- one interval ------------------------------------------------------------------
    def _begin(self) -> None:
        if self._open:
            return
        self._step.zero_()
        self._interval.zero_()
        if self.alignment is not None:
            self.alignment.reset()
        self._open, self._reduced = True, False

    def set_domains(self, seq_domains: torch.Tensor | np.ndarray | Sequence[int]) -> None:
        """Domain id of each sequence of the next forward, ``(B,)``; call before it.

        Pass host ids (a numpy array or CPU tensor, as the sampler gives) to avoid a sync.
        """
        self._begin()
        if self.alignment is not None:
            ids = (
                seq_domains.detach().cpu() if isinstance(seq_domains, torch.Tensor) else seq_domains
            )
            self.alignment.set_domains(ids)

    def record(
        self, seq_loss: torch.Tensor | np.ndarray, seq_domains: torch.Tensor | np.ndarray
    ) -> None:
        """Add a micro-batch's per-sequence losses ``(B,)`` with their domain ids ``(B,)``.

        Device tensors stay on the device (no sync); ids on the host are range-checked.
        """
        self._begin()
        loss = torch.as_tensor(seq_loss).detach().reshape(-1)
        ids = torch.as_tensor(seq_domains).detach().reshape(-1)
        if loss.shape != ids.shape:
            raise AlignmentError(
                f"seq_loss {tuple(loss.shape)} and seq_domains {tuple(ids.shape)} must match"
            )
        if ids.device.type == "cpu" and ids.numel() and (ids.min() < 0 or ids.max() >= self.k):
            raise AlignmentError(f"domain ids must be in [0, {self.k}), got {ids.tolist()}")
        if self._step.device != loss.device:  # follow the model (e.g. moved to a GPU later)
            self._step = self._step.to(loss.device)
            self._interval = self._interval.to(loss.device)
        ids = ids.to(loss.device, torch.int64)
        loss = loss.double()
        finite = torch.isfinite(loss)
        self._step[0].index_add_(0, ids, torch.where(finite, loss, torch.zeros_like(loss)))
        self._step[1].index_add_(0, ids, finite.double())
        self._step[2].index_add_(0, ids, (~finite).double())

    def end_step(self, grad_norm: torch.Tensor | None = None) -> torch.Tensor:
        """Close one optimizer step: its losses join the interval unless they are dropped.

        Sums the step's losses over DDP ranks, then drops the whole step when any of its
        losses (or ``grad_norm``) is not finite. Returns that as a 0-dim bool tensor on the
        device, without a host sync (acodm's trainer skips the optimizer step with it).
        """
        self._begin()
        dist.all_reduce_sum(self._step)
        bad = self._step[2].sum() > 0
        if grad_norm is not None:
            bad = bad | ~torch.isfinite(grad_norm)
        good = self._step[:2]
        self._interval += torch.where(bad, torch.zeros_like(good), good)
        self._step.zero_()
        return bad

    def reduce(self) -> None:
        """Sum the interval's alignment over DDP ranks (once; :meth:`interval_feedback` calls it).

        Call it first to read the reduced alignment before the interval is closed (the agent
        console takes its credits and reference gradient there)."""
        if self.alignment is not None and not self._reduced:
            self.alignment.all_reduce()
        self._reduced = True

    def interval_feedback(
        self,
        step: int,
        total_steps: int,
        epochs: np.ndarray | Sequence[float] | None = None,
        *,
        agents: Mapping[str, np.ndarray] | None = None,
        console_alpha: Mapping[str, float] | None = None,
    ) -> IntervalFeedback:
        """Close the interval: its :class:`IntervalFeedback` (``.dynamics`` set).

        ``step``: optimizer steps done; ``epochs``: epochs of each domain consumed so far
        (zeros if not given); ``agents`` / ``console_alpha``: the agent console's features
        and weights of the interval, when the run has one. One host sync.
        """
        pending = self._step[:2].clone()
        self._interval += pending  # a loop without end_step: everything recorded counts
        self._step.zero_()
        sums, counts = self._interval.cpu().numpy()
        raw = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        self.reduce()
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
            agents=agents,
            console_alpha=console_alpha,
        )
        self.loss_sums = sums
        self._open = False
        return IntervalFeedback(int(step), raw, counts, ep, dynamics=dyn)

    def interval_end(
        self, step: int, total_steps: int, epochs: np.ndarray | Sequence[float] | None = None
    ) -> Dynamics:
        """Close the interval and return its :class:`Dynamics` (``step`` optimizer steps done)."""
        return self.interval_feedback(step, total_steps, epochs).need_dynamics("the probe")

    def disabled(self) -> contextlib.AbstractContextManager[None]:
        """``with probe.disabled(): evaluate(model)``: forwards that are not training."""
        return self.alignment.disabled() if self.alignment is not None else contextlib.nullcontext()

    def close(self) -> None:
        """Remove the hooks."""
        if self.alignment is not None:
            self.alignment.remove()
