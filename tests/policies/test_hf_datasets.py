"""DatasetsMixture: a dict of Hugging Face datasets (map-style or streaming) mixed by weights."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from datasets import Dataset

from acodm.policies.hf import HFMixingError
from acodm.policies.hf_datasets import DatasetsMixture

SEQ = 8


def parts(streaming: bool = False) -> dict:
    # domain "a": examples of ids 100.., "b": 200..; lengths 3..7 so windows cross examples
    out = {}
    for d, base in (("a", 100), ("b", 200)):
        ids = [[base + 10 * j + t for t in range(3 + j % 5)] for j in range(12)]
        ds = Dataset.from_dict({"input_ids": ids})
        out[d] = ds.to_iterable_dataset() if streaming else ds
    return out


def flat(domain_parts, d: str) -> list[int]:
    out: list[int] = []
    for ex in domain_parts[d]:
        out += [*ex["input_ids"], 0]
    return out


def take(ds: DatasetsMixture, n: int) -> list[dict[str, torch.Tensor]]:
    it = iter(ds)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_windows_follow_each_domain_in_order_and_overlap_by_one(streaming):
    src = parts(streaming)
    ds = DatasetsMixture(src, seq_len=SEQ, eos_id=0, seed=1, weights=[1.0, 0.0])
    items = take(ds, 6)
    assert all(int(x["domain"]) == 0 for x in items)
    stream = flat(parts(), "a")
    for j, x in enumerate(items):  # window j starts at token j * SEQ of the joined domain
        assert x["input_ids"].tolist() == stream[j * SEQ : j * SEQ + SEQ + 1]
        assert torch.equal(x["labels"], x["input_ids"])
    ds.set_weights({"a": 0.0, "b": 1.0})
    assert int(take(ds, 1)[0]["domain"]) == 1


def test_a_domain_that_runs_out_starts_again_and_counts_epochs():
    src = parts()
    ds = DatasetsMixture(src, seq_len=SEQ, eos_id=0, weights=[0.0, 1.0])
    n = len(flat(src, "b")) // SEQ + 2
    take(ds, n)
    assert ds.epochs()[1] >= 1.0 and ds.epochs()[0] == 0.0


@pytest.mark.parametrize("streaming", [False, True], ids=["map", "streaming"])
def test_stream_state_resumes_exactly_with_changes_made_while_reading_ahead(streaming):
    a = DatasetsMixture(parts(streaming), seq_len=SEQ, eos_id=0, seed=3)
    a.snapshot_every = 4
    first = take(a, 8)  # the loader read 8 items; training consumed 4 of them
    a.set_weights([0.8, 0.2])  # decided after step 1, while 8 were read
    rest = take(a, 10)
    state = json.loads(json.dumps(a.stream_state(4)))
    b = DatasetsMixture(parts(streaming), seq_len=SEQ, eos_id=0, seed=3)
    b.load_stream_state(state)
    again = take(b, 14)
    for x, y in zip(first[4:] + rest, again, strict=True):
        assert torch.equal(x["input_ids"], y["input_ids"]) and int(x["domain"]) == int(y["domain"])


def test_text_through_a_tokenizer_and_clear_errors():
    class Chars:  # a fake tokenizer for the test: one id per character
        eos_token_id = 1

        def __call__(self, text):
            return {"input_ids": [ord(c) for c in text]}

    text = {"x": Dataset.from_dict({"text": ["hello world", "more text here"]})}
    ds = DatasetsMixture(text, seq_len=4, tokenizer=Chars())
    assert take(ds, 1)[0]["input_ids"].tolist() == [ord(c) for c in "hell"] + [ord("o")]
    with pytest.raises(HFMixingError, match="no EOS id"):
        DatasetsMixture(text, seq_len=4)
    with pytest.raises(HFMixingError, match="no tokenizer"):
        take(DatasetsMixture(text, seq_len=4, eos_id=0), 1)
    with pytest.raises(HFMixingError, match="no examples"):
        take(DatasetsMixture({"e": Dataset.from_dict({"input_ids": []})}, seq_len=4, eos_id=0), 1)
    with pytest.raises(HFMixingError, match="unknown length"):
        DatasetsMixture(parts(True), seq_len=4, eos_id=0).domain_tokens()
    est = DatasetsMixture(parts(), seq_len=4, eos_id=0).domain_tokens()
    assert est.tolist() == [len(flat(parts(), "a")), len(flat(parts(), "b"))]


needs_accelerate = pytest.mark.skipif(
    importlib.util.find_spec("accelerate") is None, reason="the Trainer needs accelerate"
)


@needs_accelerate
def test_a_trainer_mixes_the_datasets_with_a_mixer(tmp_path):
    from transformers import Trainer, TrainingArguments

    from acodm.dynamics import DynamicsProbe
    from acodm.mixers import make_mixer
    from acodm.models import build_model
    from acodm.policies.hf import MixingCallback, SequenceLoss

    ds = DatasetsMixture(parts(), seq_len=SEQ, eos_id=0, seed=0)
    model = build_model("tiny", 512, max_seq_len=SEQ + 1, seed=0)
    probe = DynamicsProbe(model, ds.domains)
    cb = MixingCallback(ds, probe, make_mixer("natural"), interval=1)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        max_steps=2,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    Trainer(
        model=model,
        args=args,
        train_dataset=ds,
        compute_loss_func=SequenceLoss(probe).attach(model),
        callbacks=[cb],
    ).train()
    probe.close()
    tokens = ds.domain_tokens().astype(float)
    np.testing.assert_allclose(ds.weights, tokens / tokens.sum())
    assert [s for s, _ in cb.history] == [0, 1, 2]
