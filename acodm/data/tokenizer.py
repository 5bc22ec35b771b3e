"""Tokenizers for the token store: a byte-level BPE trained on the corpus, or the user's own.

Every tokenizer acodm uses travels as a :class:`TokenizerSpec`: the exact ``tokenizer.json``
text, its EOS id and its hash. The store copies that text next to the tokens, so ids can
always be decoded with the tokenizer that produced them.

The trained tokenizer is a GPT-2-style byte-level BPE: no normalizer, a ByteLevel
pre-tokenizer without an added prefix space and a ByteLevel decoder, so
``decode(encode(text)) == text`` for every string, and all 256 bytes are in the vocabulary
(nothing is ever out of vocabulary). ``<|endoftext|>`` (id 0) separates documents.

Training is deterministic (same corpus, vocab size and trainer version give byte-identical
JSON) and cached in ``acodm.paths.cache_dir("tokenizers")``.

Balanced sampling: BPE training time grows with the text it reads, and one huge domain
(Pile-CC) would otherwise dominate the merges. Training therefore reads at most
``max_train_chars`` characters in total, shared by water-filling: every domain smaller than
its fair share is read whole, the larger ones get equal shares of the rest. Documents of a
sampled domain are kept by a fixed hash of their ``doc_id`` (no random state). Corpora under
the budget (the default corpus, ~110 MB) are read whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acodm.data.corpus import Corpus
from acodm.data.store import vocab_size_of
from acodm.errors import AcodmError
from acodm.io import atomic_write_text, sha256_bytes
from acodm.paths import cache_dir

EOS_TOKEN = "<|endoftext|>"
# Bump when a change to train_bpe would change the trained vocabulary (it keys the cache).
TRAINER_VERSION = 1
MIN_VOCAB_SIZE = 257  # 256 byte tokens + EOS
MAX_VOCAB_SIZE = 1 << 20
DEFAULT_MAX_TRAIN_CHARS = 1 << 28  # ~268M characters: about a minute of training on 2 cores
# EOS candidates tried, in order, when a tokenizer folder does not name its EOS token.
_EOS_FALLBACKS = (EOS_TOKEN, "</s>", "<|end_of_text|>", "<eos>")
_BATCH_DOCS = 256


class TokenizerError(AcodmError):
    """A tokenizer is missing, unreadable, or has no usable EOS token."""


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer as the store needs it: the exact JSON text, its EOS id and its hash.

    ``vocab_size`` is the largest id plus one (model vocabulary and added tokens), the same
    number the store records; ``sha256`` is the hash of ``json`` encoded as UTF-8, the same
    hash the store checks its ``tokenizer.json`` against.
    """

    json: str
    eos_id: int
    vocab_size: int
    sha256: str

    @classmethod
    def from_json(cls, text: str, eos_token: str, what: str = "tokenizer") -> TokenizerSpec:
        """Build a spec from ``tokenizer.json`` text, resolving ``eos_token`` to its id."""
        tok = _parse(text, what)
        eos_id = tok.token_to_id(eos_token)
        if eos_id is None:
            raise TokenizerError(
                f"EOS token {eos_token!r} is not in the vocabulary of {what}; pass the "
                "tokenizer's end-of-text token with --eos-token"
            )
        return cls(text, int(eos_id), vocab_size_of(json.loads(text)), sha256_bytes(text.encode()))

    def tokenizer(self) -> Any:
        """A fresh ``tokenizers.Tokenizer`` (not shared: each caller may change its settings)."""
        return _parse(self.json, "tokenizer")


def _parse(text: str, what: str) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
        raise TokenizerError(
            f"{what} is not a tokenizer.json the `tokenizers` library can read ({e})"
        ) from e


# -- training -------------------------------------------------------------------------------


def train_bpe(
    corpus: Corpus,
    vocab_size: int = 32768,
    *,
    cache: bool = True,
    progress: bool = True,
    max_train_chars: int = DEFAULT_MAX_TRAIN_CHARS,
) -> TokenizerSpec:
    """Train (or fetch from the cache) a byte-level BPE on every domain of ``corpus``.

    ``vocab_size`` counts the 256 byte tokens and EOS; a small corpus may stop short of it
    (merges need a pair seen at least twice), and the spec reports the real size.
    ``cache=False`` neither reads nor writes the cache.
    """
    check_vocab_size(vocab_size)
    if max_train_chars <= 0:
        raise TokenizerError(f"max_train_chars must be positive, got {max_train_chars}")
    path = _cache_path(corpus, vocab_size, max_train_chars) if cache else None
    if path is not None and path.is_file():
        text = path.read_text(encoding="utf-8")
        try:
            return TokenizerSpec.from_json(text, EOS_TOKEN, f"cached tokenizer {path}")
        except TokenizerError:
            pass  # a damaged cache entry is rebuilt below and overwritten
    text = _train(corpus, vocab_size, max_train_chars, progress)
    if path is not None:
        atomic_write_text(path, text)
    return TokenizerSpec.from_json(text, EOS_TOKEN, "the trained tokenizer")


def check_vocab_size(vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab_size must be an integer in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (256 byte "
            f"tokens + EOS at least), got {vocab_size!r}"
        )


def _cache_path(corpus: Corpus, vocab_size: int, max_train_chars: int) -> Path:
    import tokenizers

    key = json.dumps(
        {
            "corpus": corpus.hash,
            "vocab_size": vocab_size,
            "trainer": TRAINER_VERSION,
            "tokenizers": tokenizers.__version__,
            "max_train_chars": max_train_chars,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir("tokenizers") / f"bpe-{vocab_size}-{digest}.json"


def _train(corpus: Corpus, vocab_size: int, max_train_chars: int, progress: bool) -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a merge seen once only memorises one string
        show_progress=progress,
        special_tokens=[AddedToken(EOS_TOKEN, special=True)],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    rates = sampling_rates({d: corpus.num_characters(d) for d in corpus.domains}, max_train_chars)
    tok.train_from_iterator(_training_batches(corpus, rates), trainer)
    text: str = tok.to_str()
    return text


def sampling_rates(chars: dict[str, int], budget: int) -> dict[str, float]:
    """Fraction of each domain's text to read so the total fits ``budget`` (water-filling).

    Domains below the common cap are read whole; the cap is chosen so the total is
    ``budget``. With enough budget every rate is 1.
    """
    rates = dict.fromkeys(chars, 1.0)
    remaining = budget
    by_size = sorted(chars, key=lambda d: (chars[d], d))
    for i, d in enumerate(by_size):
        share = remaining / (len(by_size) - i)
        if chars[d] <= share:
            remaining -= chars[d]
            continue
        for big in by_size[i:]:
            rates[big] = share / chars[big]
        break
    return rates


def _keep(doc_id: str, rate: float) -> bool:
    """Deterministic Bernoulli(rate) draw from a hash of the document id."""
    if rate >= 1.0:
        return True
    h = hashlib.blake2b(doc_id.encode(), digest_size=8, person=b"acodm-bpe").digest()
    return int.from_bytes(h, "little") < rate * 2.0**64


def _training_batches(corpus: Corpus, rates: dict[str, float]) -> Iterator[list[str]]:
    batch: list[str] = []
    for domain in corpus.domains:
        for doc in corpus.iter_documents(domain):
            if _keep(doc.doc_id, rates[domain]):
                batch.append(doc.text)
                if len(batch) == _BATCH_DOCS:
                    yield batch
                    batch = []
    if batch:
        yield batch


# -- loading --------------------------------------------------------------------------------


def load_tokenizer(path: str | Path, eos_token: str | None = None) -> TokenizerSpec:
    """Load a ``tokenizer.json`` file or a Hugging Face tokenizer folder.

    EOS is, in order: ``eos_token`` if given; the ``eos_token`` of the folder's
    ``tokenizer_config.json`` or ``special_tokens_map.json``; the first of
    ``<|endoftext|>``, ``</s>``, ``<|end_of_text|>``, ``<eos>`` in the vocabulary.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise TokenizerError(
            f"tokenizer {path} does not exist; pass a tokenizer.json file or a Hugging Face "
            "tokenizer folder"
        )
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenizerError(_no_tokenizer_json(path))
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{file} is not a UTF-8 tokenizer.json ({e})") from e
    if eos_token is None:
        eos_token = _eos_from_config(path) if path.is_dir() else None
    if eos_token is None:
        eos_token = _eos_from_vocab(text, str(file))
    return TokenizerSpec.from_json(text, eos_token, str(file))


def _no_tokenizer_json(folder: Path) -> str:
    found = sorted(p.name for p in folder.iterdir())[:12]
    return (
        f"{folder} has no tokenizer.json (it has {found}). acodm reads fast tokenizers only; "
        "convert a slow or sentencepiece-only tokenizer (tokenizer.model, vocab.txt, "
        "vocab.json + merges.txt) once with transformers: "
        f"`AutoTokenizer.from_pretrained({str(folder)!r}, use_fast=True)"
        f".save_pretrained({str(folder)!r})`"
    )


def _eos_from_config(folder: Path) -> str | None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = folder / name
        if not f.is_file():
            continue
        try:
            value = json.loads(f.read_text(encoding="utf-8")).get("eos_token")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise TokenizerError(f"{f} is not a valid JSON object ({e})") from e
        if isinstance(value, dict):  # older files store an AddedToken: {"content": ...}
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None


def _eos_from_vocab(text: str, what: str) -> str:
    tok = _parse(text, what)
    for candidate in _EOS_FALLBACKS:
        if tok.token_to_id(candidate) is not None:
            return candidate
    raise TokenizerError(
        f"cannot tell the end-of-text token of {what}: no eos_token in a tokenizer_config.json "
        f"or special_tokens_map.json beside it and none of {list(_EOS_FALLBACKS)} in its "
        "vocabulary; pass it with --eos-token"
    )
