"""Data-constrained stores: document pieces, training caps, val untouched by the cap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acodm.cli import main
from acodm.data.constrain import cap_train_mask, cut_text, parse_train_caps
from acodm.data.corpus import Corpus
from acodm.data.prepare import prepare_store
from acodm.data.store import TokenStore, open_store
from acodm.errors import StoreError
from tests.data.test_tokenizer import write_corpus

VOCAB = 600


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("constrain") / "corpus")


def _prepare(corpus: Corpus, out: Path, **kw: object) -> TokenStore:
    args: dict[str, object] = {"vocab_size": VOCAB, "min_val_tokens": 2048, "progress": False}
    args.update(kw)
    return open_store(prepare_store(corpus.path, out, **args))  # type: ignore[arg-type]


# -- pieces ---------------------------------------------------------------------------------


def test_cut_text_pieces_join_back_and_end_at_boundaries() -> None:
    lines = [f"line {i} " + "word " * (i % 7) for i in range(200)]
    text = "\n".join(lines)
    pieces = cut_text(text, 120)
    assert "".join(pieces) == text
    assert len(pieces) > 10
    for p in pieces[:-1]:
        assert 60 <= len(p) <= 120 and p.endswith("\n")
    assert len(pieces[-1]) <= 1.25 * 120
    # no newline in reach: whitespace; no whitespace: a hard cut at N
    words = cut_text("abcd " * 100, 50)
    assert "".join(words) == "abcd " * 100 and all(p.endswith(" ") for p in words[:-1])
    assert cut_text("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]
    assert cut_text("x" * 220, 100) == ["x" * 100, "x" * 120]  # a tail <= 1.25 N stays whole
    assert cut_text("short", 100) == ["short"]
    assert cut_text("  \n  ", 100) == []  # whitespace only: no piece


def test_pieces_make_the_store_and_split_is_disjoint_by_pieces(
    corpus: Corpus, tmp_path: Path
) -> None:
    s = _prepare(corpus, tmp_path / "pieces", doc_chars=300)
    texts = {d.doc_id: d.text for dom in corpus.domains for d in corpus.iter_documents(dom)}
    tok = s.tokenizer()
    assert s.manifest["meta"]["doc_chars"] == 300
    for domain in s.domains:
        train, val = s.doc_ids(domain, "train"), s.doc_ids(domain, "val")
        reward = s.doc_ids(domain, "reward")
        assert not set(train) & set(val) and not (set(train) | set(val)) & set(reward)
        assert all("#" in i for i in train + val + reward)
        # every piece of every document is there, in order, and decodes to its text
        by_doc: dict[str, dict[int, str]] = {}
        for split, ids in (("train", train), ("val", val), ("reward", reward)):
            for j, pid in enumerate(ids):
                doc, _, idx = pid.rpartition("#")
                by_doc.setdefault(doc, {})[int(idx)] = tok.decode(
                    s.document(domain, j, split).tolist(), skip_special_tokens=False
                )
        for doc, pieces in by_doc.items():
            assert sorted(pieces) == list(range(len(pieces)))
            assert "".join(pieces[i] for i in range(len(pieces))) == texts[doc]
        assert s.num_documents(domain, "train") + s.num_documents(domain, "val") > 120


# -- caps -----------------------------------------------------------------------------------


def test_parse_and_resolve_caps() -> None:
    domains = ["a", "b", "c", "d"]
    natural = {"a": 50, "b": 10, "c": 400, "d": 30}
    assert parse_train_caps("5000").resolve(domains, natural) == dict.fromkeys(domains, 5000)
    assert parse_train_caps("a=100, c=7").resolve(domains, natural) == {"a": 100, "c": 7}
    geo = parse_train_caps("geometric:1000:8000").resolve(domains, natural)
    # smallest natural domain gets MIN, the largest MAX, ratio 2 between neighbours
    assert geo == {"b": 1000, "d": 2000, "a": 4000, "c": 8000}
    with pytest.raises(StoreError, match=r"names domains \['zz'\]"):
        parse_train_caps("zz=5").resolve(domains, natural)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0", "positive integer"),
        ("lots", "positive integer"),
        ("a=1,b", "is not name=N"),
        ("a=1,a=2", "twice"),
        ("geometric:5", "geometric:MIN:MAX"),
        ("geometric:9:5", "larger than MAX"),
    ],
)
def test_bad_cap_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        parse_train_caps(spec)


def test_cap_train_mask_takes_whole_documents_in_rank_order() -> None:
    lengths = np.array([9, 19, 29, 4, 9])  # sizes with EOS: 10, 20, 30, 5, 10
    keys = np.array([3, 0, 1, 4, 2], dtype=np.uint64)  # rank order: 1, 2, 4, 0, 3
    train = np.array([True, True, True, True, False])
    mask, kept = cap_train_mask(train, keys, lengths, 36)
    # 1 (20) fits, 2 (30) does not, 4 is val, 0 (10) fits, 3 (5) fits: 35
    assert mask.tolist() == [True, True, False, True, False] and kept == 35
    mask, kept = cap_train_mask(train, keys, lengths, 3)  # nothing fits: the smallest
    assert mask.tolist() == [False, False, False, True, False] and kept == 5


def test_capped_store_keeps_val_and_honours_caps(corpus: Corpus, tmp_path: Path) -> None:
    full = _prepare(corpus, tmp_path / "full", doc_chars=300)
    capped = _prepare(
        corpus, tmp_path / "capped", doc_chars=300, max_train_tokens="geometric:3000:12000"
    )
    meta = capped.manifest["meta"]
    assert meta["max_train_tokens"] == "geometric:3000:12000"
    sizes = sorted(meta["train_caps"][d]["cap"] for d in capped.domains)
    assert sizes == [3000, 6000, 12000]
    for d in capped.domains:
        # the val split is exactly the uncapped one
        assert capped.doc_ids(d, "val") == full.doc_ids(d, "val")
        np.testing.assert_array_equal(capped.tokens(d, "val"), full.tokens(d, "val"))
        entry = meta["train_caps"][d]
        assert capped.num_tokens(d, "train") == entry["tokens"] <= entry["cap"]
        assert entry["uncapped_tokens"] == full.num_tokens(d, "train")
        assert set(capped.doc_ids(d, "train")) <= set(full.doc_ids(d, "train"))
        assert entry["tokens"] > 0.9 * min(entry["cap"], entry["uncapped_tokens"])
    # the largest natural domain got the largest cap
    chars = {d: corpus.num_characters(d) for d in corpus.domains}
    biggest = max(chars, key=lambda d: chars[d])
    assert meta["train_caps"][biggest]["cap"] == 12000


def test_prepare_cli_flags(corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    args = ["prepare", str(corpus.path), "--out", str(out), "--vocab-size", str(VOCAB)]
    args += ["--min-val-tokens", "2048", "--doc-chars", "400", "--max-train-tokens", "5000"]
    assert main([*args, "--quiet"]) == 0
    s = open_store(out)
    assert (
        s.manifest["meta"]["doc_chars"] == 400 and s.manifest["meta"]["max_train_tokens"] == "5000"
    )
    assert all(s.num_tokens(d, "train") <= 5000 for d in s.domains)
    with pytest.raises(StoreError, match="doc-chars"):
        prepare_store(corpus.path, tmp_path / "bad", doc_chars=0, progress=False)
