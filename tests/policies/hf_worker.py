"""A Hugging Face ``Trainer`` run with acodm's mixing (plain ``Trainer`` + ``SequenceLoss``),
started by ``torchrun`` (or as one process) from tests/policies/test_hf.py.

    python -m tests.policies.hf_worker STORE OUT.json BATCH DISPATCH

Rank 0 writes what the mixer saw at each decision, the weights, and the final model's
checksums to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def main(store: str, out: str, batch: int, dispatch: bool) -> None:
    import torch
    from transformers import Trainer, TrainingArguments

    from acodm import distributed as dist
    from acodm.mixers import make_mixer
    from acodm.models import build_model
    from acodm.policies.hf import MixingCallback, MixtureDataset, SequenceLoss
    from acodm.policies.transfer import DynamicsProbe

    torch.set_num_threads(1)
    ds = MixtureDataset(store, seq_len=16, seed=0)
    model = build_model("tiny", ds.vocab_size, max_seq_len=17, seed=0)
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
    args = TrainingArguments(
        output_dir=out + ".hf",
        max_steps=4,
        per_device_train_batch_size=batch,
        learning_rate=1e-3,
        use_cpu=True,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        accelerator_config={"dispatch_batches": dispatch},
    )
    cb = MixingCallback(ds, probe, mixer, interval=1)
    trainer = Trainer(
        model=model, args=args, train_dataset=ds, compute_loss_func=loss, callbacks=[cb]
    )
    trainer.train()
    if dist.launch_rank() == 0:
        state = {k: float(v.double().sum()) for k, v in model.state_dict().items()}
        with open(out, "w") as f:
            json.dump(
                {"seen": seen, "history": [w.tolist() for _, w in cb.history], "model": state}, f
            )
    probe.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1")
