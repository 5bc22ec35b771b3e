"""Behaviour of the topic agent (METHOD.md, "Multi-agent scores")."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from acodm.agents.topic import TopicModel, kmeans, nmi, purity, sentence_embeddings


def planted_corpus(
    n_docs: int = 240, n_topics: int = 4, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """Documents mixing one topic's vocabulary (60%) with a shared vocabulary (40%)."""
    rng = np.random.default_rng(seed)
    syll = ["ba", "ko", "ri", "tu", "me", "sa", "lo", "fi", "nu", "ge"]
    words = ["".join(p) for p in itertools.product(syll, repeat=3)]
    rng.shuffle(words)
    topics = [words[i * 50 : (i + 1) * 50] for i in range(n_topics)]
    shared = words[n_topics * 50 : n_topics * 50 + 100]
    labels = np.arange(n_docs) % n_topics
    texts = [" ".join([*rng.choice(topics[t], 24), *rng.choice(shared, 16)]) for t in labels]
    return texts, labels


def test_recovers_planted_topics() -> None:
    texts, labels = planted_corpus()
    model = TopicModel(dim=16)
    pred = model.fit(texts[:200], k=4, seed=0)
    assert nmi(labels[:200], pred) >= 0.8
    assert nmi(labels[200:], model.assign(texts[200:])) >= 0.8


def test_deterministic_for_a_seed_and_round_trips(tmp_path: Path) -> None:
    texts, _ = planted_corpus(n_docs=120, n_topics=3, seed=1)
    a, b = TopicModel(dim=8), TopicModel(dim=8)
    np.testing.assert_array_equal(a.fit(texts, 3, seed=5), b.fit(texts, 3, seed=5))
    a.save(tmp_path / "t")
    again = TopicModel.load(tmp_path / "t")
    np.testing.assert_array_equal(again.assign(texts), a.assign(texts))
    np.testing.assert_allclose(again.embed(texts[:5]), a.embed(texts[:5]))


def test_nmi_and_purity_hand_examples() -> None:
    y = np.array([0, 0, 1, 1])
    assert nmi(y, np.array([5, 5, 7, 7])) == pytest.approx(1.0)  # same partition, renamed
    assert nmi(y, np.array([0, 1, 0, 1])) == pytest.approx(0.0)  # independent
    assert purity(y, np.array([0, 1, 0, 1])) == 0.5
    assert purity(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 1, 1])) == pytest.approx(
        4 / 6
    )
    # one cluster for two equal classes: H(pred) = 0, MI = 0
    assert nmi(y, np.zeros(4)) == 0.0
    # 3 classes in 2 clusters: MI = ln 2 / ... hand-computed: H(y)=1.0397, H(p)=0.6931
    y3, p3 = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 0, 1, 1])
    h_y, h_p = np.log(3), -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    assert nmi(y3, p3) == pytest.approx(h_p / ((h_y + h_p) / 2))


def test_kmeans_separates_blobs() -> None:
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2))]
    _, labels, _ = kmeans(x, 2, seed=0)
    assert nmi(np.r_[np.zeros(30), np.ones(30)], labels) == pytest.approx(1.0)


def test_embedding_backend_names_the_extra_when_missing() -> None:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"acodm\[topic\]"):
            sentence_embeddings(["hello"])
    else:
        pytest.skip("sentence-transformers installed")
