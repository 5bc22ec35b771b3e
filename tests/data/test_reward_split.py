"""The reward split (``prepare --reward-fraction``): held-out documents disjoint from train and
val, a seeded rule independent of validation, old (schema-2) stores still open."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from acodm.cli import describe_store, main
from acodm.data.corpus import Corpus
from acodm.data.prepare import _SplitRule, prepare_store
from acodm.data.store import MANIFEST, STORE_SCHEMA_VERSION, TokenStore, open_store
from acodm.errors import StoreError
from tests.data.test_tokenizer import synthetic_documents, write_corpus

VOCAB = 600
KW: dict[str, object] = {"vocab_size": VOCAB, "min_val_tokens": 2048, "progress": False}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return write_corpus(tmp_path_factory.mktemp("rsplit") / "corpus")


@pytest.fixture(scope="module")
def store(corpus: Corpus) -> TokenStore:
    out = corpus.path.parent / "store"
    return open_store(
        prepare_store(
            corpus.path,
            out,
            reward_fraction=0.05,
            min_reward_tokens=2048,
            **KW,  # type: ignore[arg-type]
        )
    )


def test_train_val_reward_are_disjoint_and_complete(corpus: Corpus, store: TokenStore) -> None:
    assert store.schema_version == STORE_SCHEMA_VERSION == 3
    for d in store.domains:
        train, val, reward = (set(store.doc_ids(d, s)) for s in ("train", "val", "reward"))
        assert reward, f"{d} has no reward documents"
        assert not train & val and not train & reward and not val & reward
        assert train | val | reward == {doc.doc_id for doc in corpus.iter_documents(d)}
        total = sum(store.num_tokens(d, s) for s in ("train", "val", "reward"))
        got = store.num_tokens(d, "reward")
        assert got >= max(2048, 0.05 * total)
        assert 2 * store.num_tokens(d, "train") >= total  # training keeps at least half


def test_validation_is_unchanged_by_the_reward_split(
    corpus: Corpus, store: TokenStore, tmp_path: Path
) -> None:
    """The reward documents come only from what validation did not take."""
    plain = open_store(prepare_store(corpus.path, tmp_path / "plain", reward_fraction=0.0, **KW))  # type: ignore[arg-type]
    for d in store.domains:
        assert plain.doc_ids(d, "val") == store.doc_ids(d, "val")
        assert plain.num_documents(d, "reward") == 0 and plain.num_tokens(d, "reward") == 0
        assert set(plain.doc_ids(d, "train")) == set(store.doc_ids(d, "train")) | set(
            store.doc_ids(d, "reward")
        )
    assert plain.manifest["meta"]["reward_fraction"] == 0.0


def test_reward_split_is_deterministic_and_seeded(
    corpus: Corpus, store: TokenStore, tmp_path: Path
) -> None:
    kw = dict(KW, reward_fraction=0.05, min_reward_tokens=2048)
    again = open_store(prepare_store(corpus.path, tmp_path / "again", **kw))  # type: ignore[arg-type]
    other = open_store(prepare_store(corpus.path, tmp_path / "other", seed=3, **kw))  # type: ignore[arg-type]
    for d in store.domains:
        assert again.doc_ids(d, "reward") == store.doc_ids(d, "reward")
        assert again.doc_ids(d, "train") == store.doc_ids(d, "train")
    assert any(other.doc_ids(d, "reward") != store.doc_ids(d, "reward") for d in store.domains)


def test_reward_ranking_is_independent_of_validation_ranking() -> None:
    rule = _SplitRule(0.01, 0, seed=0)
    ids = [f"doc/{i}" for i in range(200)]
    by_val = sorted(ids, key=rule.key)
    by_reward = sorted(ids, key=rule.reward_key)
    assert by_val != by_reward
    assert len(set(by_val[:20]) & set(by_reward[:20])) < 10  # not the same head


def test_too_small_domain_names_the_domain_and_the_fix(
    corpus: Corpus, store: TokenStore, tmp_path: Path
) -> None:
    out = tmp_path / "s"
    with pytest.raises(StoreError, match=r"domain '\w+' is too small to hold out \d+ reward") as e:
        prepare_store(corpus.path, out, reward_fraction=0.01, min_reward_tokens=10**6, **KW)  # type: ignore[arg-type]
    msg = e.value.args[0]
    assert "--min-reward-tokens to" in msg and "--reward-fraction 0" in msg
    assert not out.exists()
    suggested = int(msg.split("--min-reward-tokens to ")[1].split()[0])
    domain = msg.split("'")[1]
    one = write_corpus(tmp_path / "c", [d for d in synthetic_documents() if d.domain == domain])
    s = open_store(
        prepare_store(
            one.path,
            out,
            reward_fraction=0.0001,
            min_reward_tokens=suggested,
            tokenizer=store.path / "tokenizer.json",
            **{k: v for k, v in KW.items() if k != "vocab_size"},  # type: ignore[arg-type]
        )
    )
    assert s.num_tokens(domain, "reward") >= suggested


@pytest.mark.parametrize(
    "bad", [{"reward_fraction": -0.1}, {"reward_fraction": 0.6}, {"min_reward_tokens": -1}]
)
def test_bad_reward_arguments_are_refused(
    corpus: Corpus, tmp_path: Path, bad: dict[str, float]
) -> None:
    with pytest.raises(StoreError, match=r"reward_fraction|min_reward_tokens"):
        prepare_store(corpus.path, tmp_path / "s", **dict(KW, **bad))  # type: ignore[arg-type]


def _as_schema_2(store: Path) -> None:
    """Rewrite a store as acodm's schema 2 wrote it: no reward split at all."""
    m = json.loads((store / MANIFEST).read_text())
    m["schema_version"] = 2
    for e in m["domains"]:
        del e["reward"]
    (store / MANIFEST).write_text(json.dumps(m))
    shutil.rmtree(store / "reward")


def test_a_schema_2_store_still_opens_with_an_empty_reward_split(
    store: TokenStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = Path(shutil.copytree(store.path, tmp_path / "old"))
    _as_schema_2(old)
    s = TokenStore(old)
    assert s.schema_version == 2
    for d in s.domains:
        assert s.num_tokens(d, "reward") == 0 and s.num_documents(d, "reward") == 0
        assert s.tokens(d, "reward").size == 0 and s.doc_ids(d, "reward") == []
        assert s.doc_offsets(d, "reward").tolist() == [0]
        assert s.doc_ids(d, "train") == store.doc_ids(d, "train")
    assert "schema 2: no reward split" in describe_store(s)
    assert main(["info", str(old)]) == 0
    assert "reward tokens" in capsys.readouterr().out


def test_cli_prepare_reward_options(
    corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    rc = main(
        [
            "prepare", str(corpus.path), "--out", str(out), "--vocab-size", str(VOCAB),
            "--min-val-tokens", "2048", "--reward-fraction", "0", "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    s = open_store(out)
    assert all(s.num_tokens(d, "reward") == 0 for d in s.domains)
    assert "reward docs" in capsys.readouterr().out
