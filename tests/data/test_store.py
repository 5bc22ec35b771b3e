"""Opening a token store checks its manifest: names, counts and ids against the vocabulary.

Each case edits a good store's manifest (or files) the way a crafted or damaged artifact
would, and asserts a clear :class:`StoreError` from the Python API and exit code 2 from
``acodm info`` (and ``acodm pretrain``, which opens the store before any work).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from acodm.cli import main
from acodm.data.sampler import DomainSampler
from acodm.data.store import MANIFEST, STORE_SCHEMA_VERSION, StoreWriter, TokenStore
from acodm.errors import StoreError
from tests.fixtures import word_level_tokenizer_json

VOCAB = 64


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-domain store, vocabulary 64, whose largest token id is 63."""
    out = tmp_path_factory.mktemp("store") / "store"
    rng = np.random.default_rng(0)
    with StoreWriter(
        out, tokenizer_json=word_level_tokenizer_json(VOCAB), eos_id=0, corpus_hash="c"
    ) as w:
        for name in ("books", "Wikipedia (en)"):
            docs = [(f"{name}/{i}", rng.integers(1, VOCAB, 300)) for i in range(8)]
            docs[0][1][0] = VOCAB - 1
            w.write_split(name, "train", docs)
            w.write_split(name, "val", [(f"{name}/v", rng.integers(1, VOCAB, 300))])
    return out


@pytest.fixture()
def store(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "store"))


def _edit(store: Path, change: Callable[[dict[str, Any]], None]) -> None:
    m = json.loads((store / MANIFEST).read_text())
    change(m)
    (store / MANIFEST).write_text(json.dumps(m))


def _refused(store: Path, match: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The API and `acodm info` both refuse the store with the same one-line message."""
    with pytest.raises(StoreError, match=match):
        TokenStore(store)
    capsys.readouterr()
    assert main(["info", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acodm: error:") and err.count("\n") == 1
    assert "Traceback" not in err


def test_a_good_store_opens_and_records_each_splits_largest_id(good: Path) -> None:
    s = TokenStore(good)
    assert s.manifest["schema_version"] == STORE_SCHEMA_VERSION == 3
    for d in s.domains:
        for split in ("train", "val"):
            entry = next(e for e in s.manifest["domains"] if e["name"] == d)[split]
            assert entry["max_id"] == int(s.tokens(d, split).max())
    assert next(e for e in s.manifest["domains"] if e["name"] == "books")["train"]["max_id"] == 63


# -- member file names ------------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["/tmp/elsewhere", "../elsewhere", "a/b", "a\x00b", None, 7])
def test_a_stem_that_is_not_a_plain_name_is_refused(
    store: Path, stem: object, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(m: dict[str, Any]) -> None:
        m["domains"][0]["stem"] = stem

    _edit(store, change)
    _refused(
        store,
        r"file of domain 'books' \(train\) .* is .*not a plain file name.*acodm prepare",
        capsys,
    )


def test_a_symlinked_array_leading_outside_the_store_is_refused(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (binfile,) = (store / "train").glob("000-*.bin")
    outside = tmp_path / "other.bin"
    shutil.move(binfile, outside)  # same size: the size check alone would pass
    os.symlink(outside, binfile)
    _refused(store, r"leads outside .* symbolic link", capsys)


def test_a_symlinked_split_folder_leading_outside_the_store_is_refused(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.move(store / "val", tmp_path / "val")
    os.symlink(tmp_path / "val", store / "val")
    _refused(store, "leads outside", capsys)


def test_pretrain_refuses_a_crafted_stem_before_any_work(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(m: dict[str, Any]) -> None:
        m["domains"][1]["stem"] = "../../x"

    _edit(store, change)
    run = tmp_path / "run"
    argv = ["pretrain", "--preset", "debug_cpu", "--store", str(store), "--out", str(run)]
    assert main([*argv, "--steps", "1", "--quiet"]) == 2
    assert "not a plain file name" in capsys.readouterr().err


# -- domain entries ---------------------------------------------------------------------------


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A manifest edit: ``"0.train.tokens"`` sets m["domains"][0]["train"]["tokens"]."""

    def change(m: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        cur: Any = m["domains"]
        for k in keys[:-1]:
            cur = cur[k]
        if value is _DELETE:
            del cur[keys[-1]]
        else:
            cur[keys[-1]] = value

    return change


_DELETE = object()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set("0.name", 3), r"domain name 3 is not a non-empty string"),
        (_set("0.name", "a/b"), r"'a/b' contains '/'.*--domain NAME"),
        (_set("0.name", " books"), "leading or trailing white space"),
        (_set("0.name", "Wikipedia (en)"), "appears twice"),
        (_set("1.stem", "000-books"), "appears twice"),
        (_set("0.train", _DELETE), "split 'train' of domain 'books' is missing"),
        (_set("0.train.tokens", "2409"), "not counts >= 0"),
        (_set("0.val.documents", -1), "not counts >= 0"),
        (_set("0.train.documents", True), "not counts >= 0"),
        (_set("0.train.documents", 10**6), "at least one token"),
    ],
)
def test_malformed_domain_entries_are_clear_errors(
    store: Path,
    edit: Callable[[dict[str, Any]], None],
    match: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _edit(store, edit)
    _refused(store, match, capsys)


def test_malformed_domain_list_is_a_clear_error(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(m: dict[str, Any]) -> None:
        m["domains"] = {"books": {}}

    _edit(store, change)
    _refused(store, "domains is not a non-empty list", capsys)


# -- token ids against the vocabulary ---------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("vocab_size", 32, r"token ids up to 63, outside the vocabulary \[0, 32\)"),
        ("vocab_size", 100, r"vocab_size is 100, but tokenizer.json has 64 tokens"),
        ("vocab_size", 0, "not a positive integer"),
        ("eos_id", 64, r"eos_id 64 is outside the vocabulary \[0, 64\)"),
        ("eos_id", -1, "eos_id -1 is outside"),
        ("dtype", "float64", "stored as uint16"),
    ],
)
def test_ids_are_checked_against_the_vocabulary_on_open(
    store: Path, key: str, value: object, match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(m: dict[str, Any]) -> None:
        m[key] = value

    _edit(store, change)
    _refused(store, match, capsys)


def test_pretrain_refuses_a_store_whose_ids_exceed_its_vocabulary(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It used to start and die with an IndexError in the embedding."""

    def change(m: dict[str, Any]) -> None:
        m["vocab_size"] = 32

    _edit(store, change)
    argv = ["pretrain", "--preset", "debug_cpu", "--store", str(store), "--out", str(tmp_path)]
    assert main([*argv, "--steps", "1", "--quiet"]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err


def test_a_store_of_the_previous_schema_asks_to_prepare_again(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(m: dict[str, Any]) -> None:
        m["schema_version"] = 1
        for e in m["domains"]:
            for split in ("train", "val"):
                del e[split]["max_id"]

    _edit(store, change)
    _refused(
        store,
        r"schema version 1, but this acodm reads version 3 \(and 2\): re-run `acodm prepare`",
        capsys,
    )


def test_the_sampler_refuses_ids_the_manifest_does_not_admit(store: Path) -> None:
    """Arrays edited behind the manifest's back: a StoreError, not an IndexError in training."""
    (binfile,) = (store / "train").glob("001-*.bin")
    arr = np.fromfile(binfile, dtype=np.uint16)
    arr[5] = 60000
    arr.tofile(binfile)
    s = TokenStore(store)
    sampler = DomainSampler(s, seq_len=16, batch_size=64, seed=0, weights=[0.0, 1.0])
    with pytest.raises(StoreError, match=r"'Wikipedia \(en\)' \(train\) .* token id 60000"):
        for _ in range(200):
            sampler.next_batch()
