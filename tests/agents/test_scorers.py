"""User-supplied quality scorers (acodm.agents.scorers) and annotation with them."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acodm.agents import annotate as ann
from acodm.agents.annotate import AnnotationError, annotate_store, load_annotations
from acodm.agents.quality import quantile_bins
from acodm.agents.scorers import hf_sequence_classifier, load_scorer, scorer_identity
from acodm.cli import main
from acodm.data.store import TokenStore
from acodm.errors import AcodmError
from tests.fixtures import make_text_store

REF = ["prose"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPEC = "tests.agents.test_scorers:text_length"


def text_length(texts: Sequence[str]) -> list[float]:
    """A scorer for the tests: longer = better."""
    return [float(len(t)) for t in texts]


def word_count(texts: Sequence[str]) -> np.ndarray:
    return np.array([len(t.split()) for t in texts], dtype=np.float64)


def test_scorers_do_not_import_annotate() -> None:
    # the error both modules raise lives in acodm.errors, so the import graph has no circle
    code = "import sys, acodm.agents.scorers; print('acodm.agents.annotate' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert issubclass(AnnotationError, AcodmError)
    assert AnnotationError.__module__ == "acodm.errors"  # the old import path still works


@pytest.fixture(scope="module")
def plain_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real 3-domain store (code, prose, numbers), not annotated."""
    return make_text_store(tmp_path_factory.mktemp("scorers") / "store").path


@pytest.fixture
def store(plain_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(plain_store, tmp_path / "store"))


def _texts(path: Path) -> tuple[list[str], list[str]]:
    """The store's training documents as annotation decodes them, and their domains."""
    ts = TokenStore(path)
    tok = ts.tokenizer()
    texts = {d: ann.decode_domain(ts, d, tok, ann.MAX_CHARS) for d in ts.domains}
    return [t for d in ts.domains for t in texts[d]], [d for d in ts.domains for _ in texts[d]]


def _refuse_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the built-in classifier must not be trained")

    monkeypatch.setattr(ann, "train_quality", boom)


def _no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a scorer folder must never be unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)


def _flat(a: ann.Annotations, name: str) -> np.ndarray:
    return np.concatenate([getattr(a, name)[d] for d in a.domains])


def test_callable_scores_and_within_domain_bins(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_training(monkeypatch)
    annotate_store(store, reference_domains=REF, quality_scorer=text_length, progress=False)
    a = load_annotations(store)
    texts, domains = _texts(store)
    expected = np.array(text_length(texts))
    np.testing.assert_array_equal(_flat(a, "quality_score"), expected.astype(np.float32))
    np.testing.assert_array_equal(_flat(a, "quality_bin"), quantile_bins(expected, domains, 5))
    assert a.reference_domains == ("prose",) and a.n_quality_bins == 5
    ident = {"kind": "callable", "name": "tests.agents.test_scorers.text_length"}
    assert a.meta["settings"]["quality_scorer"] == ident
    assert json.loads((store / "annotations" / "quality" / "scorer.json").read_text()) == ident
    assert not (store / "annotations" / "quality" / "quality.safetensors").exists()


def test_module_function_spec_and_cli(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_scorer(SPEC) is text_length
    _refuse_training(monkeypatch)
    args = ["annotate", str(store), "--reference", "prose", "--topics", "4", "--quiet"]
    assert main([*args, "--quality-scorer", SPEC]) == 0
    a = load_annotations(store)
    assert a.meta["settings"]["quality_scorer"] == scorer_identity(text_length)
    texts, _ = _texts(store)
    np.testing.assert_array_equal(_flat(a, "quality_score"), np.float32(text_length(texts)))
    assert main([*args, "--quality-scorer", "no_such_module_xyz:f"]) == 2


def test_other_scorer_is_a_settings_change(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    annotate_store(store, reference_domains=REF, quality_scorer=text_length, progress=False)
    _refuse_training(monkeypatch)
    calls: list[int] = []

    def counting(texts: Sequence[str]) -> list[float]:
        calls.append(len(texts))
        return text_length(texts)

    monkeypatch.setattr(counting, "__qualname__", "text_length")
    monkeypatch.setattr(counting, "__module__", "tests.agents.test_scorers")
    annotate_store(store, reference_domains=REF, quality_scorer=counting, progress=False)
    assert calls == []  # same identity, same settings: reused without work
    with pytest.raises(AnnotationError, match=r"settings.*overwrite"):
        annotate_store(store, reference_domains=REF, quality_scorer=word_count, progress=False)
    with pytest.raises(AnnotationError, match=r"settings.*overwrite"):
        annotate_store(store, reference_domains=REF, progress=False)  # the built-in classifier
    annotate_store(
        store, reference_domains=REF, quality_scorer=word_count, overwrite=True, progress=False
    )
    texts, _ = _texts(store)
    np.testing.assert_array_equal(
        _flat(load_annotations(store), "quality_score"), np.float32(word_count(texts))
    )


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_module_xyz:f", "does not import"),
        ("json:no_such_function", "does not import"),
        ("math:pi", "not callable"),
        (":f", "module:function"),
        ("/no/such/folder", "neither an existing folder"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(AnnotationError, match=match):
        load_scorer(spec)


@pytest.mark.parametrize(
    ("scorer", "match"),
    [
        (lambda texts: [1.0] * (len(texts) - 1), "one number per text"),
        (lambda texts: np.zeros((len(texts), 2)), "one number per text"),
        (lambda texts: [float("nan")] + [0.0] * (len(texts) - 1), "non-finite"),
        (lambda texts: ["good"] * len(texts), "did not return numbers"),
        (lambda texts: 1 / 0, "failed"),
    ],
)
def test_bad_scorer_outputs(store: Path, scorer: Any, match: str) -> None:
    with pytest.raises(AnnotationError, match=f"quality scorer .*<lambda>.*{match}"):
        annotate_store(store, reference_domains=REF, quality_scorer=scorer, progress=False)
    assert not (store / "annotations").exists()  # nothing half-written


# --- Hugging Face folders -------------------------------------------------------------------


def _save_hf(folder: Path, store: Path, *, num_labels: int = 3, head: bool = True) -> Any:
    """A tiny 1-layer BERT (sequence classification unless ``head=False``) built from a
    config, with the store's own BPE tokenizer, saved as safetensors into ``folder``."""
    import torch
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertModel,
        PreTrainedTokenizerFast,
    )

    ts = TokenStore(store)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=ts.tokenizer(), pad_token="<|endoftext|>", model_max_length=64
    )
    config = BertConfig(
        vocab_size=ts.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
        id2label={i: f"L{i}" for i in range(num_labels)},
        label2id={f"L{i}": i for i in range(num_labels)},
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config) if head else BertModel(config)
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def _direct(model: Any, tok: Any, texts: Sequence[str]) -> np.ndarray:
    """Each text's logits from the model itself, one text at a time (no padding)."""
    import torch

    with torch.no_grad():
        rows = [
            model(**tok(t, truncation=True, max_length=64, return_tensors="pt")).logits[0]
            for t in texts
        ]
    return torch.stack(rows).numpy()


def test_hf_folder_scores_equal_the_models_softmax(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = _save_hf(tmp_path / "clf", store)
    assert (tmp_path / "clf" / "model.safetensors").is_file()
    _no_pickle(monkeypatch)
    texts, domains = _texts(store)
    logits = _direct(model, tok, texts)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scorer = hf_sequence_classifier(tmp_path / "clf", batch_size=4, progress=False)
    np.testing.assert_allclose(scorer(texts), probs[:, 2], atol=1e-5)  # default: last label
    by_name = hf_sequence_classifier(tmp_path / "clf", label="L0", batch_size=7, progress=False)
    np.testing.assert_allclose(by_name(texts[:9]), probs[:9, 0], atol=1e-5)
    by_index = hf_sequence_classifier(tmp_path / "clf", label=1, progress=False)
    np.testing.assert_allclose(by_index(texts[:9]), probs[:9, 1], atol=1e-5)

    _refuse_training(monkeypatch)
    annotate_store(
        store, reference_domains=REF, quality_scorer=str(tmp_path / "clf"), progress=False
    )
    a = load_annotations(store)
    np.testing.assert_allclose(_flat(a, "quality_score"), probs[:, 2], atol=1e-5)
    np.testing.assert_array_equal(
        _flat(a, "quality_bin"), quantile_bins(_flat(a, "quality_score"), domains, 5)
    )
    ident = a.meta["settings"]["quality_scorer"]
    assert ident["kind"] == "hf_sequence_classifier" and ident["label"] == "L2"
    assert ident["path"] == str((tmp_path / "clf").resolve()) and len(ident["weights_sha256"]) == 64


def test_hf_regression_head_scores_its_logit(store: Path, tmp_path: Path) -> None:
    model, tok = _save_hf(tmp_path / "reg", store, num_labels=1)
    texts = _texts(store)[0][:6]
    scorer = hf_sequence_classifier(tmp_path / "reg", batch_size=4, progress=False)
    np.testing.assert_allclose(scorer(texts), _direct(model, tok, texts)[:, 0], atol=1e-5)


def test_other_weights_are_a_settings_change(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    import transformers

    model, _ = _save_hf(tmp_path / "clf", store)
    annotate_store(
        store, reference_domains=REF, quality_scorer=str(tmp_path / "clf"), progress=False
    )
    with monkeypatch.context() as m:  # reuse needs the identity, not the model
        m.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", None)
        annotate_store(
            store, reference_domains=REF, quality_scorer=str(tmp_path / "clf"), progress=False
        )
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    model.save_pretrained(tmp_path / "clf")  # same folder, new weights
    with pytest.raises(AnnotationError, match="settings"):
        annotate_store(
            store, reference_domains=REF, quality_scorer=str(tmp_path / "clf"), progress=False
        )


def test_pickle_weights_are_refused_unread(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "pickled"
    _save_hf(folder, store)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    _no_pickle(monkeypatch)
    for call in (lambda: hf_sequence_classifier(folder), lambda: load_scorer(str(folder))):
        with pytest.raises(AnnotationError, match=r"pytorch_model\.bin.*safetensors") as e:
            call()
        assert "save_pretrained" in str(e.value)  # names the fix


def test_hf_folder_errors(store: Path, tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="does not exist"):
        hf_sequence_classifier(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnnotationError, match=r"config\.json"):
        hf_sequence_classifier(tmp_path / "empty")
    _save_hf(tmp_path / "base", store, head=False)
    with pytest.raises(AnnotationError, match="not a sequence-classification model"):
        hf_sequence_classifier(tmp_path / "base")
    _save_hf(tmp_path / "clf", store)
    for label in ("nope", 3, -1):
        with pytest.raises(AnnotationError, match="is not a label"):
            hf_sequence_classifier(tmp_path / "clf", label=label)


# --- the topic agent's sentence-embedding backend ----------------------------------------------


def test_topic_embeddings_backend_with_a_local_encoder(store: Path, tmp_path: Path) -> None:
    import json

    import torch

    from acodm.agents.topic import sentence_embeddings

    enc, tok = _save_hf(tmp_path / "enc", store, head=False)
    texts = ["def f(x): return x", "the quick brown fox", "1 + 2 = 3"]
    emb = sentence_embeddings(texts, tmp_path / "enc", batch_size=2)
    assert emb.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    with torch.no_grad():  # mean pooling over the real tokens, then L2 (all-MiniLM's recipe)
        one = tok([texts[1]], return_tensors="pt")
        want = torch.nn.functional.normalize(enc(**one).last_hidden_state.mean(1), dim=-1)
    np.testing.assert_allclose(emb[1], want[0].double().numpy(), atol=1e-5)

    out = annotate_store(
        store,
        reference_domains=REF,
        topic_backend="embeddings",
        embedding_model=tmp_path / "enc",
        n_topics=4,
        progress=False,
    )
    ann = load_annotations(store)
    assert ann.n_topics == 4 and ann.meta["settings"]["topic_embeddings"]["weights_sha256"]
    assert all(t.min() >= 0 and t.max() < 4 for t in ann.topic.values())
    assert json.loads((out / "topic" / "topic.json").read_text())["backend"] == "embeddings"
    with pytest.raises(AnnotationError, match="settings"):  # TF-IDF is another setting
        annotate_store(store, reference_domains=REF, n_topics=4, progress=False)


def test_topic_backend_choice_and_errors(store: Path, tmp_path: Path) -> None:
    annotate_store(store, reference_domains=REF, topic_backend="auto", progress=False)
    assert "topic_embeddings" not in load_annotations(store).meta["settings"]  # no model: TF-IDF
    with pytest.raises(AnnotationError, match="topic extra"):
        annotate_store(store, reference_domains=REF, topic_backend="embeddings", progress=False)
    with pytest.raises(AnnotationError, match="topic_backend"):
        annotate_store(store, reference_domains=REF, topic_backend="lda", progress=False)
