"""Opening and verifying a corpus: member names, counts, hashes, and the domain-name rule."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acodm.cli import main
from acodm.data.corpus import MANIFEST, Corpus, CorpusWriter, Document, validate_domain_name
from acodm.data.prepare import prepare_store
from acodm.errors import CorpusError

PILE_DOMAINS = [
    "Pile-CC",
    "PubMed Central",
    "Books3",
    "OpenWebText2",
    "ArXiv",
    "Github",
    "FreeLaw",
    "StackExchange",
    "USPTO Backgrounds",
    "PubMed Abstracts",
    "Gutenberg (PG-19)",
    "OpenSubtitles",
    "Wikipedia (en)",
    "DM Mathematics",
    "Ubuntu IRC",
    "BookCorpus2",
    "EuroParl",
    "HackerNews",
    "YoutubeSubtitles",
    "PhilPapers",
    "NIH ExPorter",
    "Enron Emails",
]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "corpus"
    with CorpusWriter(out) as w:
        for i in range(30):
            for d in ("prose", "Wikipedia (en)"):
                w.add(Document(f"{d} document {i}: " + "word " * (i + 5), d, "test", f"{d}-{i}"))
    return out


@pytest.fixture()
def corpus(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "corpus"))


def _edit(corpus: Path, change: Callable[[dict[str, Any]], None]) -> None:
    m = json.loads((corpus / MANIFEST).read_text())
    change(m)
    (corpus / MANIFEST).write_text(json.dumps(m))


def _refused(path: Path, match: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Corpus(), `acodm info` and `acodm prepare` all refuse it; prepare leaves no store."""
    with pytest.raises(CorpusError, match=match):
        Corpus(path)
    capsys.readouterr()
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acodm: error:") and err.count("\n") == 1
    _prepare_refused(path, capsys)


def _prepare_refused(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    out = path.parent / "store"
    capsys.readouterr()
    assert main(["prepare", str(path), "--out", str(out), "--vocab-size", "300", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acodm: error:") and err.count("\n") == 1
    assert not out.exists() and not list(path.parent.glob(".store.*"))
    return err


# -- the domain-name rule ---------------------------------------------------------------------


@pytest.mark.parametrize("name", [*PILE_DOMAINS, "a.b", "C++", "日本語", "x=1, y=2", "a\\b"])
def test_free_text_domain_names_stay_valid(name: str) -> None:
    assert validate_domain_name(name) == name


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("a/b", r"contains '/'.*train/loss/<domain> ambiguous.*--domain NAME"),
        ("/", "contains '/'"),
        (" books", "leading or trailing white space"),
        ("books\n", "leading or trailing white space"),
        ("bo\noks", "control character"),
        ("bo\toks", "control character"),
        ("bo\x00oks", "control character"),
        ("bo\u2028oks", "control character"),
        ("bo\ud800oks", "unpaired surrogate"),
        ("", "not a non-empty string"),
        (None, "not a non-empty string"),
    ],
)
def test_bad_domain_names_are_refused_with_the_fix(name: object, match: str) -> None:
    with pytest.raises(CorpusError, match=match):
        validate_domain_name(name)


def test_the_writer_refuses_a_slash_in_a_domain_name(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="contains '/'"), CorpusWriter(tmp_path / "c") as w:
        w.add(Document("text", "web/en", "s", "web/0"))
    assert not (tmp_path / "c").exists()


def test_all_pile_domains_survive_a_corpus_and_a_store(tmp_path: Path) -> None:
    with CorpusWriter(tmp_path / "c") as w:
        for d in PILE_DOMAINS:
            for i in range(20):
                w.add(Document(f"{d} text number {i} " * 20, d, "pile", f"{d}/{i}"))
    store = prepare_store(
        tmp_path / "c",
        tmp_path / "s",
        vocab_size=300,
        min_val_tokens=10,
        min_reward_tokens=10,
        progress=False,
    )
    from acodm.data.store import TokenStore

    assert TokenStore(store).domains == PILE_DOMAINS


def test_an_old_corpus_with_a_slash_in_a_domain_name_says_how_to_rename(
    corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(m: dict[str, Any]) -> None:
        m["domains"] = {k.replace("prose", "a/b"): v for k, v in m["domains"].items()}

    _edit(corpus, change)
    _refused(corpus, r"'a/b' contains '/'.*acodm corpus import .*--domain NAME", capsys)


# -- member file names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ABS", "../outside.jsonl", "sub/000-prose.jsonl", "", 5])
def test_a_domain_file_that_is_not_a_plain_name_is_refused(
    corpus: Path, name: object, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = corpus.parent / "outside.jsonl"
    shutil.copy(corpus / "000-prose.jsonl", outside)  # a real corpus file, but elsewhere
    (corpus / "sub").mkdir()
    shutil.copy(corpus / "000-prose.jsonl", corpus / "sub" / "000-prose.jsonl")

    def change(m: dict[str, Any]) -> None:
        m["domains"]["prose"]["file"] = str(outside) if name == "ABS" else name

    _edit(corpus, change)
    _refused(corpus, r"file of domain 'prose' .* not a plain file name.*acodm corpus", capsys)


def test_a_symlinked_domain_file_leading_outside_is_refused(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside.jsonl"
    shutil.move(
        corpus / "000-prose.jsonl", outside
    )  # same bytes, same hash: only the link is wrong
    os.symlink(outside, corpus / "000-prose.jsonl")
    _refused(corpus, r"leads outside .* symbolic link", capsys)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m["domains"]["prose"].update(documents="30"), "not a count >= 0"),
        (lambda m: m["domains"]["prose"].update(characters=-1), "not a count >= 0"),
        (lambda m: m["domains"]["prose"].pop("sha256"), "has no sha256"),
        (lambda m: m["domains"]["prose"].update(file="001-wikipedia-en.jsonl"), "share the file"),
        (lambda m: m.update(domains=[]), "lists no domains"),
        (lambda m: m["domains"].update(prose=3), "is not an object"),
        (lambda m: m["domains"]["prose"].update(sha256="0" * 64), "corpus hash does not match"),
    ],
)
def test_malformed_manifest_entries_are_clear_errors(
    corpus: Path,
    change: Callable[[dict[str, Any]], None],
    match: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _edit(corpus, change)
    _refused(corpus, match, capsys)


# -- the files against the manifest (checked by prepare before tokenizing) --------------------


def _rehash(corpus: Path) -> None:
    """Make the manifest's hashes match the (edited) files, as a careful forger would; counts
    stay as they were."""
    from acodm.data.corpus import corpus_hash

    def change(m: dict[str, Any]) -> None:
        for st in m["domains"].values():
            st["sha256"] = hashlib.sha256((corpus / st["file"]).read_bytes()).hexdigest()
        m["hash"] = corpus_hash(m["domains"])

    _edit(corpus, change)


def _cut_at_a_line(corpus: Path) -> None:
    f = corpus / "000-prose.jsonl"
    f.write_text("".join(f.read_text().splitlines(keepends=True)[:10]))


def _change_one_byte(corpus: Path) -> None:
    f = corpus / "000-prose.jsonl"
    data = bytearray(f.read_bytes())
    data[data.index(b"document")] = ord("D")
    f.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_cut_at_a_line, "000-prose.jsonl does not match its sha256"),
        (_change_one_byte, "000-prose.jsonl does not match its sha256"),
        (lambda c: (_cut_at_a_line(c), _rehash(c)), "holds 10 records, but the manifest says 30"),
        (
            lambda c: _edit(c, lambda m: m["domains"]["prose"].update(documents=29)),
            "holds 30 records, but the manifest says 29",
        ),
        (
            lambda c: _edit(c, lambda m: m["domains"]["prose"].update(characters=5)),
            "and 5",
        ),
    ],
)
def test_prepare_refuses_a_corpus_modified_after_it_was_built(
    corpus: Path, damage: Callable[[Path], object], match: str, capsys: pytest.CaptureFixture[str]
) -> None:
    damage(corpus)
    Corpus(corpus)  # opening is cheap and does not read the files ...
    err = _prepare_refused(corpus, capsys)  # ... prepare does, before it writes anything
    assert match in err
    assert "modified after it was built: rebuild it with `acodm corpus build`" in err
