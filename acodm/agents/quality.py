"""The quality agent's offline annotation: hashed n-gram logistic regression.

METHOD.md, "Multi-agent scores / Offline annotation": train a small classifier on
reference-quality text vs. the pool, and bin its scores by quantiles *within* each domain so
that the bins do not just detect domains. The paper uses a FineWeb-Edu-style classifier;
nothing like it is available offline (DATA.md, "Quality"), so acodm trains its own:

* :class:`HashedNgramFeaturizer`: word n-grams (and optional byte n-grams) hashed into a fixed
  number of buckets with a *stable* hash (CRC-32 of each word, n-grams mixed in numpy), so the
  features are the same in every process (Python's ``hash`` is salted per process);
  ``log1p`` counts, L2-normalised per document.
* :class:`QualityClassifier`: L2-regularised logistic regression, full-batch Adam in numpy
  on a sparse (CSR) design matrix; classes are balanced by weighting.
* :func:`train_quality`: positives = reference texts; negatives = the pool plus degraded copies
  of the references (shuffled words, bigram babble, boilerplate repetition), so the classifier
  learns "well-formed prose" and not only "which source".
* Stored as ``quality.safetensors`` + ``quality.json`` (never pickle).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from acodm.agents.modelfiles import damaged, load_model_folder, save_model_folder

QUALITY_FORMAT = "acodm-quality"
QUALITY_SCHEMA_VERSION = 1
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio), wraps mod 2**64
_MASK32 = np.uint64(0xFFFFFFFF)


def tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return _TOKEN_RE.findall(text.lower())


@dataclass
class SparseRows:
    """A CSR matrix in plain numpy: row ``i`` is ``indices/data[indptr[i]:indptr[i+1]]``."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_rows), np.diff(self.indptr))

    def matvec(self, w: np.ndarray) -> np.ndarray:
        """``X @ w``."""
        return np.bincount(self.row_ids(), self.data * w[self.indices], minlength=self.n_rows)

    def rmatvec(self, r: np.ndarray) -> np.ndarray:
        """``X.T @ r``."""
        return np.bincount(self.indices, self.data * r[self.row_ids()], minlength=self.n_cols)


def stack_rows(rows: Sequence[tuple[np.ndarray, np.ndarray]], n_cols: int) -> SparseRows:
    """CSR from per-row ``(indices, values)`` pairs."""
    lengths = np.array([len(i) for i, _ in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    if rows:
        indices = np.concatenate([i for i, _ in rows]).astype(np.int64)
        data = np.concatenate([v for _, v in rows]).astype(np.float64)
    else:
        indices, data = np.zeros(0, np.int64), np.zeros(0, np.float64)
    return SparseRows(indptr, indices, data, n_cols)


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Stable 64-bit hashes of all ``n``-grams of a sequence of 32-bit ids (numpy, wraps)."""
    if len(ids) < n:
        return np.zeros(0, np.uint64)
    h = ids[: len(ids) - n + 1].copy()
    for j in range(1, n):
        h = h * _MIX + ids[j : len(ids) - n + 1 + j]
    return h ^ np.uint64((n * 0xD6E8FEB86659FD93) % 2**64)


@dataclass
class HashedNgramFeaturizer:
    """Hashed word n-grams (``ngrams=(lo, hi)``) and optional byte n-grams (METHOD.md).

    ``char_ngrams=(lo, hi)`` adds UTF-8 byte n-grams (in a separate hash space); ``None`` turns
    them off. Only the first ``max_chars`` characters of each text are used (bounded cost).
    Deterministic across processes: words are hashed with CRC-32, n-grams mixed in numpy.
    """

    n_features: int = 2**18
    ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] | None = None
    max_chars: int = 20_000

    def __post_init__(self) -> None:
        self.ngrams = (int(self.ngrams[0]), int(self.ngrams[1]))
        if self.char_ngrams is not None:
            self.char_ngrams = (int(self.char_ngrams[0]), int(self.char_ngrams[1]))
        if self.n_features < 2 or not 1 <= self.ngrams[0] <= self.ngrams[1]:
            raise ValueError(f"bad featurizer settings: {self}")
        self._cache: dict[str, int] = {}

    def config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def _word_ids(self, text: str) -> np.ndarray:
        cache = self._cache
        out = []
        for tok in tokenize(text):
            h = cache.get(tok)
            if h is None:
                h = zlib.crc32(tok.encode("utf-8"))
                if len(cache) < 1_000_000:
                    cache[tok] = h
            out.append(h)
        return np.array(out, dtype=np.uint64)

    def hashes(self, text: str) -> np.ndarray:
        """All feature hashes of one text (with repetition)."""
        text = text[: self.max_chars]
        ids = self._word_ids(text)
        parts = [_ngram_hashes(ids, n) for n in range(self.ngrams[0], self.ngrams[1] + 1)]
        if self.char_ngrams is not None:
            raw = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8).astype(np.uint64)
            for n in range(self.char_ngrams[0], self.char_ngrams[1] + 1):
                parts.append(_ngram_hashes(raw + np.uint64(1 << 40), n) ^ _MASK32)
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Sorted bucket indices and their L2-normalised ``log1p`` counts."""
        h = self.hashes(text)
        # fold the high bits in before the modulo so that every bit of the hash matters
        buckets = ((h ^ (h >> np.uint64(29))) % np.uint64(self.n_features)).astype(np.int64)
        idx, counts = np.unique(buckets, return_counts=True)
        vals = np.log1p(counts.astype(np.float64))
        norm = np.linalg.norm(vals)
        return idx, vals / norm if norm > 0 else vals

    def transform(self, texts: Sequence[str]) -> SparseRows:
        """The CSR feature matrix of ``texts``."""
        return stack_rows([self.row(t) for t in texts], self.n_features)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class QualityClassifier:
    """Logistic regression on hashed n-grams; :meth:`score` is P(reference-quality) in [0, 1]."""

    def __init__(
        self,
        featurizer: HashedNgramFeaturizer | None = None,
        *,
        l2: float = 1e-4,
        epochs: int = 200,
        lr: float = 0.1,
    ) -> None:
        self.featurizer = featurizer or HashedNgramFeaturizer()
        self.l2, self.epochs, self.lr = float(l2), int(epochs), float(lr)
        self.weight = np.zeros(self.featurizer.n_features, dtype=np.float32)
        self.bias = 0.0

    def fit(self, texts: Sequence[str], labels: np.ndarray) -> QualityClassifier:
        """Full-batch Adam on the class-balanced, L2-regularised logistic loss (deterministic)."""
        return self.fit_features(self.featurizer.transform(texts), labels)

    def fit_features(self, x: SparseRows, labels: np.ndarray) -> QualityClassifier:
        y = np.asarray(labels, dtype=np.float64)
        if x.n_rows != len(y) or not (0 < y.sum() < len(y)):
            raise ValueError("fit needs one label per text and both classes present")
        sw = np.where(y > 0.5, 0.5 / y.sum(), 0.5 / (len(y) - y.sum()))  # balanced, sums to 1
        rows = x.row_ids()
        params = np.zeros(x.n_cols + 1)
        m, v = np.zeros_like(params), np.zeros_like(params)
        b1, b2 = 0.9, 0.999
        for t in range(1, self.epochs + 1):
            w, b = params[:-1], params[-1]
            z = np.bincount(rows, x.data * w[x.indices], minlength=x.n_rows) + b
            r = sw * (_sigmoid(z) - y)
            grad = np.empty_like(params)
            grad[:-1] = np.bincount(x.indices, x.data * r[rows], minlength=x.n_cols) + self.l2 * w
            grad[-1] = r.sum()
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad**2
            params -= self.lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + 1e-8)
        self.weight = params[:-1].astype(np.float32)
        self.bias = float(params[-1])
        return self

    def score_features(self, x: SparseRows) -> np.ndarray:
        return _sigmoid(x.matvec(self.weight.astype(np.float64)) + self.bias)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Quality scores in [0, 1], one per text."""
        return self.score_features(self.featurizer.transform(texts))

    def save(self, path: str | Path) -> Path:
        """Write ``PATH/quality.safetensors`` (weights) and ``PATH/quality.json`` (settings),
        each atomically (:func:`acodm.agents.modelfiles.save_model_folder`)."""
        meta = {
            "format": QUALITY_FORMAT,
            "schema_version": QUALITY_SCHEMA_VERSION,
            "featurizer": self.featurizer.config(),
            "l2": self.l2,
            "epochs": self.epochs,
            "lr": self.lr,
        }
        arrays: dict[str, np.ndarray] = {
            "weight": self.weight,
            "bias": np.array([self.bias], dtype=np.float64),
        }
        return save_model_folder(path, "quality", meta, arrays, indent=2)

    @classmethod
    def load(cls, path: str | Path) -> QualityClassifier:
        """Read a classifier written by :meth:`save`; a missing, foreign or damaged file is an
        :class:`~acodm.errors.AnnotationError`."""
        what, save = "quality classifier", "QualityClassifier.save"
        meta, tensors = load_model_folder(
            path,
            "quality",
            fmt=QUALITY_FORMAT,
            version=QUALITY_SCHEMA_VERSION,
            what=what,
            save=save,
        )
        with damaged(path, what, save):
            f = meta["featurizer"]
            feat = HashedNgramFeaturizer(
                n_features=int(f["n_features"]),
                ngrams=tuple(f["ngrams"]),
                char_ngrams=None if f["char_ngrams"] is None else tuple(f["char_ngrams"]),
                max_chars=int(f["max_chars"]),
            )
            clf = cls(feat, l2=meta["l2"], epochs=meta["epochs"], lr=meta["lr"])
            weight, bias = tensors["weight"], tensors["bias"]
            if weight.shape != (feat.n_features,) or bias.shape != (1,):
                raise ValueError(
                    f"weight shape {weight.shape} and bias shape {bias.shape}, expected "
                    f"({feat.n_features},) and (1,)"
                )
            clf.weight = weight.astype(np.float32)
            clf.bias = float(bias[0])
        return clf


# --- degraded text (negatives generated from the references) ---------------------------


def shuffle_words(text: str, rng: np.random.Generator) -> str:
    """The same words in a random order (unigram statistics kept, syntax destroyed)."""
    words = text.split()
    return " ".join(words[i] for i in rng.permutation(len(words)))


class BigramBabbler:
    """A word bigram model of some texts; :meth:`babble` samples locally fluent nonsense."""

    def __init__(self, texts: Sequence[str]) -> None:
        words = [w for t in texts for w in t.split()] or ["."]
        self.vocab, ids = np.unique(np.array(words, dtype=object), return_inverse=True)
        ids = ids.astype(np.int64)
        order = np.argsort(ids[:-1], kind="stable")
        self._next = ids[1:][order]
        self._start = np.searchsorted(ids[:-1][order], np.arange(len(self.vocab) + 1))

    def babble(self, n_words: int, rng: np.random.Generator) -> str:
        out = [int(rng.integers(len(self.vocab)))]
        while len(out) < n_words:
            lo, hi = self._start[out[-1]], self._start[out[-1] + 1]
            nxt = self._next[rng.integers(lo, hi)] if hi > lo else rng.integers(len(self.vocab))
            out.append(int(nxt))
        return " ".join(str(self.vocab[i]) for i in out)


def boilerplate(text: str, rng: np.random.Generator) -> str:
    """A short span of the text repeated, separated by navigation-like junk."""
    words = text.split() or ["home"]
    n = max(len(words), 20)
    start = int(rng.integers(len(words)))
    span = " ".join(words[start : start + int(rng.integers(3, 10))])
    junk = ["Home", "|", "Login", "Share", "Click here", "Next", "Copyright", "All rights reserved"]
    parts: list[str] = []
    while sum(len(p.split()) for p in parts) < n:
        parts.append(span)
        parts.append(" ".join(rng.choice(junk, size=int(rng.integers(1, 4)))))
    return " ".join(parts)


def degrade(texts: Sequence[str], *, seed: int) -> list[str]:
    """One degraded copy per text, cycling shuffle / bigram babble / boilerplate (seeded)."""
    rng = np.random.default_rng(seed)
    babbler = BigramBabbler(texts)
    out = []
    for i, t in enumerate(texts):
        kind = i % 3
        if kind == 0:
            out.append(shuffle_words(t, rng))
        elif kind == 1:
            out.append(babbler.babble(max(len(t.split()), 10), rng))
        else:
            out.append(boilerplate(t, rng))
    return out


def train_quality(
    reference_texts: Sequence[str],
    pool_texts: Sequence[str],
    *,
    seed: int,
    degraded: bool = True,
    copies: int = 3,
    featurizer: HashedNgramFeaturizer | None = None,
    **fit_kwargs: Any,
) -> QualityClassifier:
    """Reference (label 1) vs. pool plus degraded references (label 0), METHOD.md.

    ``copies`` degraded copies of every reference are added (rotated, so each reference is
    shuffled, babbled and repeated once with the default 3).
    """
    negatives = list(pool_texts)
    refs = list(reference_texts)
    for c in range(copies if degraded and refs else 0):
        negatives += degrade(refs[c:] + refs[:c], seed=seed + c)
    texts = list(reference_texts) + negatives
    labels = np.r_[np.ones(len(reference_texts)), np.zeros(len(negatives))]
    return QualityClassifier(featurizer, **fit_kwargs).fit(texts, labels)


# --- evaluation and binning ------------------------------------------------------------


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the mean of their ranks."""
    x = np.asarray(x, dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inv.reshape(-1)]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; a tie between classes counts 1/2)."""
    y = np.asarray(labels).astype(bool).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs both classes")
    ranks = average_ranks(np.asarray(scores).reshape(-1))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def quantile_bins(scores: np.ndarray, domains: Sequence[str], n_bins: int = 5) -> np.ndarray:
    """Bin ``0..n_bins-1`` by score quantile *within* each domain (METHOD.md).

    Each domain's documents are ranked by score (ties in input order) and cut into ``n_bins``
    groups whose sizes differ by at most one, so a bin means "top fifth of its domain".
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    d = np.asarray(list(domains), dtype=object)
    if len(d) != len(s) or n_bins < 1:
        raise ValueError("quantile_bins needs one domain per score and n_bins >= 1")
    bins = np.zeros(len(s), dtype=np.int64)
    for dom in dict.fromkeys(d.tolist()):
        idx = np.flatnonzero(d == dom)
        order = idx[np.argsort(s[idx], kind="stable")]
        bins[order] = np.arange(len(idx)) * n_bins // len(idx)
    return bins
