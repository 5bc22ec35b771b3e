"""``import_corpus``: every input kind and domain rule, and a clear error for each bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from acodm.data.corpus import Corpus
from acodm.data.importer import get_field, import_corpus
from acodm.errors import CorpusError

RECORDS: list[dict[str, Any]] = [
    {"text": "The quick brown fox.", "domain": "prose", "id": 1},
    {"text": "def f():\n    return 1\n", "domain": "code", "id": 2},
    {"text": "Another sentence, with a comma\nand a newline.", "domain": "prose", "id": 3},
    {"text": "NA", "domain": "code", "id": 4},  # must stay text, not become a missing value
]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def _import(source: Path | str, tmp_path: Path, **kw: Any) -> Corpus:
    out = tmp_path / "corpus"
    return Corpus(import_corpus(source, out, progress=False, **kw))


def _docs(corpus: Corpus) -> dict[str, list[tuple[str, str]]]:
    """domain -> [(doc_id, text)] in corpus order."""
    return {d: [(x.doc_id, x.text) for x in corpus.iter_documents(d)] for d in corpus.domains}


def _expected_by_domain(stem: str) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for row, r in enumerate(RECORDS):
        out.setdefault(r["domain"], []).append((f"{r['domain']}/{stem}/{row}", r["text"]))
    return out


def test_jsonl_with_a_domain_field(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "data.jsonl", RECORDS)
    corpus = _import(src, tmp_path)
    assert _docs(corpus) == _expected_by_domain("data")
    doc = next(corpus.iter_documents("prose"))
    assert doc.source == str(src)
    assert corpus.manifest["meta"]["text_field"] == "text"


def test_compressed_jsonl_and_json_array(tmp_path: Path) -> None:
    gz = _write_jsonl(tmp_path / "a" / "data.jsonl.gz", RECORDS)
    assert _docs(_import(gz, tmp_path / "a")) == _expected_by_domain("data")
    arr = tmp_path / "b" / "data.json"
    arr.parent.mkdir()
    arr.write_text(json.dumps(RECORDS), encoding="utf-8")
    assert _docs(_import(arr, tmp_path / "b")) == _expected_by_domain("data")


def test_parquet_with_nested_pile_field(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": r["text"], "meta": {"pile_set_name": r["domain"]}} for r in RECORDS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pile.parquet", row_group_size=2)
    corpus = _import(tmp_path / "pile.parquet", tmp_path, domain_field="meta.pile_set_name")
    assert _docs(corpus) == _expected_by_domain("pile")


def test_jsonl_with_nested_slimpajama_field(tmp_path: Path) -> None:
    rows = [
        {"text": r["text"], "meta": {"redpajama_set_name": "RedPajama" + r["domain"]}}
        for r in RECORDS
    ]
    corpus = _import(
        _write_jsonl(tmp_path / "s.jsonl", rows), tmp_path, domain_field="meta.redpajama_set_name"
    )
    assert corpus.domains == ["RedPajamaprose", "RedPajamacode"]


def test_csv_keeps_every_cell_as_text(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame(RECORDS).to_csv(tmp_path / "t.csv", index=False)
    assert _docs(_import(tmp_path / "t.csv", tmp_path)) == _expected_by_domain("t")


def test_folder_per_domain(tmp_path: Path) -> None:
    root = tmp_path / "src"
    _write_jsonl(root / "books" / "part-0.jsonl", [{"text": "a book"}, {"text": "more"}])
    _write_jsonl(root / "books" / "deep" / "part-1.jsonl", [{"text": "nested book"}])
    _write_jsonl(root / "web" / "x.jsonl", [{"text": "a page"}])
    (root / "README.md").write_text("not data")  # other file types are skipped in folders
    corpus = _import(root, tmp_path)
    assert _docs(corpus) == {
        # files in sorted path order: books/deep/... before books/part-0...
        "books": [
            ("books/books/deep/part-1/0", "nested book"),
            ("books/books/part-0/0", "a book"),
            ("books/books/part-0/1", "more"),
        ],
        "web": [("web/web/x/0", "a page")],
    }


def test_domain_field_none_uses_folders_even_when_records_have_one(tmp_path: Path) -> None:
    root = tmp_path / "src"
    _write_jsonl(root / "books" / "a.jsonl", [{"text": "t1", "domain": "ignored"}])
    _write_jsonl(root / "news" / "a.jsonl", [{"text": "t2", "domain": "ignored"}])
    assert _import(root, tmp_path / "a", domain_field=None).domains == ["books", "news"]
    # By default the field, when present, wins over the folder name.
    assert _import(root, tmp_path / "b").domains == ["ignored"]


def test_fixed_domain_and_limit(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "d.jsonl", RECORDS)
    corpus = _import(src, tmp_path, domain="all", limit=3)
    assert corpus.domains == ["all"] and corpus.num_documents("all") == 3


def test_save_to_disk_dataset_and_dataset_dict(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_list(RECORDS)
    ds.save_to_disk(str(tmp_path / "single"))
    corpus = _import(tmp_path / "single", tmp_path / "a")
    assert _docs(corpus) == _expected_by_domain("single")
    dd = datasets.DatasetDict({"train": ds.select([0, 1]), "validation": ds.select([2, 3])})
    dd.save_to_disk(str(tmp_path / "dict"))
    corpus = _import(tmp_path / "dict", tmp_path / "b", split="validation")
    assert [x.doc_id for d in corpus.domains for x in corpus.iter_documents(d)] == [
        "prose/dict/validation/0",
        "code/dict/validation/1",
    ]
    with pytest.raises(CorpusError, match=r"splits \['train', 'validation'\].*--split"):
        _import(tmp_path / "dict", tmp_path / "c", split="test")


def test_dataset_name_goes_through_load_dataset_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    local = _write_jsonl(tmp_path / "hub" / "train.jsonl", RECORDS)
    real_load = datasets.load_dataset
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_load(name: str, **kw: Any) -> Any:
        calls.append((name, kw))
        if name != "someone/corpus":
            raise FileNotFoundError(f"Dataset {name} doesn't exist on the Hub")
        return real_load("json", data_files={"train": str(local)}, **kw)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    corpus = _import("someone/corpus", tmp_path)
    assert calls == [("someone/corpus", {"split": "train", "streaming": True})]
    assert _docs(corpus) == _expected_by_domain("someone/corpus/train")
    assert next(corpus.iter_documents("prose")).source == "someone/corpus:train"
    with pytest.raises(CorpusError, match="neither a file or folder nor a dataset"):
        _import("someone/typo", tmp_path / "x")


def test_get_field_reaches_nested_values_and_prefers_literal_keys() -> None:
    rec = {"meta": {"a": {"b": 1}}, "meta.a": "literal"}
    assert get_field(rec, "meta.a.b") == (True, 1)
    assert get_field(rec, "meta.a") == (True, "literal")
    assert get_field(rec, "meta.c") == (False, None)


# -- errors ---------------------------------------------------------------------------------


def test_missing_text_field_lists_the_fields(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "d.jsonl", [{"content": "x", "meta": {"lang": "en"}}])
    with pytest.raises(CorpusError, match=r"no text field 'text'.*\['content', 'meta.lang'\]"):
        _import(src, tmp_path, domain="d")
    assert not (tmp_path / "corpus").exists()


def test_missing_domain_field_lists_the_fields_and_the_options(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "meta": {"pile_set_name": "A"}}])
    with pytest.raises(CorpusError, match=r"no field 'domain'.*meta.pile_set_name.*--domain NAME"):
        _import(src, tmp_path)
    _write_jsonl(tmp_path / "e.jsonl", [{"text": "x", "domain": "a"}, {"text": "y"}])
    with pytest.raises(CorpusError, match=r"e.jsonl, row 1: no domain field 'domain'"):
        _import(tmp_path / "e.jsonl", tmp_path)


@pytest.mark.parametrize(("value", "type_name"), [(3, "int"), (None, "NoneType"), (["a"], "list")])
def test_non_text_value_names_row_and_type(tmp_path: Path, value: Any, type_name: str) -> None:
    src = _write_jsonl(
        tmp_path / "d.jsonl", [{"text": "ok", "domain": "a"}, {"text": value, "domain": "a"}]
    )
    with pytest.raises(CorpusError, match=rf"d.jsonl, row 1: field 'text' holds {type_name}"):
        _import(src, tmp_path)


def test_non_text_domain_names_row_and_type(tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "ok", "domain": 7}])
    with pytest.raises(CorpusError, match=r"row 0: domain field 'domain' holds int"):
        _import(src, tmp_path)


def test_domain_that_ends_up_empty(tmp_path: Path) -> None:
    src = _write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"text": "ok", "domain": "a"},
            {"text": "  \n", "domain": "b"},
            {"text": "ok", "domain": "c"},
        ],
    )  # duplicate
    with pytest.raises(CorpusError, match=r"domain 'b' ended up empty"):
        _import(src, tmp_path)
    root = tmp_path / "src"
    _write_jsonl(root / "books" / "a.jsonl", [{"text": "t1"}])
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("unsupported")
    with pytest.raises(CorpusError, match=r"domain folder\(s\) \['empty'\] hold no records"):
        _import(root, tmp_path)


def test_unsupported_and_missing_inputs(tmp_path: Path) -> None:
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(CorpusError, match=r"unsupported file type: notes.txt; supported are"):
        _import(txt, tmp_path)
    with pytest.raises(CorpusError, match="does not exist"):
        _import(tmp_path / "missing.jsonl", tmp_path)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(CorpusError, match="has no supported files"):
        _import(tmp_path / "nothing", tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "domain": "x"}\n{"text": \n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2 is not valid JSON"):
        _import(bad, tmp_path)
    with pytest.raises(CorpusError, match="limit"):
        _import(bad, tmp_path, limit=0)


# -- text that is not UTF-8 or not valid Unicode: one line, exit 2, nothing written -----------


def _cli_import_refused(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> str:
    from acodm.cli import main

    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["corpus", "import", str(source), "--out", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("acodm: error:") and err.count("\n") == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    return err


GOOD_LINE = '{"text": "fine", "domain": "a"}\n'


def _latin1(path: Path, lines: str) -> Path:
    path.write_bytes(lines.encode("latin-1"))
    return path


@pytest.mark.parametrize(
    ("name", "write", "where"),
    [
        (
            "latin.jsonl",
            lambda p: _latin1(p, GOOD_LINE + '{"text": "café", "domain": "a"}\n'),
            "latin.jsonl:2 is not UTF-8 text (byte 0xe9 at character 14)",
        ),
        (
            "latin.jsonl.gz",
            lambda p: p.write_bytes(
                gzip.compress((GOOD_LINE + '{"text": "café", "domain": "a"}\n').encode("latin-1"))
            ),
            "latin.jsonl.gz:2 is not UTF-8 text",
        ),
        (
            "latin.json",
            lambda p: _latin1(
                p, '[{"text": "a", "domain": "a"},\n {"text": "café", "domain": "a"}]'
            ),
            "latin.json:2 is not UTF-8 text (byte 0xe9 at character 15)",
        ),
        (
            "latin.csv",
            lambda p: _latin1(p, "text,domain\nfine,a\ncafé,a\n"),
            "latin.csv is not UTF-8",
        ),
        ("latin.tsv", lambda p: _latin1(p, "text\tdomain\ncafé\ta\n"), "latin.tsv is not UTF-8"),
    ],
)
def test_text_that_is_not_utf8_names_the_file_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, write: Any, where: str
) -> None:
    src = tmp_path / "in" / name
    src.parent.mkdir()
    write(src)
    err = _cli_import_refused(src, tmp_path, capsys)
    assert where in err and "re-encode the file as UTF-8" in err and "iconv -f latin1" in err


def test_a_binary_file_named_jsonl_is_called_binary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "data.jsonl"
    src.write_bytes(gzip.compress(b'{"text": "x"}\n' * 50))  # compressed, but not named .gz
    err = _cli_import_refused(src, tmp_path, capsys)
    assert "data.jsonl:1" in err and "looks binary" in err and ".gz" in err
    (tmp_path / "b.json").write_bytes(bytes(range(256)))
    assert "looks binary" in _cli_import_refused(tmp_path / "b.json", tmp_path, capsys)


def test_a_parquet_string_column_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = pa.array([b"ok", b"caf\xe9"], pa.binary())
    text = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())  # unvalidated
    pq.write_table(pa.table({"text": text, "domain": ["a", "a"]}), tmp_path / "bad.parquet")
    err = _cli_import_refused(tmp_path / "bad.parquet", tmp_path, capsys)
    assert "bad.parquet holds a string that is not UTF-8" in err and "valid UTF-8" in err


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        (
            '{"text": "x\\ud800y", "domain": "a"}',
            "in.jsonl, row 1: document 'a/in/1' has an unpaired surrogate '\\ud800' at "
            "character 1 in its text",
        ),
        ('{"text": "x", "domain": "a\\udc00"}', "in.jsonl, row 1: domain name 'a\\udc00'"),
        ('{"text": "x", "domain": "a", "meta": {"t": "\\udfff"}}', None),  # meta is not kept
    ],
)
def test_an_unpaired_surrogate_escape_names_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, expect: str | None
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(GOOD_LINE + line + "\n", encoding="utf-8")
    if expect is None:
        assert _docs(_import(src, tmp_path)) == {"a": [("a/in/0", "fine"), ("a/in/1", "x")]}
        return
    err = _cli_import_refused(src, tmp_path, capsys)
    assert expect in err and ("fix or drop the record" in err or "--domain NAME" in err)


def test_file_and_folder_names_that_are_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "src"
    bad_folder = os.path.join(os.fsencode(root), b"caf\xe9")
    os.makedirs(bad_folder)
    with open(os.path.join(bad_folder, b"x.jsonl"), "w") as f:
        f.write('{"text": "ok"}\n')
    err = _cli_import_refused(root, tmp_path, capsys)
    assert "unpaired surrogate" in err and "rename the folder" in err
    shutil.rmtree(root)
    os.makedirs(os.path.join(os.fsencode(root), b"ok"))
    with open(os.path.join(os.fsencode(root), b"ok", b"\xff.jsonl"), "w") as f:
        f.write('{"text": "ok"}\n')
    err = _cli_import_refused(root, tmp_path, capsys)
    assert "in its doc_id" in err and "rename the file or folder" in err


def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path: Path) -> None:
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + GOOD_LINE.encode())
    assert _docs(_import(src, tmp_path)) == {"a": [("a/bom/0", "fine")]}


# -- domain names -----------------------------------------------------------------------------


def test_a_slash_in_a_domain_name_is_refused_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write_jsonl(tmp_path / "in.jsonl", [{"text": "x", "domain": "web/en"}])
    err = _cli_import_refused(src, tmp_path, capsys)
    assert "in.jsonl, row 0: domain name 'web/en' contains '/'" in err
    assert "rename the domain in the input, or pass --domain NAME" in err
    err = _cli_import_refused(src, tmp_path, capsys, "--domain", "a/b")
    assert "'a/b' contains '/'" in err
    # the fix works
    assert _import(src, tmp_path, domain="web-en").domains == ["web-en"]


def test_pile_domain_names_are_imported_as_they_are(tmp_path: Path) -> None:
    names = ["Wikipedia (en)", "Gutenberg (PG-19)", "DM Mathematics", "Pile-CC", "NIH ExPorter"]
    src = _write_jsonl(
        tmp_path / "pile.jsonl",
        [{"text": f"doc {n}", "meta": {"pile_set_name": n}} for n in names],
    )
    assert _import(src, tmp_path, domain_field="meta.pile_set_name").domains == names
