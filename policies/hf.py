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

Notes. ``remove_unused_columns=False`` keeps the ``domain`` column (the trainer pops it
before the forward). ``dataloader_num_workers=0``: the weights live in the dataset object of
the main process; a worker would hold a stale copy, so iterating in a worker is an error.
The data loader fetches one batch ahead, so new weights take effect one batch late.
Single process (the probe's per-domain losses are not reduced over ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import IterableDataset, get_worker_info
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from acodm.data.sampler import DomainSampler
from acodm.data.store import TokenStore, open_store
from acodm.dynamics.probe import DynamicsProbe, sequence_losses
from acodm.errors import AcodmError
from acodm.mixers.base import Mixer, MixerContext, MixerError
from acodm.policies.transfer import MixingController

__all__ = ["MixingCallback", "MixingTrainer", "MixtureDataset", "per_sequence_loss"]

IGNORE_INDEX = -100


class HFMixingError(AcodmError):
    """The Hugging Face mixing path was set up or used incorrectly."""


# ----------------------------------------------------------------------------- dataset


class MixtureDataset(IterableDataset[dict[str, torch.Tensor]]):
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

    @property
    def domains(self) -> list[str]:
        return list(self.sampler.domains)

    @property
    def vocab_size(self) -> int:
        return int(self.store.vocab_size)

    @property
    def weights(self) -> np.ndarray:
        """The current weights (a copy), ``domains`` order."""
        return self.sampler.weights

    def set_weights(self, weights: Sequence[float] | Mapping[str, float] | np.ndarray) -> None:
        """Use ``weights`` from the next item on."""
        self.sampler.set_weights(weights)

    def epochs(self) -> np.ndarray:
        """Epochs of each domain consumed so far."""
        return self.sampler.epochs()

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if get_worker_info() is not None:
            raise HFMixingError(
                "MixtureDataset must be iterated in the main process (its weights change "
                "during training): set dataloader_num_workers=0"
            )
        while True:
            batch = self.sampler.next_batch()
            window = torch.from_numpy(batch.tokens[0])
            yield {
                "input_ids": window,
                "labels": window.clone(),
                "domain": torch.tensor(int(batch.domains[0])),
            }


# ----------------------------------------------------------------------------- trainer


def per_sequence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence, (B,) fp32; labels ``-100`` are ignored.

    ``logits`` (B, T, V) and unshifted ``labels`` (B, T), as a HF causal LM takes them.
    """
    return sequence_losses(logits[:, :-1], labels[:, 1:], ignore_index=IGNORE_INDEX)


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
        dataset: MixtureDataset,
        probe: DynamicsProbe,
        policy: MixingController | Mixer,
        *,
        interval: int | None = None,
    ) -> None:
        self.dataset, self.probe, self.policy = dataset, probe, policy
        if interval is None and isinstance(policy, MixingController):
            interval = policy.interval
        if interval is None or interval < 1:
            raise HFMixingError(f"interval must be an int >= 1, got {interval!r}")
        if list(probe.domains) != dataset.domains:
            raise HFMixingError(f"probe domains {probe.domains} != dataset's {dataset.domains}")
        self.interval = int(interval)
        self.history: list[tuple[int, np.ndarray]] = []

    def _context(self, args: TrainingArguments, state: TrainerState) -> MixerContext:
        """The run as acodm's mixers see it: domains, tokens, budget, interval, seed."""
        store = self.dataset.store
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
        return MixerContext(
            domains=tuple(self.dataset.domains),
            domain_tokens=np.array([store.num_tokens(d) for d in self.dataset.domains]),
            total_steps=max(int(state.max_steps), 1),
            tokens_per_step=self.dataset.sampler.seq_len * batch * args.world_size,
            interval=self.interval,
            seed=int(args.seed),
        )

    def _setup_mixer(self, mixer: Mixer, args: TrainingArguments, state: TrainerState) -> None:
        with contextlib.suppress(MixerError):
            mixer.ctx  # noqa: B018 (set up already: keep its context)
            return
        mixer.setup(self._context(args, state))

    def _set(self, step: int, weights: np.ndarray) -> None:
        self.dataset.set_weights(weights)
        self.history.append((step, np.asarray(weights, dtype=np.float64).copy()))

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if isinstance(self.policy, Mixer):
            self._setup_mixer(self.policy, args, state)
            self._set(state.global_step, self.policy.weights())
        else:
            if self.policy.context is None:  # its prior and caps are this run's
                self.policy.setup(self._context(args, state))
            self._set(state.global_step, self.policy.weights)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        step = int(state.global_step)
        if step % self.interval:
            return
        feedback = self.probe.interval_feedback(step, int(state.max_steps), self.dataset.epochs())
        if isinstance(self.policy, Mixer):
            self.policy.update(feedback)
            self._set(step, self.policy.weights())
        else:
            self._set(step, self.policy.observe(feedback.need_dynamics("the policy")))
