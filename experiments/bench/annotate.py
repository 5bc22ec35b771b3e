"""Benchmark: the multi-agent annotators (METHOD.md, "Multi-agent scores") on a real corpus.

Quality: reference = wiki + books + speeches, pool = the other domains (80/20 split per
domain, seeded). ``quality_auc``: held-out reference vs. held-out pool. ``quality_within_domain_auc``:
mean over domains of held-out real documents vs. degraded copies of the same documents (a
score that only detected domains would sit at 0.5 here). Topic: TF-IDF + SVD + k-means
(k = 12) on the wiki domain, NMI / purity against ``meta["topic"]``.

    ACODM_CACHE=... acodm corpus build --out /tmp/c5
    python experiments/bench/annotate.py --corpus /tmp/c5 --json results/annotate.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import machine

from acodm.agents.quality import degrade, roc_auc, train_quality
from acodm.agents.topic import TopicModel, kmeans, nmi, purity, sentence_embeddings
from acodm.data.corpus import Corpus

REFERENCE = ("wiki", "books", "speeches")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", default="/tmp/c5")
    ap.add_argument("--json", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--topic-docs", type=int, default=0, help="wiki documents for the topic agent (0: all)"
    )
    ap.add_argument(
        "--embeddings",
        action="store_true",
        help="also cluster sentence embeddings (needs the topic extra) on the same documents",
    )
    args = ap.parse_args()
    corpus = Corpus(args.corpus)
    rng = np.random.default_rng(args.seed)
    train: dict[str, list[str]] = {}
    test: dict[str, list[str]] = {}
    for d in corpus.domains:
        texts = [doc.text for doc in corpus.iter_documents(d)]
        held = rng.random(len(texts)) < 0.2
        train[d] = [t for t, h in zip(texts, held, strict=True) if not h]
        test[d] = [t for t, h in zip(texts, held, strict=True) if h]
    ref = [t for d in REFERENCE for t in train[d]]
    pool = [t for d in corpus.domains if d not in REFERENCE for t in train[d]]
    t0 = time.perf_counter()
    clf = train_quality(ref, pool, seed=args.seed)
    train_s = time.perf_counter() - t0
    n_train = len(ref) * 4 + len(pool)
    t0 = time.perf_counter()
    scores = {d: clf.score(test[d]) for d in corpus.domains}
    score_s = time.perf_counter() - t0
    n_test = sum(len(v) for v in test.values())
    pos = np.concatenate([scores[d] for d in REFERENCE])
    neg = np.concatenate([scores[d] for d in corpus.domains if d not in REFERENCE])
    auc = roc_auc(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    within = {}
    for i, d in enumerate(corpus.domains):
        bad = clf.score(degrade(test[d], seed=100 + i))
        within[d] = roc_auc(np.r_[np.ones(len(bad)), np.zeros(len(bad))], np.r_[scores[d], bad])
    wiki = list(corpus.iter_documents("wiki"))
    if 0 < args.topic_docs < len(wiki):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(wiki), args.topic_docs, False))
        wiki = [wiki[i] for i in keep]
    topics = np.array([str((doc.meta or {}).get("topic")) for doc in wiki])
    t0 = time.perf_counter()
    pred = TopicModel().fit([doc.text for doc in wiki], k=12, seed=args.seed)
    topic_s = time.perf_counter() - t0
    result = {
        "quality_auc": auc,
        "quality_within_domain_auc": float(np.mean(list(within.values()))),
        "quality_within_domain_auc_per_domain": within,
        "quality_train_docs_per_s": n_train / train_s,
        "quality_score_docs_per_s": n_test / score_s,
        "topic_nmi": nmi(topics, pred),
        "topic_purity": purity(topics, pred),
        "topic_fit_docs_per_s": len(wiki) / topic_s,
        "topic_docs": len(wiki),
        "machine": machine(),
    }
    if args.embeddings:
        t0 = time.perf_counter()
        emb = sentence_embeddings([doc.text for doc in wiki], progress=True)
        _, emb_pred, _ = kmeans(emb, 12, seed=args.seed)
        result["topic_embeddings_nmi"] = nmi(topics, emb_pred)
        result["topic_embeddings_purity"] = purity(topics, emb_pred)
        result["topic_embeddings_docs_per_s"] = len(wiki) / (time.perf_counter() - t0)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
