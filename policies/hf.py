"""Online data mixing inside a Hugging Face ``Trainer`` (METHOD.md, "Proxy mode and transfer").

Three small pieces:

* :class:`MixtureDataset` - an ``IterableDataset`` over an acodm token store that draws
  windows by domain weights (:class:`~acodm.data.sampler.DomainSampler`), yielding
  ``{"input_ids", "labels", "domain"}``; ``set_weights`` changes the mixture on the fly.
* :class:`MixingTrainer` - a ``Trainer`` whose ``compute_loss`` computes *per-sequence* losses
  in the same forward pass and feeds a :class:`~acodm.dynamics.probe.DynamicsProbe` (the
  meter of acodm's own trainer: the per-domain losses and gradient alignment the policy
  observes). Its loss is the usual mean.
* :class:`MixingCallback` - every K optimizer steps closes the probe's interval and sets the
  dataset's weights from an exported policy (:class:`MixingController`) or any acodm
  :class:`~acodm.mixers.base.Mixer`.

Usage::

    ds = MixtureDataset("runs/store", seq_len=512, seed=0)
    model = build_model("160m", ds.vocab_size, max_seq_len=513)
    probe = DynamicsProbe(model, ds.domains)
    ctl = MixingController.load("runs/policy", ds.domains)
    args = TrainingArguments("out", max_steps=1000, remove_unused_columns=False,
                             dataloader_num_workers=0, ...)
    trainer = MixingTrainer(model=model, args=args, train_dataset=ds, probe=probe,
                            callbacks=[MixingCallback(ds, probe, ctl)])
    trainer.train()

No subclass needed: with the ``Trainer`` you already have (or a subclass of it, e.g. TRL's),
pass the loss-function hook :class:`SequenceLoss` instead of using :class:`MixingTrainer`::

    loss = SequenceLoss(probe).attach(model)   # before the Trainer wraps the model
    trainer = Trainer(model=model, args=args, train_dataset=ds, compute_loss_func=loss,
                      callbacks=[MixingCallback(ds, probe, ctl)])

It takes the ``domain`` column off the model's inputs (a forward pre-hook) and computes the
per-sequence losses from the outputs' logits: the same numbers and gradients as
:class:`MixingTrainer`. The weights and the interval's statistics are logged through the
Trainer's ``report_to`` integrations (``mix/weight/<domain>``, ``train/loss/<domain>``,
``dyn/alignment/<domain>`` at each decision).

Several processes (``torchrun``, DDP): the callback sums the probe's per-domain losses and
counts over the ranks after every optimizer step, the alignment at each decision, reads the
epochs from rank 0, and every rank sets rank 0's weights (broadcast), so all ranks mix alike.
Both of accelerate's ways of reading an iterable dataset work: batch dispatching (its default:
rank 0 reads the global batch and sends each rank its slice) and
``accelerator_config={"dispatch_batches": False}`` (every rank reads the same stream and keeps
its slice). Either way the global stream is the one a single process with the global batch
reads, and the statistics match it (tested on 2 gloo processes under ``torchrun``).

Notes. ``remove_unused_columns=False`` keeps the ``domain`` column. ``dataloader_num_workers=0``:
the weights live in the dataset object of the main process; a worker would hold a stale copy,
so iterating in a worker is an error. The data loader fetches one batch ahead, so new weights
take effect one batch late.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn
from torch.utils.data import IterableDataset, get_worker_info
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from acodm import distributed as dist
from acodm.data.sampler import DomainSampler
from acodm.data.store import TokenStore, open_store
from acodm.dynamics.probe import DynamicsProbe, sequence_losses
from acodm.errors import AcodmError
from acodm.io import atomic_write_bytes, atomic_write_json, read_json
from acodm.mixers.base import Mixer, MixerContext, MixerError
from acodm.policies.transfer import MixingController

__all__ = [
    "MixingCallback",
    "MixingTrainer",
    "MixtureDataset",
    "SequenceLoss",
    "per_sequence_loss",
]

IGNORE_INDEX = -100


class HFMixingError(AcodmError):
    """The Hugging Face mixing path was set up or used incorrectly."""


MIXING_STATE = "acodm_mixing.json"
MIXING_TENSORS = "acodm_mixing.safetensors"
MIXING_STATE_FORMAT = "acodm-hf-mixing-1"


def _global_batch(args: TrainingArguments) -> int:
    """Items of the mixture stream one optimizer step reads (every rank's, all together)."""
    return int(
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    )


def _output_dir(args: TrainingArguments) -> Path:
    if args.output_dir is None:
        raise HFMixingError("TrainingArguments.output_dir is not set: the checkpoints go there")
    return Path(args.output_dir)


def _host(t: torch.Tensor) -> torch.Tensor:
    full = t.full_tensor() if hasattr(t, "full_tensor") else t  # an FSDP-sharded weight
    return full.detach().cpu().contiguous()


def _broadcast(values: np.ndarray) -> np.ndarray:
    """Rank 0's float64 array on every rank (itself outside a process group)."""
    if not dist.active():
        return values
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
    t = torch.as_tensor(values, dtype=torch.float64, device=device)
    return dist.broadcast(t).cpu().numpy()


# ----------------------------------------------------------------------------- dataset


class MixtureStream(IterableDataset[dict[str, torch.Tensor]]):
    """The part every mixture dataset shares: weights that change during training, and a
    stream that resumes exactly although the data loader reads ahead of training.

    A subclass draws one item (:meth:`_draw`), keeps its weights (:meth:`_apply_weights`,
    :attr:`weights`) and its position (:meth:`_position`, :meth:`_load_position`). This class
    counts the items drawn, records the position at the last few multiples of
    ``snapshot_every`` items (one optimizer step's worth; the callback sets it) and the weight
    changes by the item they took effect at, so :meth:`stream_state` can give the stream as
    it was after the items training consumed, and :meth:`load_stream_state` replays the later
    weight changes at the same items.
    """

    def __init__(self) -> None:
        super().__init__()
        self.drawn = 0
        self.snapshot_every = 0
        self._snapshots: collections.deque[tuple[int, dict[str, Any]]] = collections.deque(
            maxlen=16
        )
        self._changes: list[tuple[int, list[float]]] = []
        self._pending: list[tuple[int, list[float]]] = []

    # -- what a subclass provides ----------------------------------------------------------
    domains: list[str]
    seq_len: int

    @property
    def weights(self) -> np.ndarray:
        raise NotImplementedError

    def _apply_weights(self, weights: Sequence[float] | Mapping[str, float] | np.ndarray) -> None:
        raise NotImplementedError

    def _draw(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _position(self) -> dict[str, Any]:
        raise NotImplementedError

    def _load_position(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def epochs(self) -> np.ndarray:
        """Epochs of each domain consumed so far (``domains`` order)."""
        raise NotImplementedError

    def domain_tokens(self) -> np.ndarray:
        """Training tokens of each domain (what token-count mixers and priors use)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def set_weights(self, weights: Sequence[float] | Mapping[str, float] | np.ndarray) -> None:
        """Use ``weights`` from the next item on."""
        self._apply_weights(weights)
        self._changes.append((self.drawn, self.weights.tolist()))
        del self._changes[:-64]  # only those after the oldest snapshot can matter

    def stream_state(self, consumed: int) -> dict[str, Any]:
        """The stream as it was after the first ``consumed`` items, with the weight changes
        made later (while the loader read ahead) and the item each took effect at: what a
        resume needs to draw exactly the items an uninterrupted run draws next.

        ``consumed`` must be a multiple of ``snapshot_every`` among the last few reached.
        """
        for count, state in self._snapshots:
            if count == consumed:
                later = [[i, w] for i, w in self._changes if i > consumed]
                return {"drawn": consumed, "sampler": state, "changes": later}
        raise HFMixingError(
            f"the dataset has no record of its state after {consumed} items (it keeps the "
            f"last {self._snapshots.maxlen} multiples of {self.snapshot_every}); save "
            "checkpoints at optimizer steps of the run that reads it"
        )

    def load_stream_state(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`stream_state`: the weight changes it holds are applied again
        at the items they took effect at."""
        self._load_position(state["sampler"])
        self.drawn = int(state["drawn"])
        self._pending = [(int(i), list(w)) for i, w in state["changes"]]
        self._changes = []
        self._snapshots.clear()

    def _next_item(self) -> dict[str, torch.Tensor]:
        while self._pending and self._pending[0][0] <= self.drawn:  # a resumed run's
            at, w = self._pending.pop(0)
            self._apply_weights(w)
            self._changes.append((at, w))
        every = self.snapshot_every
        if every and self.drawn % every == 0:  # after every change made at or before it
            self._snapshots.append((self.drawn, self._position()))
        item = self._draw()
        self.drawn += 1
        return item

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if get_worker_info() is not None:
            raise HFMixingError(
                f"{type(self).__name__} must be iterated in the main process (its weights "
                "change during training): set dataloader_num_workers=0"
            )
        while True:
            yield self._next_item()


def window_item(window: torch.Tensor, domain: int) -> dict[str, torch.Tensor]:
    """One training item: ``input_ids`` and ``labels`` (the same ``seq_len + 1`` tokens) and
    the ``domain`` id."""
    return {"input_ids": window, "labels": window.clone(), "domain": torch.tensor(int(domain))}


class MixtureDataset(MixtureStream):
    """An endless, deterministic stream of ``seq_len + 1``-token windows drawn by domain weights.

    Each item: ``input_ids`` and ``labels`` (the same window of ``seq_len + 1`` tokens; HF
    causal LMs shift labels inside, so the targets are the window's last ``seq_len`` tokens,
    as in acodm's trainer) and ``domain`` (int64 id, ``domains`` order). The stream depends
    only on ``seed`` and the weight history (one sampler draw per item). Iterate in the main
    process only (``dataloader_num_workers=0``).
    """

    def __init__(
        self,
        store: str | Path | TokenStore,
        *,
        seq_len: int,
        seed: int = 0,
        weights: Sequence[float] | Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.store = store if isinstance(store, TokenStore) else open_store(store)
        self.sampler = DomainSampler(
            self.store, seq_len=seq_len, batch_size=1, seed=seed, weights=weights
        )
        self.domains = list(self.sampler.domains)
        self.seq_len = int(seq_len)

    @property
    def vocab_size(self) -> int:
        return int(self.store.vocab_size)

    @property
    def weights(self) -> np.ndarray:
        """The current weights (a copy), ``domains`` order."""
        return self.sampler.weights

    def _apply_weights(self, weights: Sequence[float] | Mapping[str, float] | np.ndarray) -> None:
        self.sampler.set_weights(weights)

    def epochs(self) -> np.ndarray:
        """Epochs of each domain consumed so far."""
        return self.sampler.epochs()

    def domain_tokens(self) -> np.ndarray:
        return np.array([self.store.num_tokens(d) for d in self.domains], dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state now (after every item drawn so far, read-ahead included)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def _position(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def _load_position(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def _draw(self) -> dict[str, torch.Tensor]:
        batch = self.sampler.next_batch()
        return window_item(torch.from_numpy(batch.tokens[0]), int(batch.domains[0]))


# ----------------------------------------------------------------------------- trainer


def per_sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence, (B,) fp32; labels ``-100`` are ignored.

    ``logits`` (B, T, V) and unshifted ``labels`` (B, T), as a HF causal LM takes them.
    """
    return sequence_losses(logits[:, :-1], labels[:, 1:], ignore_index=IGNORE_INDEX)


class SequenceLoss:
    """The Trainer's loss-function hook (``compute_loss_func``) that feeds a probe.

    :meth:`attach` registers a forward pre-hook on the model that removes the batch's
    ``domain`` column from the model's keyword arguments and, for a training forward (the
    model in train mode, gradients on), hands the domains to ``probe.set_domains``. Called by
    the Trainer with ``(outputs, labels, num_items_in_batch)``, the hook computes each
    sequence's mean next-token loss from ``outputs.logits``, records it with those domains and
    returns the token-weighted loss the Trainer expects from a loss function (summed over the
    batch's label tokens, divided by ``num_items_in_batch``: the Trainer's own causal-LM loss).
    """

    def __init__(self, probe: DynamicsProbe) -> None:
        self.probe = probe
        self._domains: torch.Tensor | None = None
        self._handle: Any = None

    def attach(self, model: nn.Module) -> SequenceLoss:
        """Hook ``model`` (the unwrapped model, before the Trainer wraps it); returns self."""
        if self._handle is not None:
            raise HFMixingError("this SequenceLoss is attached to a model already")
        self._handle = model.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _pre_forward(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs = dict(kwargs)
        domains = kwargs.pop("domain", None)
        training = module.training and torch.is_grad_enabled()
        if training:
            if domains is None:
                raise HFMixingError(
                    "the batch has no 'domain' column: train on a MixtureDataset (or any data "
                    "with a per-sequence 'domain' id) with remove_unused_columns=False"
                )
            self.probe.set_domains(domains)
        self._domains = domains if training else None
        return args, kwargs

    def __call__(
        self, outputs: Any, labels: torch.Tensor | None, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        if labels is None:
            raise HFMixingError(
                "the loss function got no labels: keep the dataset's 'labels' column "
                "(MixtureDataset yields it)"
            )
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
        seq_loss = per_sequence_loss(logits, labels)
        if self._domains is not None:
            self.probe.record(seq_loss.detach(), self._domains)
            self._domains = None
        tokens = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
        total = (seq_loss * tokens).sum()
        if num_items_in_batch is None:  # the Trainer did not count: this batch's tokens
            return total / tokens.sum().clamp_min(1)
        return total / torch.as_tensor(num_items_in_batch, device=total.device)


class MixingTrainer(Trainer):
    """A ``Trainer`` whose training forward also yields per-sequence losses for a probe.

    ``compute_loss`` pops ``domain`` and ``labels``, runs the model once without labels,
    computes :func:`per_sequence_loss` and returns its mean (a per-batch mean: the Trainer
    divides it by the accumulation steps). In training it calls ``probe.set_domains`` before
    the forward and ``probe.record`` after it; evaluation forwards bypass the probe's hooks.
    """

    def __init__(self, *args: Any, probe: DynamicsProbe | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe = probe
        self.loss_is_scaled_for_ga = False

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        domains = inputs.pop("domain", None)
        labels = inputs.pop("labels", inputs["input_ids"])
        probe = self.probe
        record = probe is not None and domains is not None and model.training
        if record and probe is not None:
            probe.set_domains(domains)
        hooks = probe.disabled() if probe is not None and not record else contextlib.nullcontext()
        with hooks:
            outputs = model(**inputs)
        seq_loss = per_sequence_loss(outputs.logits, labels)
        if record and probe is not None and domains is not None:
            probe.record(seq_loss.detach(), domains)
        loss = seq_loss.mean()
        return (loss, outputs) if return_outputs else loss


# ----------------------------------------------------------------------------- callback


class MixingCallback(TrainerCallback):
    """Every ``interval`` optimizer steps: close the probe's interval, set new weights.

    ``policy``: a :class:`MixingController` (an exported actor; ``interval`` defaults to its
    K) or any acodm :class:`Mixer` (set up here at train begin if it is not yet; give
    ``interval``). The first interval uses the policy's initial weights (uniform for a softmax
    actor, the run's prior for a residual one). ``history`` holds ``(step, weights)`` of every
    decision. At train begin the callback gives both kinds the run's :class:`MixerContext`
    (the dataset's domains and tokens, ``max_steps``, the tokens of one optimizer step), so a
    residual actor computes this run's prior and a capped one its caps from the dataset's live
    epochs and the remaining budget at every decision.
    """

    def __init__(
        self,
        dataset: MixtureStream,
        probe: DynamicsProbe,
        policy: MixingController | Mixer,
        *,
        interval: int | None = None,
        resume_from: str | Path | None = None,
    ) -> None:
        self.dataset, self.probe, self.policy = dataset, probe, policy
        #: where a resumed run's mixing state is (default: the Trainer's
        #: ``output_dir/checkpoint-<step>``, where ``resume_from_checkpoint=True`` resumes)
        self.resume_from = resume_from
        if interval is None and isinstance(policy, MixingController):
            interval = policy.interval
        if interval is None or interval < 1:
            raise HFMixingError(f"interval must be an int >= 1, got {interval!r}")
        if list(probe.domains) != dataset.domains:
            raise HFMixingError(f"probe domains {probe.domains} != dataset's {dataset.domains}")
        self.interval = int(interval)
        self.history: list[tuple[int, np.ndarray]] = []
        self._log: dict[str, float] = {}

    def _context(self, args: TrainingArguments, state: TrainerState) -> MixerContext:
        """The run as acodm's mixers see it: domains, tokens, budget, interval, seed."""
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        return MixerContext(
            domains=tuple(self.dataset.domains),
            domain_tokens=self.dataset.domain_tokens(),
            total_steps=max(int(state.max_steps), 1),
            tokens_per_step=self.dataset.seq_len * batch * args.world_size,
            interval=self.interval,
            seed=int(args.seed),
        )

    def _setup_mixer(self, mixer: Mixer, args: TrainingArguments, state: TrainerState) -> None:
        with contextlib.suppress(MixerError):
            mixer.ctx  # noqa: B018 (set up already: keep its context)
            return
        mixer.setup(self._context(args, state))

    def _set(self, step: int, weights: np.ndarray) -> None:
        # rank 0's decision on every rank (each decided from the same reduced numbers; the
        # broadcast makes them equal to the bit)
        weights = _broadcast(np.asarray(weights, dtype=np.float64))
        self.dataset.set_weights(weights)
        self.history.append((step, weights.copy()))
        self._log = {
            f"mix/weight/{d}": float(w) for d, w in zip(self.dataset.domains, weights, strict=True)
        }

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.dataset.snapshot_every = _global_batch(args)
        save_steps = args.save_steps
        if (
            str(args.save_strategy).endswith("steps")
            and isinstance(save_steps, int)
            and save_steps >= 1
            and save_steps % self.interval
        ):
            raise HFMixingError(
                f"save_steps={save_steps} is not a multiple of the mixing interval "
                f"{self.interval}: a checkpoint inside an interval cannot resume it exactly; "
                "choose save_steps as a multiple of the interval"
            )
        if isinstance(self.policy, Mixer):
            self._setup_mixer(self.policy, args, state)
        elif self.policy.context is None:  # its prior and caps are this run's
            self.policy.setup(self._context(args, state))
        if state.global_step > 0:  # resume_from_checkpoint: continue the mixture exactly
            self._resume(args, state)
            return
        first = self.policy.weights() if isinstance(self.policy, Mixer) else self.policy.weights
        self._set(state.global_step, first)

    # -- checkpoints: the Trainer's folders carry the mixture's state ------------------------
    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write the mixture's state into the Trainer's new ``checkpoint-<step>`` folder:
        ``acodm_mixing.json`` (the stream, the mixer, the loss memory, the decisions) and
        ``acodm_mixing.safetensors`` (the monitored layers' initial weights, the mixer's
        tensors); each atomically, by the main process."""
        step = int(state.global_step)
        tensors = dict(self.probe.layer_stats.initial_tensors())
        if isinstance(self.policy, Mixer):
            policy_state: dict[str, Any] = {"kind": "mixer", "state": self.policy.state_dict()}
            tensors.update({f"mixer/{k}": v for k, v in self.policy.tensor_state().items()})
        else:
            policy_state = {"kind": "actor", "weights": self.policy.weights.tolist()}
        tensors = {k: _host(v) for k, v in tensors.items()}  # every rank (FSDP gathers)
        if not state.is_world_process_zero:
            return  # rank 0's stream is the run's (the one read, or one of identical copies)
        stream = self.dataset.stream_state(step * _global_batch(args))
        folder = _output_dir(args) / f"checkpoint-{step}"
        data = {
            "format": MIXING_STATE_FORMAT,
            "step": step,
            "interval": self.interval,
            "dataset": stream,
            "policy": policy_state,
            "loss_tracker": self.probe.loss_tracker.state_dict(),
            "history": [[s, w.tolist()] for s, w in self.history],
        }
        atomic_write_bytes(folder / MIXING_TENSORS, safetensors_save(tensors))
        atomic_write_json(folder / MIXING_STATE, data)

    def _resume(self, args: TrainingArguments, state: TrainerState) -> None:
        step = int(state.global_step)
        folder = Path(self.resume_from or _output_dir(args) / f"checkpoint-{step}")
        path = folder / MIXING_STATE
        if not path.is_file():
            raise HFMixingError(
                f"resuming at step {step}, but {path} does not exist: the checkpoint was not "
                "written with a MixingCallback, or it is elsewhere (pass "
                "MixingCallback(..., resume_from=CHECKPOINT_FOLDER))"
            )
        if not args.ignore_data_skip:
            raise HFMixingError(
                "set TrainingArguments(ignore_data_skip=True) to resume a mixture: the dataset "
                "continues its own stream (replaying it to skip batches would draw them twice)"
            )
        data = read_json(path, "mixing state")
        if data.get("format") != MIXING_STATE_FORMAT or data.get("step") != step:
            raise HFMixingError(
                f"{path} is not the mixing state of step {step} (format "
                f"{data.get('format')!r}, step {data.get('step')!r})"
            )
        if data.get("interval") != self.interval:
            raise HFMixingError(
                f"{path} was written with interval {data.get('interval')}; this callback has "
                f"{self.interval}"
            )
        tensors = safetensors_load((folder / MIXING_TENSORS).read_bytes())
        self.dataset.load_stream_state(data["dataset"])
        self.probe.loss_tracker.load_state_dict(data["loss_tracker"])
        self.probe.layer_stats.load_initial(tensors)
        policy = data["policy"]
        if isinstance(self.policy, Mixer):
            self.policy.load_state_dict(policy["state"])
            self.policy.load_tensor_state(
                {k[len("mixer/") :]: v for k, v in tensors.items() if k.startswith("mixer/")}
            )
        else:
            self.policy.weights = np.asarray(policy["weights"], dtype=np.float64)
        self.history = [(int(s), np.asarray(w, dtype=np.float64)) for s, w in data["history"]]

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # the step's per-domain losses, summed over ranks (a step with a non-finite loss is
        # left out of the interval, as acodm's loop does)
        self.probe.end_step()
        step = int(state.global_step)
        if step % self.interval:
            return
        epochs = _broadcast(np.asarray(self.dataset.epochs(), dtype=np.float64))
        feedback = self.probe.interval_feedback(step, int(state.max_steps), epochs)
        if isinstance(self.policy, Mixer):
            self.policy.update(feedback)
            self._set(step, self.policy.weights())
        else:
            self._set(step, self.policy.observe(feedback.need_dynamics("the policy")))
        dyn = feedback.need_dynamics("the log")
        for i, d in enumerate(self.dataset.domains):
            self._log[f"train/loss/{d}"] = float(feedback.loss[i])
            self._log[f"dyn/alignment/{d}"] = float(dyn.alignment[i])

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the latest decision's weights and statistics to the Trainer's log (and so to
        its ``report_to`` integrations: wandb, TensorBoard, ...)."""
        if logs is not None:
            logs.update(self._log)
