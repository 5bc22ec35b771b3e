"""Behaviour of store annotation by the quality and topic agents (acodm.agents.annotate)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acodm.agents import annotate as ann
from acodm.agents.annotate import AnnotationError, annotate_store, load_annotations
from acodm.data.store import TokenStore
from tests.fixtures import make_text_store

REF = ["prose"]


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real 3-domain store (code, prose, numbers), annotated once."""
    store = make_text_store(tmp_path_factory.mktemp("ann") / "store")
    annotate_store(store.path, reference_domains=REF, progress=False)
    return store.path


@pytest.fixture
def store_copy(annotated: Path, tmp_path: Path) -> Path:
    """A private copy of the annotated store that a test may modify."""
    return Path(shutil.copytree(annotated, tmp_path / "store"))


def _no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("annotations must never be unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


def test_arrays_aligned_balanced_in_range(annotated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_pickle(monkeypatch)
    store = TokenStore(annotated)
    a = load_annotations(annotated)
    assert a.domains == tuple(store.domains) and a.reference_domains == ("prose",)
    for d in store.domains:
        n = store.num_documents(d)
        assert a.quality_score[d].shape == a.quality_bin[d].shape == a.topic[d].shape == (n,)
        assert np.all((a.quality_score[d] >= 0) & (a.quality_score[d] <= 1))
        counts = np.bincount(a.quality_bin[d], minlength=5)
        assert len(counts) == 5 and counts.max() - counts.min() <= 1  # balanced within domain
        assert a.topic[d].min() >= 0 and a.topic[d].max() < a.n_topics
    assert a.n_topics == 12
    # the reference domain scores higher than the pool on average
    assert a.quality_score["prose"].mean() > a.quality_score["code"].mean()
    meta = json.loads((annotated / "annotations" / "annotations.json").read_text())
    assert meta["corpus_hash"] == store.corpus_hash
    assert meta["tokenizer_sha256"] == store.tokenizer_sha256
    assert sum(meta["agents"]["quality"]["counts"].values()) == sum(
        store.num_documents(d) for d in store.domains
    )
    assert (annotated / "annotations" / "quality" / "quality.safetensors").is_file()
    assert (annotated / "annotations" / "topic" / "topic.safetensors").is_file()


def test_deterministic_for_a_seed(annotated: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(annotated, tmp_path / "s2"))
    shutil.rmtree(other / "annotations")
    annotate_store(other, reference_domains=REF, progress=False)
    a, b = load_annotations(annotated), load_annotations(other)
    for d in a.domains:
        np.testing.assert_array_equal(a.quality_score[d], b.quality_score[d])
        np.testing.assert_array_equal(a.quality_bin[d], b.quality_bin[d])
        np.testing.assert_array_equal(a.topic[d], b.topic[d])


def _refuse_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("trained again")

    monkeypatch.setattr(ann, "train_quality", boom)


def test_second_call_does_no_work(store_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_training(monkeypatch)
    out = annotate_store(store_copy, reference_domains=REF, progress=False)
    assert out == store_copy / "annotations"


def test_stale_store_raises_unless_overwrite(
    store_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta_path = store_copy / "annotations" / "annotations.json"
    meta = json.loads(meta_path.read_text())
    meta["corpus_hash"] = "another-corpus"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(AnnotationError, match="stale"):
        load_annotations(store_copy)
    with pytest.raises(AnnotationError, match="overwrite"):
        annotate_store(store_copy, reference_domains=REF, progress=False)
    _refuse_training(monkeypatch)
    with pytest.raises(RuntimeError, match="trained again"):  # overwrite does the work
        annotate_store(store_copy, reference_domains=REF, overwrite=True, progress=False)
    assert json.loads(meta_path.read_text())["corpus_hash"] == "another-corpus"  # untouched


def test_other_settings_raise_unless_overwrite(store_copy: Path) -> None:
    with pytest.raises(AnnotationError, match="settings"):
        annotate_store(store_copy, reference_domains=REF, n_topics=3, progress=False)


def test_reference_domains_are_checked(store_copy: Path) -> None:
    with pytest.raises(AnnotationError, match="reference_domains="):
        annotate_store(store_copy, progress=False)  # no wiki/books/speeches in this store
    with pytest.raises(AnnotationError, match="unknown"):
        annotate_store(store_copy, reference_domains=["wiki"], progress=False)


@pytest.mark.parametrize("name", ["annotations.json", "annotations.safetensors", None])
def test_annotation_files_linked_from_outside_the_store_are_refused(
    store_copy: Path, tmp_path: Path, name: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shared store must not make acodm read annotations kept elsewhere (None: the folder)."""
    from acodm.cli import main

    inside = store_copy / "annotations" / name if name else store_copy / "annotations"
    outside = tmp_path / "elsewhere"
    shutil.move(inside, outside)
    inside.symlink_to(outside)
    with pytest.raises(AnnotationError, match=r"leads outside .* symbolic link.*acodm annotate"):
        load_annotations(store_copy)
    capsys.readouterr()
    argv = ["annotate", str(store_copy), "--reference", ",".join(REF), "--quiet"]
    assert main(argv) == 2  # it would reuse them
    assert "leads outside" in capsys.readouterr().err


def test_missing_or_corrupt_annotations(store_copy: Path) -> None:
    tensors = store_copy / "annotations" / "annotations.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:40])
    with pytest.raises(AnnotationError, match="corrupt"):
        load_annotations(store_copy)
    shutil.rmtree(store_copy / "annotations")
    with pytest.raises(AnnotationError, match="acodm annotate"):
        load_annotations(store_copy)


def test_text_without_words_is_a_clear_error(tmp_path: Path) -> None:
    """Text the TF-IDF agent cannot read (here ids like "t17"; or a non-Latin script): one
    line naming the fix, exit 2, no annotations folder."""
    from acodm.cli import main
    from tests.fixtures import make_position_store

    store = make_position_store(tmp_path / "ids", {"a": 3000, "b": 3000, "c": 3000})
    with pytest.raises(AnnotationError, match="--topic-backend embeddings"):
        annotate_store(store.path, reference_domains=["a"], progress=False, topic_backend="tfidf")
    assert main(["annotate", str(store.path), "--reference", "a", "--quiet"]) == 2
    assert not (store.path / "annotations").exists()
