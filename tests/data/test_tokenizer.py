"""Tokenizer training, caching and loading: exact round trips, determinism, clear errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from acodm.data import tokenizer as tokmod
from acodm.data.corpus import Corpus, CorpusWriter, Document
from acodm.data.tokenizer import (
    EOS_TOKEN,
    TokenizerError,
    TokenizerSpec,
    load_tokenizer,
    sampling_rates,
    train_bpe,
)

# Texts a byte-level tokenizer must give back exactly: special-token text, odd white space,
# CRLF, combining characters, emoji, NUL, lone CR, leading spaces.
TRICKY = [
    "plain words and <|endoftext|> in the middle",
    "  leading spaces\r\nCRLF\tand\ttabs\n\n\n",
    "naïve café – “quotes” 🎉👍🏽 e\u0301 \u00a0nbsp \x00 nul \r lone cr",
    "def f(x):\n    return x ** 2  # 注释\n",
]


def synthetic_documents(seed: int = 0, docs_per_domain: int = 120) -> list[Document]:
    """Three domains with distinct statistics: English-ish prose, Python-ish code, arithmetic."""
    rng = random.Random(seed)
    words = [
        "the",
        "of",
        "and",
        "a",
        "to",
        "in",
        "is",
        "was",
        "he",
        "for",
        "it",
        "with",
        "as",
        "his",
        "on",
        "be",
        "at",
        "by",
        "had",
        "river",
        "mountain",
        "quiet",
        "letter",
        "window",
        "garden",
        "morning",
        "stranger",
        "silver",
    ]
    idents = ["x", "y", "total", "count", "items", "value", "result", "index", "data", "node"]
    out: list[Document] = []
    for i in range(docs_per_domain):
        n = rng.randint(40, 500)
        prose = " ".join(rng.choice(words) for _ in range(n)).capitalize() + ".\n"
        out.append(Document(prose, "prose", "synthetic", f"prose/{i}"))
        lines = [
            f"{'    ' * rng.randint(0, 2)}{rng.choice(idents)} = {rng.choice(idents)} + {j}"
            for j in range(rng.randint(5, 60))
        ]
        out.append(
            Document(f"def f{i}():\n" + "\n".join(lines) + "\n", "code", "synthetic", f"code/{i}")
        )
        sums = [
            f"{a} + {b} = {a + b}"
            for a, b in (
                (rng.randint(0, 999), rng.randint(0, 999)) for _ in range(rng.randint(5, 80))
            )
        ]
        out.append(Document("\n".join(sums), "math", "synthetic", f"math/{i}"))
    out += [Document(t, "prose", "synthetic", f"prose/tricky{k}") for k, t in enumerate(TRICKY)]
    return out


def write_corpus(path: Path, docs: list[Document] | None = None) -> Corpus:
    with CorpusWriter(path) as w:
        for d in synthetic_documents() if docs is None else docs:
            w.add(d)
    return Corpus(path)


@pytest.fixture()
def corpus(tmp_path: Path) -> Corpus:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("ACODM_CACHE", str(cache))
    return cache


def test_trained_bpe_round_trips_every_text_exactly(corpus: Corpus) -> None:
    spec = train_bpe(corpus, 600, cache=False, progress=False)
    tok = spec.tokenizer()
    for domain in corpus.domains:
        for doc in corpus.iter_documents(domain):
            ids = tok.encode(doc.text, add_special_tokens=False).ids
            assert tok.decode(ids, skip_special_tokens=False) == doc.text
    assert tok.token_to_id(EOS_TOKEN) == spec.eos_id
    # All 256 byte symbols are in the vocabulary: no text is ever out of vocabulary.
    from tokenizers import pre_tokenizers

    assert all(tok.token_to_id(c) is not None for c in pre_tokenizers.ByteLevel.alphabet())
    assert 300 < spec.vocab_size <= 600
    assert spec.vocab_size == tok.get_vocab_size(with_added_tokens=True)
    # The BPE learnt domain words as single tokens.
    assert len(tok.encode(" mountain").ids) == 1


def test_training_is_deterministic(corpus: Corpus) -> None:
    a = train_bpe(corpus, 600, cache=False, progress=False)
    b = train_bpe(corpus, 600, cache=False, progress=False)
    assert a == b
    assert a.sha256 == tokmod.sha256_bytes(a.json.encode("utf-8"))


def test_cache_hit_returns_identical_json_without_training(
    corpus: Corpus, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = train_bpe(corpus, 600, progress=False)
    cached = list((private_cache / "tokenizers").glob("bpe-600-*.json"))
    assert len(cached) == 1 and cached[0].read_text(encoding="utf-8") == first.json

    def no_training(*args: object, **kwargs: object) -> str:
        raise AssertionError("a cache hit must not retrain")

    monkeypatch.setattr(tokmod, "_train", no_training)
    assert train_bpe(corpus, 600, progress=False) == first
    with pytest.raises(AssertionError):  # another vocabulary size is another key
        train_bpe(corpus, 700, progress=False)


def test_damaged_cache_entry_is_rebuilt(corpus: Corpus, private_cache: Path) -> None:
    first = train_bpe(corpus, 600, progress=False)
    (entry,) = (private_cache / "tokenizers").glob("*.json")
    entry.write_text('{"truncated": ', encoding="utf-8")
    assert train_bpe(corpus, 600, progress=False) == first
    assert entry.read_text(encoding="utf-8") == first.json


@pytest.mark.parametrize("bad", [0, 256, 10**9, 3.5])
def test_vocab_size_out_of_range_is_rejected(corpus: Corpus, bad: int) -> None:
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_bpe(corpus, bad, cache=False, progress=False)


def test_sampling_rates_water_fill_the_budget() -> None:
    chars = {"tiny": 10, "mid": 100, "huge": 1000}
    assert sampling_rates(chars, 10_000) == {"tiny": 1.0, "mid": 1.0, "huge": 1.0}
    rates = sampling_rates(chars, 310)
    assert rates["tiny"] == 1.0 and rates["mid"] == 1.0
    assert rates["huge"] == pytest.approx(0.2)
    rates = sampling_rates(chars, 90)  # shares of 30: tiny whole, the other two 40 each
    assert rates == pytest.approx({"tiny": 1.0, "mid": 0.4, "huge": 0.04})
    assert sum(rates[d] * chars[d] for d in chars) == pytest.approx(90)


def test_budgeted_training_reads_a_balanced_sample(corpus: Corpus) -> None:
    kept = {d: 0 for d in corpus.domains}
    rates = sampling_rates({d: corpus.num_characters(d) for d in corpus.domains}, 60_000)
    for batch in tokmod._training_batches(corpus, rates):
        for text in batch:
            kept[next(d for d in corpus.domains if _in_domain(corpus, d, text))] += len(text)
    for d in corpus.domains:
        assert 0.5 * 20_000 < kept[d] < 1.5 * 20_000, kept
    spec = train_bpe(corpus, 600, cache=False, progress=False, max_train_chars=60_000)
    assert spec != train_bpe(corpus, 600, cache=False, progress=False)


def _in_domain(corpus: Corpus, domain: str, text: str) -> bool:
    return any(doc.text == text for doc in corpus.iter_documents(domain))


# -- loading --------------------------------------------------------------------------------


def _tokenizer_with(special: list[str]) -> str:
    """A small trained byte-level BPE whose special tokens are ``special``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=special,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([d.text for d in synthetic_documents(docs_per_domain=20)], trainer)
    return str(tok.to_str())


def test_load_tokenizer_json_file_finds_the_eos(tmp_path: Path, corpus: Corpus) -> None:
    spec = train_bpe(corpus, 600, cache=False, progress=False)
    f = tmp_path / "my.json"
    f.write_text(spec.json, encoding="utf-8")
    assert load_tokenizer(f) == spec
    f.write_text(_tokenizer_with(["<pad>", "</s>"]), encoding="utf-8")
    loaded = load_tokenizer(f)
    assert loaded.eos_id == 1  # "</s>" is the fallback when <|endoftext|> is absent


def test_load_hf_folder_takes_eos_from_tokenizer_config(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(_tokenizer_with(["<s>", "</s>", "<|im_end|>"]))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    spec = load_tokenizer(folder)
    assert spec.tokenizer().id_to_token(spec.eos_id) == "<|im_end|>"
    # Older folders: special_tokens_map.json with an AddedToken dict.
    (folder / "tokenizer_config.json").unlink()
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": {"content": "<s>", "lstrip": False}})
    )
    assert load_tokenizer(folder).eos_id == 0
    assert load_tokenizer(folder, eos_token="</s>").eos_id == 1


def test_load_folder_saved_by_transformers(tmp_path: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_tokenizer_with(["<unk>", "<s>", "</s>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>").save_pretrained(tmp_path / "t")
    spec = load_tokenizer(tmp_path / "t")
    assert spec.eos_id == 2
    assert spec.json == (tmp_path / "t" / "tokenizer.json").read_text(encoding="utf-8")


def test_load_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "tokenizer.model").write_bytes(b"\x00sentencepiece")
    with pytest.raises(TokenizerError, match=r"no tokenizer.json.*save_pretrained"):
        load_tokenizer(slow)
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": ')
    with pytest.raises(TokenizerError, match=r"not a tokenizer\.json"):
        load_tokenizer(bad)
    no_eos = tmp_path / "noeos.json"
    no_eos.write_text(_tokenizer_with(["<pad>"]))
    with pytest.raises(TokenizerError, match="--eos-token"):
        load_tokenizer(no_eos)
    with pytest.raises(TokenizerError, match=r"'<eot>' is not in the vocabulary"):
        load_tokenizer(no_eos, eos_token="<eot>")


def test_spec_tokenizer_is_a_fresh_object_each_time(corpus: Corpus) -> None:
    spec: TokenizerSpec = train_bpe(corpus, 600, cache=False, progress=False)
    a, b = spec.tokenizer(), spec.tokenizer()
    a.encode_special_tokens = True
    assert not b.encode_special_tokens
