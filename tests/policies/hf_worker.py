"""A Hugging Face ``Trainer`` run with acodm's mixing (plain ``Trainer`` + ``SequenceLoss``),
started by ``torchrun`` (or as one process) from tests/policies/test_hf.py.

    python -m tests.policies.hf_worker STORE OUT.json BATCH DISPATCH [PHASE RUN_DIR]

PHASE (with RUN_DIR, a Llama shape, checkpoints every 2 steps): ``full`` runs 8 steps,
``crash`` stops when step 5 begins (after the checkpoint of step 4), ``resume`` continues
RUN_DIR from its last checkpoint. Rank 0 writes what the mixer saw at each decision, the
weights, and the final model's checksums to OUT.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any


class SimulatedCrash(RuntimeError):
    """Raised to interrupt a run (a named fake failure of the test)."""


def main(store: str, out: str, batch: int, dispatch: bool, phase: str, run_dir: str) -> None:
    import torch
    from transformers import LlamaConfig, Trainer, TrainerCallback, TrainingArguments

    from acodm import distributed as dist
    from acodm.mixers import make_mixer
    from acodm.models import build_model
    from acodm.policies.hf import MixingCallback, MixtureDataset, SequenceLoss
    from acodm.policies.transfer import DynamicsProbe

    torch.set_num_threads(1)
    ds = MixtureDataset(store, seq_len=16, seed=0)
    shape: str | Path = "tiny"
    if phase:  # transformers' Trainer resumes GPT-NeoX without its head: a Llama shape
        shape = Path(run_dir + ".shape")
        if dist.launch_rank() == 0 and not shape.is_dir():
            LlamaConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
            ).save_pretrained(shape)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = TrainingArguments(
        output_dir=run_dir or out + ".hf",
        max_steps=8 if phase else 4,
        per_device_train_batch_size=batch,
        learning_rate=1e-3,
        use_cpu=True,
        ddp_backend="gloo" if world > 1 else None,
        report_to="none",
        save_strategy="steps" if phase else "no",
        save_steps=2,
        ignore_data_skip=True,
        logging_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        accelerator_config={"dispatch_batches": dispatch},
    )  # joins the process group: the Llama shape is written by now on rank 0
    if phase and world > 1:
        torch.distributed.barrier()
    model = build_model(shape, ds.vocab_size, max_seq_len=17, seed=0)
    probe = DynamicsProbe(model, ds.domains, rank=None)
    loss = SequenceLoss(probe).attach(model)
    mixer = make_mixer("odm:warmup=0")
    seen: list[dict[str, Any]] = []
    update = mixer.update

    def spy(feedback: Any) -> None:
        dyn = feedback.need_dynamics("the test")
        seen.append(
            {
                "loss": feedback.loss.tolist(),
                "counts": feedback.counts.tolist(),
                "epochs": feedback.epochs.tolist(),
                "gram": dyn.gram.tolist(),
            }
        )
        update(feedback)

    mixer.update = spy  # type: ignore[method-assign]

    class CrashAt(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 5:
                raise SimulatedCrash("simulated crash at step 5")

    cb = MixingCallback(ds, probe, mixer, interval=1)
    callbacks: list[Any] = [cb] + ([CrashAt()] if phase == "crash" else [])
    trainer = Trainer(
        model=model, args=args, train_dataset=ds, compute_loss_func=loss, callbacks=callbacks
    )
    with contextlib.suppress(SimulatedCrash):
        trainer.train(resume_from_checkpoint=True if phase == "resume" else None)
    if dist.launch_rank() == 0:
        state = {k: float(v.double().sum()) for k, v in model.state_dict().items()}
        with open(out, "w") as f:
            history = [w.tolist() for _, w in cb.history]
            json.dump({"seen": seen, "history": history, "model": state, "drawn": ds.drawn}, f)
    probe.close()


if __name__ == "__main__":
    argv = sys.argv[1:] + ["", ""][: max(0, 6 - len(sys.argv[1:]))]
    main(argv[0], argv[1], int(argv[2]), argv[3] == "1", argv[4], argv[5])
