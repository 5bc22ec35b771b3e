"""Per-domain gradient alignment from hooks in the normal training pass (METHOD.md, "Reward").

What is computed
----------------
For a few monitored weight matrices ``W_m`` (linear maps: ``nn.Linear`` or any module with a 2-D
weight, :func:`acodm.dynamics.layers.weight_io`; the paper uses the MLP output
projections of 3 upper layers), domain ``i``'s weight gradient over an interval is

    G_i^m = sum_{t in domain i} d_t x_t^T                      (out, in)

where ``x_t`` is the layer's input at token ``t`` and ``d_t = dL/dy_t`` the gradient of its output
(METHOD.md, "Per-domain gradients without extra passes"). The reward needs only the ``k x k`` Gram
matrix ``<g_i, g_j> = sum_m <G_i^m, G_j^m>_F``, so instead of the paper's per-domain copies of the
full gradient (O(k P) memory, extra passes) a fixed Gaussian projection of both sides is kept:

    A_i^m = P_out^m G_i^m (P_in^m)^T = sum_{t in i} (P_out^m d_t)(P_in^m x_t)^T     (r, r)

with ``P_in (r, in)``, ``P_out (r, out)`` entries i.i.d. ``N(0, 1/r)``, drawn once per module from a
generator seeded by ``(seed, module index)`` (or anew each interval: ``redraw=True``). ``E[P^T P] = I`` and the two projections are
independent, so ``<A_i, A_j>_F`` is an **unbiased** estimate of ``<G_i, G_j>_F``. Its variance
(Gaussian quadratic forms, conditioning on one side then the other):

    E[(<A_i, A_j> - <G_i, G_j>)^2] <= (4 / r) (1 + 1 / r) ||G_i||_F^2 ||G_j||_F^2

per module; modules use independent projections, so the same bound holds for the sum over modules
with ``G_ii G_jj`` on the right. The error of the *cosine* between two domains is thus at most
about ``2 / sqrt(r)`` (RMS), whatever the layer sizes. The bound is attained by rank-1 gradients;
measured squared errors were 0.02-0.7 of it (tests; GPT-NeoX tiny to 410M, CPU and H200). What the
reward uses is finer than the Gram: the *spread* of the cosines between domains, which at random
init can be smaller than that error (410M, 16 domains: cosines 0.47 +- 0.024; correlation of
projected with exact scores 0.54 / 0.46 / 0.67 / 0.84 at r = 64 / 128 / 256 / 512, while the
off-diagonal Gram correlation was 0.96 / 0.97 / 0.99 / 0.995). ``rank=None`` keeps the exact
``(k, out, in)`` fp32 accumulators instead (small models, tests).

How it is captured (no extra forward/backward pass)
---------------------------------------------------
A forward hook on each monitored Linear sees its input ``x`` (B, T, in) (or (B*T, in); tokens
inherit the domain of their sequence, given by :meth:`GradientAlignment.set_domains`). In the
projected path it stores ``P_in x`` (B*T, r) (not ``x``: nothing of the activations is kept
alive, so activation checkpointing keeps its savings) and registers a tensor hook on the output;
that hook receives ``d`` (B, T, out), projects it, forms the per-sequence ``(r, r)`` products
with one ``bmm`` and ``index_add``\\ s them into the ``(k, r, r)`` accumulator. ``(B, T, out, in)`` is
never formed. Cost per monitored layer: ``N r (in + out + r)`` multiply-adds for ``N`` tokens,
against ``3 N in out`` for the layer's own forward+backward, and ``N r`` floats held from forward to
backward. Compute saving needs ``r (in + out + r) < in out`` (else the exact path computes less,
but holds ``k out in`` floats).

Scale: the Gram is defined up to a common positive factor
-----------------------------------------------------------
Hooks see the gradient of whatever loss is backpropagated. Mean-reduced losses, ``1/accum``
gradient-accumulation scaling, DDP's averaging and a constant AMP loss scale multiply every
``d_t`` by the same positive constant ``c``, hence the Gram by ``c^2``: the alignment scores
(z-scored, :func:`alignment_scores`) do not change. This holds as long as the factor is the same
for every micro-batch of the interval (equal-size micro-batches; packed pretraining). If a
``GradScaler``'s scale changes inside an interval, call :meth:`GradientAlignment.set_loss_scale`
before each backward so that contributions are unscaled. Sequences whose contribution is not
finite (fp16 overflow steps, which ``GradScaler`` skips) are dropped, and not counted.

Usage
-----
>>> ga = GradientAlignment([(n, m) for n, m in model.named_modules() if n in names], k)  # doctest: +SKIP
>>> for batch in micro_batches:                                       # doctest: +SKIP
...     ga.set_domains(batch.domains)           # (B,) int64, before EVERY micro-batch
...     model(batch.inputs, labels=batch.labels).loss.backward()
>>> ga.all_reduce()                             # DDP: sum over ranks (no-op otherwise)  # doctest: +SKIP
>>> scores = alignment_scores(ga.gram(), ga.counts()); ga.reset()        # doctest: +SKIP

Limits: one backward per forward (a second backward of the same graph, ``retain_graph=True``,
is not counted again); with *reentrant* activation checkpointing the hooks fire during the
recomputation, so :meth:`~GradientAlignment.set_domains` of the next micro-batch must come after
this one's backward (the usual loop order); the exact path keeps each monitored layer's input
until its backward, which undoes checkpointing's savings for those layers (small models only).
``torch.compile``: the hooks are excluded from compilation with ``torch.compiler.disable`` (one
graph break at each monitored layer; traced, they would recompile at every ``set_domains``).
Checked once (CPU, tiny GPT-NeoX, torch 2.13): same Gram as eager, no recompiles caused by the
hooks; the tests run eager mode only. On CUDA, ``index_add_`` sums in a nondeterministic order
(rounding-level differences between runs).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acodm.dynamics.interval import (
    NORM_EPS as NORM_EPS,
)
from acodm.dynamics.interval import (
    SCORE_CLIP as SCORE_CLIP,
)
from acodm.dynamics.interval import (
    AlignmentError,
    alignment_scores,
    raw_alignment_scores,
)

# the scores (numpy, no torch) live with the Dynamics they feed; re-exported from here
from acodm.dynamics.layers import weight_io

__all__ = ["AlignmentError", "GradientAlignment", "alignment_scores", "raw_alignment_scores"]


@dataclass
class _Monitored:
    """One monitored linear map (a module with a 2-D weight) with its projections and
    accumulator."""

    name: str
    module: nn.Module
    n_in: int  # the input's last dimension (layers.weight_io)
    n_out: int  # the output's
    p_in: Tensor | None  # (r, in) fp32, None on the exact path
    p_out: Tensor | None  # (r, out) fp32
    acc: Tensor  # (k, r, r) projected, or (k, out, in) exact; fp32
    handle: Any = None  # RemovableHandle of the forward hook
    reference: Tensor | None = None  # like acc[0]: direction for per-sequence credits
    low: dict[str, Tensor] = field(default_factory=dict)  # bf16 copies: "in" / "out"


@dataclass
class _Pending:
    """What a forward call leaves for the matching backward call (freed once used)."""

    saved: Tensor | None  # (N, r) fp32 projected input, or (N, in) raw input on the exact path
    ids: Tensor  # (B,) int64 domain of each sequence (-1: ignored)
    tokens_per_seq: int  # T; N = B * T
    version: int  # micro-batch counter at forward time (counts are added once per version)
    loss_scale: float | Tensor


_EAGER: dict[Callable[..., Any], Callable[..., Any]] = {}


def _eager(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compiler.disable(fn)``, made once per function (and only when first needed:
    it imports torch._dynamo, about 3 s). Hooks run eagerly even inside compiled code."""
    wrapped = _EAGER.get(fn)
    if wrapped is None:
        wrapped = _EAGER[fn] = torch.compiler.disable(fn)
    return wrapped


def _projection(
    seed: int, index: int, rank: int, n_in: int, n_out: int, interval: int = 0
) -> tuple[Tensor, Tensor]:
    """Fixed Gaussian ``P_in (r, in)``, ``P_out (r, out)`` with entries ``N(0, 1/r)``.

    Drawn on the CPU from a generator seeded by ``(seed, index)`` (mixed by numpy's
    ``SeedSequence``), so the same seed gives the same matrices on every device and rank.
    ``interval > 0`` (``redraw=True`` only) seeds with ``(seed, index, interval)``.
    """
    key = [seed, index] if interval == 0 else [seed, index, interval]
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint32)
    gen = torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))
    std = rank**-0.5
    p_in = torch.randn(rank, n_in, generator=gen) * std
    p_out = torch.randn(rank, n_out, generator=gen) * std
    return p_in, p_out


def _tokens_per_sequence(x: Tensor, batch: int) -> int:
    """Tokens per sequence ``T`` of a Linear input: (B, ..., in) or flattened (B*T, in)."""
    if x.dim() >= 3:
        if x.shape[0] != batch:
            raise AlignmentError(
                f"a monitored layer got input of shape {tuple(x.shape)} but set_domains() gave "
                f"{batch} sequences; the first dimension must be the batch"
            )
        return int(np.prod(x.shape[1:-1]))
    n = x.shape[0] if x.dim() == 2 else 1
    if n % batch:
        raise AlignmentError(
            f"a monitored layer got {n} flattened tokens, not a multiple of the {batch} "
            "sequences given to set_domains(); tokens must be laid out (B, T) row-major"
        )
    return n // batch


class GradientAlignment:
    """Accumulate per-domain weight gradients of monitored linear maps; return their Gram.

    Args:
        modules: ``(name, module)`` pairs to monitor (e.g. MLP output projections): an
            ``nn.Linear`` or any module with a 2-D weight that maps its input's last
            dimension to its output's (:func:`acodm.dynamics.layers.weight_io`: an ``(out,
            in)`` weight as tensor-parallel linear layers keep per rank, or transformers'
            ``Conv1D``). Under tensor parallelism each rank measures its shard; the Gram is
            then a sum over the shards (reduce it over the tensor-parallel group).
        num_domains: ``k >= 2``.
        rank: projection rank ``r`` on both sides (``(k, r, r)`` fp32 per module); ``None``
            keeps exact ``(k, out, in)`` fp32 accumulators (small models, tests).
        seed: seeds the projections (with the module's index in ``modules``).
        device: where projections and accumulators are created; default: each module's weight
            device. They move to the activations' device at first use (a model moved after
            construction keeps working; accumulated values are kept).
        redraw: draw new projections at every :meth:`reset` (seeded by ``(seed, module index,
            interval number)``, identical on all ranks). With one fixed projection the estimate
            is unbiased over the draw but, while gradients keep their directions, its error is
            a bias that persists across intervals; redrawn, the errors of successive intervals
            are independent and average out in the agent's value estimates. Default off: one
            fixed projection, as METHOD.md describes.

    Hooks are active from construction; see :meth:`disabled` for evaluation passes.
    """

    def __init__(
        self,
        modules: Sequence[tuple[str, nn.Module]],
        num_domains: int,
        *,
        rank: int | None = 128,
        seed: int = 0,
        device: torch.device | str | None = None,
        redraw: bool = False,
    ) -> None:
        if num_domains < 2:
            raise AlignmentError(f"num_domains must be >= 2, got {num_domains}")
        if rank is not None and rank < 1:
            raise AlignmentError(f"rank must be >= 1 or None (exact), got {rank}")
        if not modules:
            raise AlignmentError("no modules to monitor: pass at least one (name, module)")
        names = [n for n, _ in modules]
        if len(set(names)) != len(names):
            raise AlignmentError(f"monitored module names must be unique, got {names}")
        self.num_domains = num_domains
        self.rank = rank
        self.seed = seed
        self._enabled = True
        self._removed = False
        self._reduced = False
        self._ids: Tensor | None = None  # (B,) int64 domains of the next micro-batch
        self._version = 0  # incremented by set_domains
        self._counted_version = -1  # last micro-batch whose tokens were counted
        self._loss_scale: float | Tensor = 1.0
        self.redraw = redraw
        self._interval = 0  # number of reset() calls: seeds redrawn projections
        # Per-sequence credit <g_b, reference> (set_reference): micro-batch version -> (B,)
        self._credits: dict[int, Tensor] = {}
        self._has_reference = False
        # The hooks reference self through the modules only (no self-cycle): after remove(),
        # dropping the last reference frees the accumulators at once, without waiting for gc.
        fwd = _eager(type(self)._forward_hook)
        self._mods: list[_Monitored] = []
        for index, (name, module) in enumerate(modules):
            io = weight_io(module)
            if io is None:
                raise AlignmentError(
                    f"monitored module {name!r} is a {type(module).__name__} without a 2-D "
                    "weight; monitor linear maps (nn.Linear, a parallel linear layer, "
                    "transformers' Conv1D)"
                )
            n_in, n_out = io
            weight = module.weight
            assert isinstance(weight, Tensor)
            dev = torch.device(device) if device is not None else weight.device
            if dev.type == "meta":  # deferred init: move to the activations' device on first use
                dev = torch.device("cpu")
            p_in = p_out = None
            if rank is None:
                acc = torch.zeros(num_domains, n_out, n_in, device=dev)
            else:
                p_in, p_out = (p.to(dev) for p in _projection(seed, index, rank, n_in, n_out))
                acc = torch.zeros(num_domains, rank, rank, device=dev)
            mon = _Monitored(name, module, n_in, n_out, p_in, p_out, acc)
            hook = functools.partial(fwd, self, mon)
            mon.handle = module.register_forward_hook(hook, with_kwargs=True)
            self._mods.append(mon)
        self._counts = torch.zeros(num_domains, dtype=torch.int64, device=self._mods[0].acc.device)

    # ------------------------------------------------------------------ public API

    @property
    def names(self) -> list[str]:
        """Names of the monitored modules, in order."""
        return [m.name for m in self._mods]

    @property
    def enabled(self) -> bool:
        return self._enabled and not self._removed

    def set_domains(self, seq_domains: Tensor | np.ndarray | Sequence[int]) -> None:
        """Domain id of each sequence of the NEXT micro-batch's forward/backward, shape (B,).

        Call once before every micro-batch. ``-1`` marks a sequence to ignore (padding). Ids are
        validated here (pass a CPU tensor or array, as the sampler gives, to avoid a device sync).
        """
        ids = torch.as_tensor(seq_domains)
        if ids.dim() != 1 or ids.numel() == 0:
            raise AlignmentError(
                f"seq_domains must have shape (B,), B >= 1; got {tuple(ids.shape)}"
            )
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise AlignmentError(f"seq_domains must be integer domain ids, got {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < -1 or hi >= self.num_domains:
            raise AlignmentError(
                f"domain ids must be in [0, {self.num_domains}) (or -1 to ignore); got [{lo}, {hi}]"
            )
        self._ids = ids.to(device=self._counts.device, dtype=torch.int64, non_blocking=True)
        self._version += 1

    def set_loss_scale(self, scale: float | Tensor) -> None:
        """Divide the next backward's output gradients by ``scale`` (e.g. ``scaler.get_scale()``).

        Only needed when the loss scale changes inside an interval; a constant factor leaves
        the scores unchanged (module docstring, "Scale").
        """
        self._loss_scale = scale

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        """Hooks do nothing until :meth:`enable` (evaluation passes, extra forwards)."""
        self._enabled = False

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """``with ga.disabled(): evaluate(model)`` — restores the previous state afterwards."""
        previous = self._enabled
        self._enabled = False
        try:
            yield
        finally:
            self._enabled = previous

    def reset(self) -> None:
        """Start a new interval: zero the accumulators and counts.

        Projections are kept, unless ``redraw=True``: then the next interval's are drawn.
        Gradients of a forward run before ``reset()`` whose backward comes after it land in the
        new interval (reset between optimizer steps, not between a forward and its backward).
        """
        for m in self._mods:
            m.acc.zero_()
        self._counts.zero_()
        self._credits.clear()
        self._reduced = False
        self._interval += 1
        if self.redraw and self.rank is not None:
            for index, m in enumerate(self._mods):
                p_in, p_out = _projection(
                    self.seed,
                    index,
                    self.rank,
                    m.n_in,
                    m.n_out,
                    self._interval,
                )
                m.p_in, m.p_out = p_in.to(m.acc.device), p_out.to(m.acc.device)
                m.low.clear()

    def remove(self) -> None:
        """Remove the hooks; gradients of a forward already run are ignored as well."""
        for m in self._mods:
            if m.handle is not None:
                m.handle.remove()
                m.handle = None
        self._removed = True

    def counts(self) -> Tensor:
        """(k,) int64 on the CPU: tokens per domain whose gradient was accumulated this interval.

        ``T`` tokens per sequence (including positions without a target, e.g. the last one of
        a causal LM: a factor common to all domains).
        """
        return self._counts.detach().cpu().clone()

    def gram(self) -> Tensor:
        """(k, k) float64 on the CPU: ``sum_m <G_i^m, G_j^m>_F`` (projected estimate or exact).

        ``G_i^m`` is domain i's gradient of monitored weight ``m`` summed over its tokens in the
        interval (METHOD.md, "Reward: gradient alignment"); up to a common positive factor
        (module docstring, "Scale").
        """
        k = self.num_domains
        total = torch.zeros(k, k, dtype=torch.float64)
        for m in self._mods:
            flat = m.acc.reshape(k, -1).double()  # (k, r*r) or (k, out*in)
            total += (flat @ flat.T).cpu()
        return total

    def all_reduce(self, group: Any = None) -> None:
        """Sum accumulators and counts over DDP ranks (no-op unless torch.distributed is up).

        Call once per interval, on every rank, before :meth:`gram`; then :meth:`reset`.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._reduced:
            raise AlignmentError("all_reduce() called twice in one interval; call reset() first")
        flat = torch.cat([m.acc.reshape(-1) for m in self._mods])  # one collective for all
        dist.all_reduce(flat, group=group)
        offset = 0
        for m in self._mods:
            n = m.acc.numel()
            m.acc.copy_(flat[offset : offset + n].view_as(m.acc))
            offset += n
        dist.all_reduce(self._counts, group=group)
        self._reduced = True

    def reference_gradient(self, domains: Sequence[int]) -> list[Tensor]:
        """Sum of the accumulators of ``domains`` per monitored module (copies, fp32).

        After :meth:`all_reduce`, this is the interval's summed gradient of those domains
        (projected, or exact): e.g. the reference-quality domains' gradient, for
        :meth:`set_reference`.
        """
        idx = [int(i) for i in domains]
        if not idx or min(idx) < 0 or max(idx) >= self.num_domains:
            raise AlignmentError(f"reference domains {idx} are not in [0, {self.num_domains})")
        return [m.acc[idx].sum(0) for m in self._mods]

    @property
    def has_reference(self) -> bool:
        """Whether per-sequence credits are being recorded (:meth:`set_reference`)."""
        return self._has_reference

    def reference(self) -> list[Tensor]:
        """The unit-norm reference in use, one tensor per module ([] when none is set)."""
        if not self._has_reference:
            return []
        return [m.reference for m in self._mods if m.reference is not None]

    def set_reference(
        self, reference: Sequence[Tensor] | None, *, normalized: bool = False
    ) -> None:
        """From the next micro-batch on, also record each sequence's credit ``<g_b, u>``.

        ``reference``: one tensor per monitored module shaped like its accumulator slot
        (:meth:`reference_gradient`); it is scaled to unit total norm ``u``, so the credit is
        the length of the sequence's gradient along the reference direction: to first order,
        how much one SGD step on that sequence alone lowers the reference loss (up to the
        common factor of the module docstring's "Scale"). ``None`` (or an all-zero
        reference) stops recording. Read the credits with :meth:`sequence_credits`.
        ``normalized=True``: ``reference`` is :meth:`reference` of a run being resumed, used
        as it is (bit-exact).
        """
        if reference is None:
            for m in self._mods:
                m.reference = None
            self._has_reference = False
            return
        refs = list(reference)
        if len(refs) != len(self._mods):
            raise AlignmentError(f"{len(refs)} reference tensors for {len(self._mods)} modules")
        for m, r in zip(self._mods, refs, strict=True):
            if tuple(r.shape) != tuple(m.acc.shape[1:]):
                raise AlignmentError(
                    f"reference of {m.name!r} has shape {tuple(r.shape)}, expected "
                    f"{tuple(m.acc.shape[1:])}"
                )
        if normalized:
            for m, r in zip(self._mods, refs, strict=True):
                m.reference = r.float().to(m.acc.device)
            self._has_reference = True
            return
        total = torch.stack([(r.double() ** 2).sum().cpu() for r in refs]).sum().sqrt()
        if not torch.isfinite(total) or float(total) <= 0:
            self.set_reference(None)
            return
        for m, r in zip(self._mods, refs, strict=True):
            m.reference = (r.double() / total).float().to(m.acc.device)
        self._has_reference = True

    def sequence_credits(self) -> np.ndarray:
        """Per-sequence credits of this interval, float64 on the host, micro-batch order.

        One entry per sequence given to :meth:`set_domains` since :meth:`reset` whose
        backward ran with a reference set; NaN for ignored (``-1``) or non-finite sequences.
        Local to this process (not all-reduced). One device sync.
        """
        if not self._credits:
            return np.zeros(0, dtype=np.float64)
        flat = torch.cat([self._credits[v] for v in sorted(self._credits)])
        return flat.double().cpu().numpy()

    def hand_out_credits(self, reference_domains: Sequence[int]) -> np.ndarray | None:
        """The interval's per-sequence credits, then the reference for the next interval.

        Returns :meth:`sequence_credits` (None while no reference was set: the first
        interval), then sets the reference to the interval's summed gradient of
        ``reference_domains`` (:meth:`reference_gradient`, :meth:`set_reference`). Call once
        per interval, after :meth:`all_reduce` and before :meth:`reset`: the one way the
        agent console gets its feedback.
        """
        credits = self.sequence_credits() if self.has_reference else None
        self.set_reference(self.reference_gradient(reference_domains))
        return credits

    def projection(self, name: str) -> tuple[Tensor, Tensor]:
        """The fixed ``(P_in (r, in), P_out (r, out))`` of a monitored module (projected path)."""
        m = self._find(name)
        if m.p_in is None or m.p_out is None:
            raise AlignmentError("the exact path (rank=None) has no projection")
        return m.p_in, m.p_out

    def exact_gradients(self, name: str) -> Tensor:
        """(k, out, in) fp32 per-domain summed weight gradients of a module (rank=None only).

        The live accumulator, not a copy."""
        m = self._find(name)
        if self.rank is not None:
            raise AlignmentError("exact_gradients() needs rank=None")
        return m.acc

    # ------------------------------------------------------------------ hooks

    def _find(self, name: str) -> _Monitored:
        for m in self._mods:
            if m.name == name:
                return m
        raise AlignmentError(f"no monitored module named {name!r}; known: {self.names}")

    def _to_device(self, m: _Monitored, device: torch.device) -> None:
        """Follow the activations if the model moved after construction (data preserved)."""
        if m.acc.device == device:
            return
        m.acc = m.acc.to(device)
        m.p_in = m.p_in.to(device) if m.p_in is not None else None
        m.p_out = m.p_out.to(device) if m.p_out is not None else None
        m.low.clear()

    def _project(self, m: _Monitored, t: Tensor, which: str) -> Tensor:
        """(N, n) -> (N, r) fp32. bf16 activations are projected in bf16 (fp32 accumulation in
        the matmul, no fp32 copy of the activations); everything else in fp32."""
        p = m.p_in if which == "in" else m.p_out
        assert p is not None
        if t.dtype == torch.bfloat16:
            low = m.low.get(which)
            if low is None:
                low = m.low[which] = p.to(torch.bfloat16)
            return F.linear(t, low).float()
        return F.linear(t.float(), p)

    def _forward_hook(
        self,
        m: _Monitored,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> None:
        if not self.enabled or not isinstance(output, Tensor) or not output.requires_grad:
            return  # disabled, or no backward will come (no_grad / inference / frozen)
        if self._ids is None:
            raise AlignmentError(
                f"monitored layer {m.name!r} ran with gradients before set_domains(); call "
                "ga.set_domains(batch_domains) before every micro-batch (or ga.disable())"
            )
        x: Tensor = args[0] if args else kwargs["input"]
        self._to_device(m, x.device)
        ids = self._ids.to(x.device, non_blocking=True)
        if x.shape[-1] != m.n_in or output.shape[-1] != m.n_out:
            raise AlignmentError(
                f"monitored layer {m.name!r} maps {x.shape[-1]} to {output.shape[-1]} features "
                f"but its weight reads as {m.n_in} -> {m.n_out}; monitor modules whose weight "
                "is (out, in) like nn.Linear (or (in, out) like transformers' Conv1D), as the "
                "rank computes with it"
            )
        t = _tokens_per_sequence(x, ids.numel())
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            flat = x.detach().reshape(-1, m.n_in)  # (N, in)
            saved = flat if self.rank is None else self._project(m, flat, "in")  # (N, in|r)
        pending = _Pending(saved, ids, t, self._version, self._loss_scale)
        output.register_hook(functools.partial(_eager(type(self)._grad_hook), self, m, pending))

    def _grad_hook(self, m: _Monitored, pending: _Pending, grad: Tensor) -> None:
        saved, pending.saved = pending.saved, None  # free the activations' copy right away
        if saved is None or self._removed:
            return
        ids, t = pending.ids, pending.tokens_per_seq
        with torch.no_grad(), torch.autocast(grad.device.type, enabled=False):
            d = grad.reshape(-1, m.n_out)  # (N, out)
            if self.rank is None:
                finite, dot = self._accumulate_exact(m, saved, d, ids, t, pending.loss_scale)
            else:
                finite, dot = self._accumulate_projected(m, saved, d, ids, t, pending.loss_scale)
            if dot is not None:
                dot = torch.where((ids >= 0) & finite, dot, torch.full_like(dot, math.nan))
                prev = self._credits.get(pending.version)
                self._credits[pending.version] = dot if prev is None else prev + dot
            if pending.version != self._counted_version:  # count each micro-batch once
                self._counted_version = pending.version
                if self._counts.device != ids.device:
                    self._counts = self._counts.to(ids.device)
                valid = (ids >= 0) & finite  # (B,)
                self._counts.index_add_(0, ids.clamp(min=0), valid.to(torch.int64) * t)

    def _accumulate_projected(
        self, m: _Monitored, xp: Tensor, d: Tensor, ids: Tensor, t: int, scale: float | Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """acc[i] += sum over domain i's tokens of (P_out d_t)(P_in x_t)^T.

        Returns finite (B,) and, with a reference set, each sequence's ``<A_b, u>`` (B,).
        """
        b, r = ids.numel(), xp.shape[1]
        dp = self._project(m, d, "out")  # (N, r) fp32
        # per sequence: sum_t (P_out d_t)(P_in x_t)^T  -> (B, r_out, r_in)
        contrib = torch.bmm(dp.view(b, t, r).transpose(1, 2), xp.view(b, t, r))
        if not (isinstance(scale, float) and scale == 1.0):
            contrib = contrib / scale
        finite = torch.isfinite(contrib).flatten(1).all(1)  # (B,) no host sync
        keep = (finite & (ids >= 0)).view(b, 1, 1)
        contrib = torch.where(keep, contrib, torch.zeros((), device=contrib.device))
        m.acc.index_add_(0, ids.clamp(min=0), contrib)
        dot = None if m.reference is None else (contrib * m.reference).sum((1, 2))
        return finite, dot

    def _accumulate_exact(
        self, m: _Monitored, x: Tensor, d: Tensor, ids: Tensor, t: int, scale: float | Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """acc[i] += d_i^T x_i over domain i's tokens, in fp32 (host sync: small models only).

        Returns finite (B,) and, with a reference ``R`` set, each sequence's
        ``<G_b, R> = sum_t d_t . (R x_t)`` (B,).
        """
        b = ids.numel()
        x3 = x.float().reshape(b, t, -1)  # (B, T, in)
        d3 = d.float().reshape(b, t, -1)  # (B, T, out)
        if not (isinstance(scale, float) and scale == 1.0):
            d3 = d3 / scale
        finite = torch.isfinite(d3).flatten(1).all(1)  # (B,)
        keep = finite & (ids >= 0)
        order = torch.argsort(torch.where(keep, ids, -1), stable=True)  # group by domain
        per = torch.bincount(ids[keep], minlength=self.num_domains).tolist()
        start = b - sum(per)  # dropped sequences sort first
        for i, n in enumerate(per):
            if n:
                rows = order[start : start + n]
                # sum over the domain's tokens of d_t x_t^T: (out, N_i) @ (N_i, in)
                m.acc[i] += d3[rows].reshape(-1, d3.shape[2]).T @ x3[rows].reshape(-1, x3.shape[2])
                start += n
        if m.reference is None:
            return finite, None
        dot = (d3 * (x3 @ m.reference.T)).sum((1, 2))  # (B,): sum_t d_t . (R x_t)
        return finite, dot  # the hook marks dropped sequences NaN

    def __repr__(self) -> str:
        how = "exact" if self.rank is None else f"rank={self.rank}"
        return (
            f"GradientAlignment({self.names}, k={self.num_domains}, {how}, enabled={self.enabled})"
        )


# ---------------------------------------------------------------------- scores
