"""The LM pretraining engine: a resumable, data-parallel loop driven interval by interval.

The :class:`Trainer` is the small interface the mixing environment talks to: give it the
domain weights of the next interval, it runs ``K`` optimizer steps and returns what happened
(:class:`IntervalReport`: per-domain losses from the same forward pass, sample shares,
epochs, layer statistics and the gradient-alignment Gram matrix). :func:`acodm.pretrain.pretrain`
wraps it with a mixer, evaluation, checkpoints and logging.

One optimizer step, shapes annotated (B = micro-batch, L = seq_len, V = vocab, k = domains)::

    for each of grad_accum micro-batches:
        tokens (B, L+1), domains (B,)       <- DomainSampler (weights fixed for the interval)
        logits (B, L, V)                    <- model(tokens[:, :-1])        [bf16 autocast on GPU]
        token_loss (B, L)                   <- cross_entropy(logits, tokens[:, 1:])
        seq_loss (B,) -> loss = mean / grad_accum -> backward   [alignment hooks see x and dL/dy]
        domain sums (k,) += index_add(domains, seq_loss)        [probe.record]
    clip; all-reduce domain sums, drop them and skip the step if a loss or the grad norm is not
    finite [probe.end_step]; AdamW step

Under ``torchrun`` the model is replicated (DDP, the default) or sharded (``parallel="fsdp"``:
FSDP2 ``fully_shard`` per transformer block; checkpoints then go through
``torch.distributed.checkpoint``, and a resume may change the number of ranks, the sampler
re-dealt by :func:`~acodm.data.sampler.reshard_states`).

Every measurement goes through the trainer's :class:`~acodm.dynamics.probe.DynamicsProbe`, the
same meter a Hugging Face ``Trainer`` or a plain torch loop uses; the agent console is one
plug-in (:class:`~acodm.agents.online.OnlineConsole`: ``on_batch``, ``end_interval``,
``checkpoint``, ``load``).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from acodm import distributed as dist
from acodm.checkpoint import Checkpoint, CheckpointError, load_sharded
from acodm.config import TrainConfig
from acodm.data.sampler import DomainSampler, reshard_states
from acodm.data.scored_sampler import ScoredDomainSampler
from acodm.data.store import TokenStore, open_store
from acodm.data.weights import feasible_caps, project_capped
from acodm.devices import resolve_device
from acodm.dynamics.alignment import GradientAlignment
from acodm.dynamics.features import Dynamics, LayerStats, LossTracker
from acodm.dynamics.probe import DynamicsProbe, window_losses
from acodm.dynamics.probe import effective_rank as effective_rank  # the name's old home
from acodm.errors import AcodmError
from acodm.mixers import IntervalFeedback, MixerContext
from acodm.models import build_model

if TYPE_CHECKING:
    from acodm.agents.online import OnlineConsole


class TrainingDiverged(AcodmError):
    """The loss (or gradient norm) was NaN/inf for too many steps in a row."""


@dataclass(frozen=True)
class IntervalReport:
    """What one interval of training produced (identical on every rank).

    ``feedback`` is the interval's one record (:class:`IntervalFeedback`: per-domain losses,
    counts, epochs and the measured :class:`Dynamics`), handed as it is to the mixer, the
    env's reward and observation, and the actor; the other fields are the run's bookkeeping.
    """

    feedback: IntervalFeedback
    weights: np.ndarray
    steps: int
    tokens: int
    seconds: float
    bad_steps: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def dynamics(self) -> Dynamics:
        """The interval's measured dynamics (``feedback.dynamics``; the trainer always sets it)."""
        dyn = self.feedback.dynamics
        assert dyn is not None  # the trainer measures every interval
        return dyn


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the end."""
    warm = min(cfg.warmup_steps, max(total_steps - 1, 0))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    span = max(total_steps - warm, 1)
    t = min((step - warm) / span, 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * t))


def _make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # Weight decay on matrices only (not on norms and biases), as in GPT-NeoX / nanoGPT.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)


class Trainer:
    """Pretraining of one causal LM on a token store, one interval at a time."""

    def __init__(self, config: TrainConfig, *, progress: bool = False) -> None:
        self.config = cfg = config
        self.device = resolve_device(cfg.device)
        self.dist = dist.init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.world_size > 1:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and self.device.type == "cuda"
        )
        self.store: TokenStore = open_store(cfg.store)
        self.domains = self.store.domains
        self.k = len(self.domains)
        self.sampler = self._make_sampler(cfg)
        # The agent console, a plug-in (acodm.agents.online): it orders the windows inside
        # each domain (so the run draws with a scored sampler) and adds features.
        self.console: OnlineConsole | None = None
        if cfg.console:
            from acodm.agents.online import OnlineConsole

            assert isinstance(self.sampler, ScoredDomainSampler)
            self.console = OnlineConsole.for_run(
                self.store, self.sampler, cfg.seq_len, reference=cfg.console_reference
            )
        self.total_steps = cfg.total_steps(self.dist.world_size)
        self.tokens_per_step = cfg.tokens_per_step(self.dist.world_size)
        self.model = build_model(
            cfg.model, self.store.vocab_size, max_seq_len=cfg.seq_len, seed=cfg.seed
        )
        self.model.to(self.device)  # type: ignore[arg-type]  # transformers' typed wrapper
        if cfg.activation_checkpointing:
            # non-reentrant: the monitoring hooks see the first forward; the recompute's own
            # (never back-propagated) outputs leave the statistics untouched
            self.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        #: FSDP2 shards the model over the ranks (one process: nothing to shard, but the
        #: checkpoints keep the sharded layout, so the run resumes on any number of ranks)
        self.sharded = cfg.parallel == "fsdp" and self.dist.world_size > 1
        if self.sharded:
            _fully_shard(self.model, cfg)
        # The one meter (as the HF and torch-loop paths use): losses, alignment hooks, layer
        # statistics. Without dynamics (static baselines, the overhead benchmark's reference)
        # no hooks.
        self.probe = DynamicsProbe(
            self.model,
            self.domains,
            count=cfg.monitored_layers,
            patterns=cfg.monitored_patterns,
            rank=cfg.alignment_rank,
            seed=cfg.seed,
            device=self.device,
            alignment=cfg.dynamics,
        )
        self.optimizer = _make_optimizer(self.model, cfg, self.device)
        self.train_model: nn.Module = self.model
        if self.dist.world_size > 1 and not self.sharded:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)  # type: ignore[assignment]
        self.step = 0
        self.tokens_seen = 0
        self.bad_in_row = 0
        self.bad_total = 0
        self.progress = progress and self.dist.is_main
        self._val_cache: list[torch.Tensor] | None = None
        self._reward_cache: tuple[int, list[torch.Tensor]] | None = None
        self._cap_raised = False  # warned that max_epochs had to be raised

    def _make_sampler(self, cfg: TrainConfig) -> DomainSampler:
        kw: dict[str, Any] = {}
        if cfg.console:  # the console's scores order each domain's windows
            kw["temperature"] = cfg.console_temperature
            # re-order only what can be drawn before the next update (the most one rank draws)
            kw["lookahead"] = cfg.interval * cfg.grad_accum * cfg.micro_batch_size
        return (ScoredDomainSampler if cfg.console else DomainSampler)(
            self.store,
            seq_len=cfg.seq_len,
            batch_size=cfg.micro_batch_size,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            **kw,
        )

    # -- the probe's parts, by their old names ------------------------------------------
    @property
    def monitored(self) -> list[tuple[str, nn.Module]]:
        return self.probe.monitored

    @property
    def alignment(self) -> GradientAlignment | None:
        return self.probe.alignment

    @property
    def layer_stats(self) -> LayerStats:
        return self.probe.layer_stats

    @property
    def loss_tracker(self) -> LossTracker:
        return self.probe.loss_tracker

    # -- the mixer's view -------------------------------------------------------------
    def mixer_context(self) -> MixerContext:
        tokens = np.array([self.store.num_tokens(d) for d in self.domains], dtype=np.int64)
        return MixerContext(
            domains=tuple(self.domains),
            domain_tokens=tokens,
            total_steps=self.total_steps,
            tokens_per_step=self.tokens_per_step,
            interval=self.config.interval,
            seed=self.config.seed,
        )

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def broadcast_weights(self, weights: np.ndarray) -> np.ndarray:
        """Rank 0's weights on every rank (float64). Checked where they come from
        (:meth:`Mixer.weights`) and where they are used (the sampler), not here."""
        t = torch.as_tensor(np.asarray(weights, dtype=np.float64), device=self.device)
        return dist.broadcast(t).cpu().numpy()

    # -- training ---------------------------------------------------------------------
    def _micro_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray, bool]]:
        """(tokens, domains) on the device, the domains also on the host, and "is last"."""
        accum = self.config.grad_accum
        for i in range(accum):
            b = self.sampler.next_batch()
            if self.console is not None:
                self.console.on_batch(b)
            tokens = torch.from_numpy(b.tokens).to(self.device, non_blocking=True)
            domains = torch.from_numpy(b.domains).to(self.device, non_blocking=True)
            yield tokens, domains, b.domains, i == accum - 1

    def _forward_losses(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Mean loss of each sequence, (B,), in fp32 from one forward pass."""
        return window_losses(model, tokens, bf16=self.bf16)

    def _train_step(self) -> torch.Tensor:
        """One optimizer step; the probe records its per-domain losses.

        Returns a 0-dim bool tensor on the device: True when the step was skipped because the
        loss or the gradient norm was not finite. The skip happens on the device (fused
        AdamW's ``found_inf``), so a step never waits for the GPU: the host looks at the
        flags once per interval (:meth:`_check_bad_steps`).
        """
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, cfg, self.total_steps)
        self.optimizer.zero_grad(set_to_none=True)
        for tokens, domains, host_domains, last in self._micro_batches():
            # Non-finite contributions are dropped inside the alignment hooks, so a skipped
            # step leaves the interval's Gram untouched.
            # host ids: set_domains validates them, which would sync on a device tensor
            self.probe.set_domains(host_domains)
            if self.sharded:  # reduce-scatter the gradients after the last micro-batch only
                self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
            sync = (
                contextlib.nullcontext()
                if last or not isinstance(self.train_model, DistributedDataParallel)
                else self.train_model.no_sync()
            )
            with sync:
                seq_loss = self._forward_losses(self.train_model, tokens)
                (seq_loss.mean() / cfg.grad_accum).backward()
            self.probe.record(seq_loss, domains)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf  # inf: measure only
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if isinstance(grad_norm, DTensor):  # FSDP: the global norm, replicated on every rank
            grad_norm = grad_norm.full_tensor()
        bad = self.probe.end_step(grad_norm)  # the step's losses, summed over ranks, or dropped
        self.optimizer.found_inf = bad.float()  # type: ignore[attr-defined]  # fused AdamW skips
        self.optimizer.step()
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        return bad

    def _check_bad_steps(self, flags: list[bool]) -> int:
        """Count skipped steps; stop the run after ``max_bad_steps`` of them in a row."""
        for bad in flags:
            self.bad_in_row = self.bad_in_row + 1 if bad else 0
            self.bad_total += bad
            if self.bad_in_row >= self.config.max_bad_steps:
                raise TrainingDiverged(
                    f"the loss or gradient norm was NaN/inf for {self.bad_in_row} steps in a "
                    f"row (by step {self.step}); the optimizer did not take them. Lower --lr, "
                    "raise --warmup-steps, or check the data; resume from the last checkpoint"
                )
        return sum(flags)

    # -- the epoch cap (TrainConfig.max_epochs) ---------------------------------------------
    def epochs(self) -> np.ndarray:
        """Epochs of each domain consumed so far, all ranks together, ``(k,)`` float64."""
        return self._epochs()

    @property
    def remaining_tokens(self) -> int:
        """Training tokens left in the run's budget (all ranks together)."""
        return max(self.total_steps - self.step, 0) * self.tokens_per_step

    def cap_weights(self, weights: np.ndarray) -> np.ndarray:
        """``weights`` projected onto the capped simplex of ``config.max_epochs`` (unchanged
        without a cap, or when they are within the caps already).

        The caps come from the run's live epochs and remaining budget
        (:func:`~acodm.data.weights.feasible_caps`, with the store's training tokens per
        domain, as :meth:`mixer_context` gives them), so any mixer is held to them; the
        projection is :func:`~acodm.data.weights.project_capped`. When no mixture fits the
        cap, it is raised as UniMax does, with one warning per run.
        """
        cap = self.config.max_epochs
        if cap is None:
            return weights
        caps, used = feasible_caps(self.epochs(), self._domain_tokens(), self.remaining_tokens, cap)
        if used > cap and not self._cap_raised:
            self._cap_raised = True
            warnings.warn(
                f"max_epochs={cap:g}: the {self.remaining_tokens} tokens left at step "
                f"{self.step} exceed what every domain has left under the cap, so it is raised "
                f"to {used:.3g} epochs for all domains alike (UniMax's rule); use more data, "
                "fewer steps or a larger max_epochs",
                stacklevel=3,
            )
        return project_capped(weights, caps)

    def _domain_tokens(self) -> np.ndarray:
        return np.array([self.store.num_tokens(d) for d in self.domains], dtype=np.float64)

    def train_interval(self, weights: np.ndarray, steps: int | None = None) -> IntervalReport:
        """Run ``steps`` (default: the configured interval K) optimizer steps with ``weights``.

        With ``config.max_epochs`` the weights are first held to the epoch cap
        (:meth:`cap_weights`); the report's ``weights`` are the ones the interval ran with.
        """
        if self.done:
            raise AcodmError("the run is finished: no steps are left in its budget")
        steps = min(steps or self.config.interval, self.total_steps - self.step)
        weights = self.cap_weights(weights)
        self.sampler.set_weights(weights)
        self.train_model.train()
        start = time.perf_counter()
        flags = torch.stack([self._train_step() for _ in range(steps)]).tolist()
        bad = self._check_bad_steps(flags)
        self.probe.reduce()
        agents = self.console.end_interval(self._hooks()) if self.console is not None else None
        seconds = time.perf_counter() - start
        return self._report(weights, steps, bad, seconds, agents)

    def _report(
        self,
        weights: np.ndarray,
        steps: int,
        bad: int,
        seconds: float,
        agents: dict[str, np.ndarray] | None,
    ) -> IntervalReport:
        feedback = self.probe.interval_feedback(
            self.step,
            self.total_steps,
            self._epochs(),
            agents=agents,
            console_alpha=self.console.alpha if self.console is not None else None,
        )
        tokens = steps * self.tokens_per_step
        metrics = {
            "train/loss": float(np.nansum(self.probe.loss_sums) / max(feedback.counts.sum(), 1)),
            "train/lr": lr_at(max(self.step - 1, 0), self.config, self.total_steps),
            "perf/tok_s": tokens / max(seconds, 1e-9),
            "train/bad_steps": float(bad),
        }
        metrics.update(self._domain_metrics(feedback, weights))
        if self.console is not None:
            metrics.update(self.console.metrics())
        return IntervalReport(
            feedback,
            np.asarray(weights, dtype=np.float64),
            steps,
            tokens,
            seconds,
            bad,
            metrics,
        )

    def _domain_metrics(self, feedback: IntervalFeedback, weights: np.ndarray) -> dict[str, float]:
        dyn = feedback.need_dynamics("the trainer's metrics")
        metrics: dict[str, float] = {}
        for i, d in enumerate(self.domains):
            metrics[f"mix/weight/{d}"] = float(weights[i])
            metrics[f"train/loss/{d}"] = float(feedback.loss[i])
            metrics[f"train/epochs/{d}"] = float(feedback.epochs[i])
            metrics[f"dyn/alignment/{d}"] = float(dyn.alignment[i])
            for name, values in dyn.agents.items():
                metrics[f"agents/{name}/{d}"] = float(values[i])
        return metrics

    def _hooks(self) -> GradientAlignment:
        """The alignment hooks (a console run has them: TrainConfig checks dynamics=True)."""
        assert self.alignment is not None
        return self.alignment

    def _epochs(self) -> np.ndarray:
        """Epochs per domain over all ranks (ranks read disjoint shards of each epoch)."""
        local = torch.as_tensor(self.sampler.epochs(), device=self.device, dtype=torch.float64)
        return dist.all_reduce_sum(local).cpu().numpy() / self.dist.world_size

    # -- evaluation -------------------------------------------------------------------
    def _validation(self) -> list[torch.Tensor]:
        if self._val_cache is None:
            self._val_cache = [
                torch.from_numpy(self.sampler.validation_windows(d, self.config.eval_windows))
                for d in self.domains
            ]
        return self._val_cache

    @torch.no_grad()
    def window_losses(self, windows: list[torch.Tensor]) -> np.ndarray:
        """Mean loss per domain ``(k,)`` float64 on fixed windows (one ``(n_i, seq_len + 1)``
        tensor per domain, this rank's share), all ranks together.

        Forward passes only, in eval mode, with the dynamics probe's hooks off: it measures
        the model without touching the interval's statistics, the optimizer or the sampler.
        Shared by :meth:`evaluate` (validation split) and :meth:`reward_losses` (reward split).
        """
        self.model.eval()
        mb = self.config.micro_batch_size
        sums = torch.zeros(2, self.k, device=self.device, dtype=torch.float64)
        chunks = [-(-w.shape[0] // mb) for w in windows]
        if self.sharded:  # every rank runs as many forwards (each gathers the shards)
            most = torch.tensor(chunks, device=self.device, dtype=torch.int64)
            chunks = dist.all_reduce_max(most).tolist()
        with self.probe.disabled():
            for i, win in enumerate(windows):
                for c in range(chunks[i]):
                    chunk = win[c * mb : (c + 1) * mb]
                    if chunk.shape[0] == 0:  # this rank's share is done: a forward to discard
                        filler = windows[i][:1] if windows[i].shape[0] else windows[0][:1]
                        self._forward_losses(self.model, filler.to(self.device))
                        continue
                    seq_loss = self._forward_losses(self.model, chunk.to(self.device))
                    sums[0, i] += seq_loss.double().sum()
                    sums[1, i] += seq_loss.numel()
        self.model.train()
        total, n = dist.all_reduce_sum(sums).cpu().numpy()
        loss: np.ndarray = total / np.maximum(n, 1)
        return loss

    def reward_losses(self, windows_per_domain: int) -> np.ndarray:
        """Mean loss per domain ``(k,)`` on the fixed probe windows of the reward split
        (:meth:`DomainSampler.reward_windows`: ``windows_per_domain`` per domain, spread
        evenly over the split, the same at every call): the env's probe reward."""
        n = int(windows_per_domain)
        if self._reward_cache is None or self._reward_cache[0] != n:
            self._reward_cache = (
                n,
                [torch.from_numpy(self.sampler.reward_windows(d, n)) for d in self.domains],
            )
        return self.window_losses(self._reward_cache[1])

    def evaluate(self) -> dict[str, float]:
        """Per-domain validation loss and perplexity on the store's fixed windows."""
        loss = self.window_losses(self._validation())
        ppl = np.exp(np.minimum(loss, 50.0))
        out = {
            "eval/loss_mean": float(loss.mean()),
            "eval/ppl_mean": float(ppl.mean()),
            "eval/ppl_worst": float(ppl.max()),
        }
        for i, d in enumerate(self.domains):
            out[f"eval/loss/{d}"] = float(loss[i])
            out[f"eval/ppl/{d}"] = float(ppl[i])
        return out

    # -- checkpoints ------------------------------------------------------------------
    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything to continue bit-for-bit, gathered on every rank (rank 0 writes it)."""
        samplers = dist.all_gather_object(self.sampler.state_dict())
        sharded = self.config.parallel == "fsdp"
        # the monitored layers' initial weights: sharded like the weights under FSDP
        extra = {} if sharded else dict(self.layer_stats.initial_tensors())
        extra["rng/torch_cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            extra["rng/torch_cuda"] = torch.cuda.get_rng_state(self.device)
        console_state, console_tensors = (
            self.console.checkpoint(self._hooks()) if self.console is not None else (None, {})
        )
        extra.update(console_tensors)
        state: dict[str, Any] = {
            "trainer": {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "bad_in_row": self.bad_in_row,
                "bad_total": self.bad_total,
                "loss_tracker": self.loss_tracker.state_dict(),
                "world_size": self.dist.world_size,
                "sequences_per_step": self._sequences_per_step(),
            },
            "sampler": samplers,
        }
        if console_state is not None:
            state["console"] = console_state
        if sharded:
            return {"sharded": self._sharded_tensors(), "extra": extra, "state": state}
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "extra": extra,
            "state": state,
        }

    def _sequences_per_step(self) -> int:
        cfg = self.config
        return cfg.micro_batch_size * cfg.grad_accum * self.dist.world_size

    def _state_dicts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Model and optimizer state by parameter name (FSDP: this rank's shards, DTensors)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(flatten_optimizer_state_dict=True)
        return get_state_dict(self.model, self.optimizer, options=opts)

    def _sharded_tensors(self) -> dict[str, torch.Tensor]:
        """What a sharded checkpoint holds: ``model/<name>``, the optimizer's tensors
        ``optim/state.<name>.<key>`` (its hyper-parameters come from the config) and the
        monitored layers' initial weights ``initial/<name>``."""
        return self._sharded_views(*self._state_dicts())

    def _sharded_views(self, model: dict[str, Any], optim: dict[str, Any]) -> dict[str, Any]:
        out = {f"model/{k}": v for k, v in model.items()}
        out.update({f"optim/{k}": v for k, v in optim.items() if isinstance(v, torch.Tensor)})
        out.update(self.layer_stats.initial_tensors())
        return out

    def _load_sharded(self, ckpt: Checkpoint) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        model, optim = self._state_dicts()  # templates: the live layout to read into
        tensors = self._sharded_views(model, optim)
        load_sharded(ckpt, tensors)  # in place, the initial weights' included
        self.layer_stats.load_initial(
            {k: v for k, v in tensors.items() if k.startswith("initial/")}
        )
        optim.update({k[len("optim/") :]: v for k, v in tensors.items() if k.startswith("optim/")})
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict={
                k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")
            },
            optim_state_dict=optim,
            options=StateDictOptions(flatten_optimizer_state_dict=True),
        )

    def load_checkpoint(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt``: bit for bit with the same processes and batch layout.

        On another number of ranks (or micro-batch size / gradient accumulation) the global
        batch must be the same; the sampler is then re-dealt
        (:func:`~acodm.data.sampler.reshard_states`) and the run continues with the same
        weights, optimizer state, schedule and mixer, not with the identical data stream.
        """
        st = ckpt.state.get("trainer", {})
        samplers = self._sampler_states(ckpt, st)
        if ckpt.shards is None and self.config.parallel == "fsdp":
            raise CheckpointError(
                f"checkpoint {ckpt.path} holds one full copy of the model (a --parallel ddp "
                "run); resume it with --parallel ddp"
            )
        try:
            if ckpt.shards is not None:
                self._load_sharded(ckpt)
            else:
                self.model.load_state_dict(ckpt.model, strict=True)
                self.optimizer.load_state_dict(ckpt.optimizer)
                self.layer_stats.load_initial(ckpt.extra)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {ckpt.path} does not fit this model/optimizer ({e}); was it "
                "written with another --model or store?"
            ) from e
        self.sampler.load_state_dict(samplers[self.dist.rank])
        if self.console is not None:
            self.console.load(ckpt, self._hooks())
        torch.set_rng_state(ckpt.extra["rng/torch_cpu"])
        if self.device.type == "cuda" and "rng/torch_cuda" in ckpt.extra:
            torch.cuda.set_rng_state(ckpt.extra["rng/torch_cuda"], self.device)
        self.step = int(st["step"])
        self.tokens_seen = int(st["tokens_seen"])
        self.bad_in_row = int(st["bad_in_row"])
        self.bad_total = int(st["bad_total"])
        self.loss_tracker.load_state_dict(st["loss_tracker"])

    def _sampler_states(self, ckpt: Checkpoint, st: dict[str, Any]) -> list[dict[str, Any]]:
        """The checkpoint's sampler state of every rank of this run (re-dealt when the number
        of ranks or the micro-batch size changed)."""
        saved: list[dict[str, Any]] = ckpt.state["sampler"]
        world, mb = self.dist.world_size, self.config.micro_batch_size
        if st.get("world_size") == world and all(s.get("batch_size") == mb for s in saved):
            return saved
        was = f"{st.get('world_size')} ranks x {saved[0].get('batch_size')} sequences"
        now = f"{world} ranks x {mb}"
        if st.get("sequences_per_step") is None:
            raise CheckpointError(
                f"checkpoint {ckpt.path} was written by {was} per micro-batch by an older "
                f"acodm; resume it with the same processes and --micro-batch-size (this run: "
                f"{now})"
            )
        if st["sequences_per_step"] != self._sequences_per_step():
            raise CheckpointError(
                f"checkpoint {ckpt.path} trained on {st['sequences_per_step']} sequences per "
                f"optimizer step ({was} per micro-batch); this run would take "
                f"{self._sequences_per_step()} ({now}, grad_accum {self.config.grad_accum}): "
                "choose --grad-accum / --micro-batch-size so that micro_batch_size x grad_accum "
                "x processes is the same (the schedule and the optimizer state depend on it)"
            )
        if self.console is not None:
            raise CheckpointError(
                f"checkpoint {ckpt.path} of a --console run was written by {was}: the console "
                f"keeps each rank's window order, so resume it with that layout (this run: {now})"
            )
        if self.dist.is_main:
            warnings.warn(
                f"resuming {ckpt.path} on {now} per micro-batch (it was written by {was}): the "
                "same global batch, weights, optimizer and mixer; the sampler deals the rest "
                "of each domain's epoch out over the new ranks, so the data order differs from "
                "an uninterrupted run",
                stacklevel=3,
            )
        return reshard_states(saved, world_size=world, batch_size=mb)

    def close(self) -> None:
        if self.alignment is not None:
            self.alignment.remove()


def _fully_shard(model: nn.Module, cfg: TrainConfig) -> None:
    """FSDP2: one ``fully_shard`` per transformer block, then the root (embeddings, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from acodm.models import transformer_blocks

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if cfg.param_dtype == "bf16"
        else MixedPrecisionPolicy()
    )
    for block in transformer_blocks(model):
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def run_dir_config_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "config.json"
