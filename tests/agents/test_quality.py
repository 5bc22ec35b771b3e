"""Behaviour of the quality agent's classifier (METHOD.md, "Multi-agent scores")."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from acodm.agents.quality import (
    HashedNgramFeaturizer,
    QualityClassifier,
    degrade,
    quantile_bins,
    roc_auc,
    train_quality,
)


@lru_cache(maxsize=1)
def comment_prose() -> tuple[str, ...]:
    """Comment prose of the standard library: real English text on every machine."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for p in sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 4000)[:400]:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
        words = " ".join(
            ln.strip().lstrip("#").strip() for ln in lines if ln.strip().startswith("#")
        )
        if len(words.split()) > 60:
            docs.append(" ".join(words.split()[:300]))
    return tuple(docs)


@lru_cache(maxsize=1)
def trained() -> QualityClassifier:
    docs = comment_prose()
    return train_quality(docs[::2], [], seed=0, featurizer=HashedNgramFeaturizer(n_features=2**16))


def test_separates_held_out_reference_from_degraded_text() -> None:
    held_out = list(comment_prose()[1::2])
    assert len(held_out) >= 50
    negatives = degrade(held_out, seed=1)  # cycles shuffled, bigram babble, boilerplate
    pos, neg = trained().score(held_out), trained().score(negatives)
    assert np.all((pos >= 0) & (pos <= 1))

    def auc(n: np.ndarray) -> float:
        return roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(n))], np.r_[pos, n])

    shuffled, babble, repeated = neg[0::3], neg[1::3], neg[2::3]
    assert auc(np.r_[shuffled, repeated]) >= 0.9
    assert auc(repeated) >= 0.95
    # bigram babble has in-distribution uni/bigrams: a (1, 2)-gram model only partly sees it
    assert auc(babble) >= 0.6


def test_save_load_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    clf = trained()
    texts = list(comment_prose()[1:20:2])
    clf.save(tmp_path / "q")
    assert not list((tmp_path / "q").glob("*.pkl"))
    again = QualityClassifier.load(tmp_path / "q")
    np.testing.assert_array_equal(again.score(texts), clf.score(texts))


def test_featurizer_is_stable_across_processes() -> None:
    text = "The quick brown fox, said the Docstring: 42 times!"
    feat = HashedNgramFeaturizer(n_features=2**12, ngrams=(1, 3), char_ngrams=(3, 4))
    idx, val = feat.row(text)
    code = (
        "from acodm.agents.quality import HashedNgramFeaturizer as H;"
        f"i, v = H(n_features=2**12, ngrams=(1, 3), char_ngrams=(3, 4)).row({text!r});"
        "print([int(x) for x in i]); print([round(float(x), 12) for x in v])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    ).stdout.splitlines()
    assert out[0] == str([int(i) for i in idx])
    assert out[1] == str([round(float(x), 12) for x in val])
    assert np.isclose(np.linalg.norm(val), 1.0)


def test_roc_auc_hand_example_with_ties() -> None:
    # pairs (pos, neg): 0.8>0.4, 0.8>0.2, 0.4=0.4 (1/2), 0.4>0.2 -> 3.5 / 4
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.4, 0.4, 0.2])) == 0.875
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([0, 1, 1]), np.array([0.9, 0.1, 0.2])) == 0.0
    with pytest.raises(ValueError):
        roc_auc(np.array([1, 1]), np.array([0.1, 0.2]))


def test_quantile_bins_are_balanced_within_each_domain() -> None:
    rng = np.random.default_rng(0)
    domains = ["a"] * 100 + ["b"] * 53 + ["c"] * 7
    # domain b scores far higher than a: global bins would put all of b on top
    scores = np.r_[rng.random(100), 10 + rng.random(53), rng.random(7) - 5]
    bins = quantile_bins(scores, domains, n_bins=5)
    for dom in "abc":
        b = bins[np.array(domains) == dom]
        counts = np.bincount(b, minlength=5)
        assert counts.max() - counts.min() <= 1, (dom, counts)
        s = scores[np.array(domains) == dom]
        assert np.all(np.diff(b[np.argsort(s)]) >= 0)  # monotone in score
