"""The Hugging Face ``Trainer`` path: MixtureDataset + MixingTrainer + MixingCallback."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import TrainingArguments

from acodm.envs.spaces import build_observation
from acodm.mixers import make_mixer
from acodm.models import build_model
from acodm.policies.hf import (
    HFMixingError,
    MixingCallback,
    MixingTrainer,
    MixtureDataset,
    per_sequence_loss,
)
from acodm.policies.transfer import DynamicsProbe, MixingController
from tests.policies.test_transfer import policy_dir, text_store  # noqa: F401 (fixtures)

SEQ = 16

needs_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None,
    reason="transformers' Trainer needs accelerate (pip install 'acodm[hf]' / accelerate)",
)


def take(ds: MixtureDataset, n: int) -> list[dict[str, torch.Tensor]]:
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_dataset_is_deterministic_and_follows_weights(text_store):  # noqa: F811
    a, b = (MixtureDataset(text_store, seq_len=SEQ, seed=3) for _ in range(2))
    xa, xb = take(a, 8), take(b, 8)
    for u, v in zip(xa, xb, strict=True):
        assert torch.equal(u["input_ids"], v["input_ids"]) and int(u["domain"]) == int(v["domain"])
    assert xa[0]["input_ids"].shape == (SEQ + 1,) and torch.equal(
        xa[0]["labels"], xa[0]["input_ids"]
    )
    a.set_weights([0.0, 1.0, 0.0])
    assert {int(x["domain"]) for x in take(a, 10)} == {1}
    with pytest.raises(HFMixingError, match="dataloader_num_workers=0"):
        next(iter(DataLoader(b, batch_size=2, num_workers=1)))


def test_per_sequence_loss_ignores_padding():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    full = per_sequence_loss(logits, labels)
    labels[1, 3:] = -100
    part = per_sequence_loss(logits, labels)
    assert torch.allclose(full[0], part[0]) and not torch.allclose(full[1], part[1])


def args(tmp_path, steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )


def run(tmp_path, store, policy, steps: int = 4, interval: int | None = None):
    ds = MixtureDataset(store, seq_len=SEQ, seed=0)
    model = build_model("tiny", ds.vocab_size, max_seq_len=SEQ + 1, seed=0)
    probe = DynamicsProbe(model, ds.domains)
    cb = MixingCallback(ds, probe, policy(ds), interval=interval)
    trainer = MixingTrainer(
        model=model, args=args(tmp_path, steps), train_dataset=ds, probe=probe, callbacks=[cb]
    )
    trainer.train()
    probe.close()
    return ds, cb


@needs_accelerate
def test_mixing_trainer_follows_the_policy(text_store, policy_dir, tmp_path):  # noqa: F811
    seen: list = []

    def controller(ds: MixtureDataset) -> MixingController:
        ctl = MixingController.load(policy_dir, ds.domains, n_layers=3)
        observe = ctl.observe

        def spy(dyn):
            seen.append(dyn)
            return observe(dyn)

        ctl.observe = spy  # type: ignore[method-assign]
        return ctl

    ds, cb = run(tmp_path, text_store, controller)
    steps = [s for s, _ in cb.history]
    assert steps == [0, 2, 4]  # uniform start, then one decision per K = 2 steps
    np.testing.assert_allclose(cb.history[0][1], 1 / 3)
    ctl = cb.policy
    assert isinstance(ctl, MixingController)
    for dyn, (_, w) in zip(seen, cb.history[1:], strict=True):
        assert dyn.share.sum() == pytest.approx(1.0) and np.any(dyn.gram != 0)
        np.testing.assert_allclose(w, ctl.policy.weights(build_observation(dyn, ctl.spec)))
        assert np.abs(w - 1 / 3).max() > 1e-3
    np.testing.assert_allclose(ds.weights, cb.history[-1][1])


@needs_accelerate
def test_mixing_callback_with_an_acodm_mixer(text_store, tmp_path):  # noqa: F811
    ds, cb = run(tmp_path, text_store, lambda ds: make_mixer("natural"), steps=2, interval=1)
    tokens = np.array([ds.store.num_tokens(d) for d in ds.domains], dtype=np.float64)
    assert [s for s, _ in cb.history] == [0, 1, 2]
    np.testing.assert_allclose(ds.weights, tokens / tokens.sum())


@needs_accelerate
def test_a_plain_trainer_with_the_loss_hook_equals_the_mixing_trainer(text_store, tmp_path):  # noqa: F811
    from transformers import Trainer

    from acodm.policies.hf import SequenceLoss

    results = []
    for hook in (False, True):
        ds = MixtureDataset(text_store, seq_len=SEQ, seed=0)
        model = build_model("tiny", ds.vocab_size, max_seq_len=SEQ + 1, seed=0)
        probe = DynamicsProbe(model, ds.domains)
        seen: list = []
        mixer = make_mixer("odm:warmup=0")
        update = mixer.update
        mixer.update = lambda fb, update=update, seen=seen: (seen.append(fb), update(fb))[1]
        cb = MixingCallback(ds, probe, mixer, interval=1)
        if hook:
            loss = SequenceLoss(probe).attach(model)
            trainer = Trainer(
                model=model,
                args=args(tmp_path, 3),
                train_dataset=ds,
                compute_loss_func=loss,
                callbacks=[cb],
            )
        else:
            trainer = MixingTrainer(
                model=model, args=args(tmp_path, 3), train_dataset=ds, probe=probe, callbacks=[cb]
            )
        trainer.train()
        probe.close()
        results.append((seen, cb.history, {k: v.clone() for k, v in model.state_dict().items()}))
    (a_seen, a_hist, a_model), (b_seen, b_hist, b_model) = results
    assert len(a_seen) == len(b_seen) == 3
    for x, y in zip(a_seen, b_seen, strict=True):
        np.testing.assert_array_equal(x.counts, y.counts)
        np.testing.assert_allclose(x.loss, y.loss, rtol=1e-6)
        np.testing.assert_allclose(x.dynamics.gram, y.dynamics.gram, rtol=1e-4, atol=1e-12)
    for (_, u), (_, v) in zip(a_hist, b_hist, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6)
    for name, t in a_model.items():
        torch.testing.assert_close(b_model[name], t, rtol=1e-4, atol=1e-5)


def _worker(*argv: str, procs: int = 1) -> None:
    """tests.policies.hf_worker as one process or under torchrun with ``procs`` processes."""
    import os
    import subprocess
    import sys

    from tests.fixtures import free_port

    launch = [sys.executable]
    if procs > 1:
        launch += ["-m", "torch.distributed.run", "--nproc-per-node", str(procs)]
        launch += ["--master-port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launch, "-m", "tests.policies.hf_worker", *argv]
    subprocess.run(cmd, check=True, env=env, timeout=600)


@needs_accelerate
@pytest.mark.parametrize("dispatch", [True, False], ids=["dispatch", "no-dispatch"])
def test_two_processes_under_torchrun_match_one_process(text_store, tmp_path, dispatch):  # noqa: F811
    import json

    one, two = tmp_path / "one.json", tmp_path / "two.json"
    _worker(str(text_store), str(one), "8", "1")
    _worker(str(text_store), str(two), "4", "1" if dispatch else "0", procs=2)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert len(a["seen"]) == len(b["seen"]) == 4
    for x, y in zip(a["seen"], b["seen"], strict=True):
        assert x["counts"] == y["counts"]  # the same global stream, all ranks' sequences
        np.testing.assert_allclose(y["loss"], x["loss"], rtol=1e-5)
        np.testing.assert_allclose(y["epochs"], x["epochs"], rtol=1e-12)
        # each rank's loss is its own batch's mean: per-domain gradients twice one process's
        np.testing.assert_allclose(y["gram"], 4 * np.asarray(x["gram"]), rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(b["history"], a["history"], rtol=1e-5)
    for name, v in a["model"].items():
        assert b["model"][name] == pytest.approx(v, rel=1e-3, abs=1e-3), name


class _Crash(RuntimeError):
    """A named fake failure that interrupts a Trainer run (test only)."""


@needs_accelerate
def test_resume_from_a_trainer_checkpoint_continues_the_mixture_exactly(text_store, tmp_path):  # noqa: F811
    from transformers import Trainer, TrainerCallback

    from acodm.policies.hf import SequenceLoss

    class CrashAt(TrainerCallback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                raise _Crash(f"simulated crash at step {self.step}")

    # A Llama shape: transformers 5's Trainer resumes a GPT-NeoX checkpoint without its output
    # head (it saves "embed_out.weight" and loads into "lm_head.weight"), which is not ours
    from transformers import LlamaConfig

    shape = tmp_path / "llama"
    LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    ).save_pretrained(shape)

    def run(out, *, crash=None, resume=False):
        ds = MixtureDataset(text_store, seq_len=SEQ, seed=0)
        model = build_model(shape, ds.vocab_size, max_seq_len=SEQ + 1, seed=0)
        probe = DynamicsProbe(model, ds.domains)
        cb = MixingCallback(ds, probe, make_mixer("odm:warmup=0"), interval=2)
        a = args(out, 8)
        a.save_strategy, a.save_steps, a.ignore_data_skip = "steps", 2, True
        a.gradient_accumulation_steps = 2
        callbacks = [cb] + ([CrashAt(crash)] if crash else [])
        trainer = Trainer(
            model=model,
            args=a,
            train_dataset=ds,
            compute_loss_func=SequenceLoss(probe).attach(model),
            callbacks=callbacks,
        )
        try:
            trainer.train(resume_from_checkpoint=True if resume else None)
        except _Crash:
            pass
        finally:
            probe.close()
        return cb, {k: v.clone() for k, v in model.state_dict().items()}, ds

    full_cb, full_model, full_ds = run(tmp_path / "full")
    run(tmp_path / "cut", crash=5)
    assert (tmp_path / "cut" / "hf" / "checkpoint-4" / "acodm_mixing.json").is_file()
    cut_cb, cut_model, cut_ds = run(tmp_path / "cut", resume=True)
    assert [s for s, _ in cut_cb.history] == [s for s, _ in full_cb.history] == [0, 2, 4, 6, 8]
    for (_, u), (_, v) in zip(cut_cb.history, full_cb.history, strict=True):
        np.testing.assert_array_equal(u, v)
    assert cut_ds.drawn == full_ds.drawn
    assert cut_ds.state_dict() == full_ds.state_dict()
    for name, t in full_model.items():
        assert torch.equal(cut_model[name], t), name


@needs_accelerate
def test_resume_rules_of_the_mixing_callback(text_store, tmp_path):  # noqa: F811
    ds = MixtureDataset(text_store, seq_len=SEQ, seed=0)
    model = build_model("tiny", ds.vocab_size, max_seq_len=SEQ + 1, seed=0)
    probe = DynamicsProbe(model, ds.domains)
    a = args(tmp_path, 4)
    a.save_strategy, a.save_steps = "steps", 3
    cb = MixingCallback(ds, probe, make_mixer("uniform"), interval=2)
    trainer = MixingTrainer(model=model, args=a, train_dataset=ds, probe=probe, callbacks=[cb])
    with pytest.raises(HFMixingError, match="not a multiple of the mixing interval"):
        trainer.train()
    with pytest.raises(HFMixingError, match="no record of its state"):
        ds.stream_state(12345)
    probe.close()


@needs_accelerate
def test_a_resumed_trainer_under_torchrun_continues_exactly(text_store, tmp_path):  # noqa: F811
    import json

    out = {}
    for phase, run in (("full", "full"), ("crash", "cut"), ("resume", "cut")):
        path = tmp_path / f"{phase}.json"
        _worker(str(text_store), str(path), "4", "1", phase, str(tmp_path / run), procs=2)
        out[phase] = json.loads(path.read_text())
    full, resumed = out["full"], out["resume"]
    assert len(out["crash"]["history"]) == 6  # start, then steps 1-4 ... crashed in step 5
    assert resumed["history"] == full["history"]  # the restored decisions, then the new ones
    assert resumed["drawn"] == full["drawn"]
    assert resumed["model"] == full["model"]
    assert resumed["seen"] == full["seen"][4:]  # the decisions after the checkpoint
