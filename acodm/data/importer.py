"""``acodm corpus import``: turn the user's own text into an acodm corpus.

What ``source`` may be:

- a file: ``.jsonl``/``.ndjson``, ``.json`` (JSON lines, or one array of records), ``.parquet``,
  ``.csv``/``.tsv``; the text formats may be compressed (``.gz``, ``.bz2``, ``.xz``, and
  ``.zst`` when the ``zstandard`` package is installed, as The Pile and SlimPajama ship);
- a folder: every supported file below it, recursively, in sorted path order (hidden files
  and other file types are skipped);
- a folder written by ``datasets``' ``save_to_disk`` (a ``DatasetDict``: ``split`` picks one);
- anything else is taken as a dataset name for ``datasets.load_dataset(source, split=split,
  streaming=True)`` (Hub access is the user's to arrange).

Where a record's domain comes from (the first rule that applies, decided per input file from
its first record, so a file is never half one rule and half another):

1. ``domain="NAME"``: every record gets that domain.
2. ``domain_field`` (default ``"domain"``; dots reach nested fields, ``meta.pile_set_name``
   for The Pile, ``meta.redpajama_set_name`` for SlimPajama), when the file's first record
   has it. Every later record of that file must have it too.
3. The name of the first-level subfolder of ``source`` that holds the file (a folder per
   domain), when ``domain_field`` is None or the records do not have it.
4. Otherwise a :class:`CorpusError` says which of the three to use.

Text must be UTF-8 (a byte order mark is dropped) and valid Unicode: an undecodable byte
(named by file, line and byte), a binary file, or an unpaired surrogate (a ``"\\ud800"`` JSON
escape, or a file or folder name that is not UTF-8) is a :class:`CorpusError` naming the
record and the fix, and nothing is written.

Each document gets ``doc_id = "<domain>/<file-stem>/<row>"`` (the file's path under
``source`` without its extensions; rows count records from 0) and ``source`` = the input
file or ``"<dataset>:<split>"``. Records are streamed: memory holds one batch of records
(a ``.json`` array file is the exception: it is parsed whole).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import acodm
from acodm.data.corpus import CorpusWriter, Document, validate_domain_name
from acodm.errors import CorpusError

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
_FORMATS = (".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv")
_BATCH_ROWS = 1024

Record = dict[str, Any]


@dataclass(frozen=True)
class _Fields:
    text_field: str
    domain_field: str | None
    domain: str | None


@dataclass(frozen=True)
class _Input:
    """One stream of records: a file, a saved dataset, or a Hub dataset."""

    label: str  # names the input in error messages
    source: str  # Document.source
    stem: str  # middle part of each doc_id
    folder_domain: str | None  # first-level subfolder of `source`, if any
    read: Callable[[], Iterator[Any]]


@dataclass
class _Tally:
    """Records read and documents kept per domain, for the empty-domain check."""

    records: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)
    folders_read: set[str] = field(default_factory=set)
    folder_rule_used: bool = False
    total: int = 0

    def count(self, domain: str, kept: bool) -> None:
        self.records[domain] = self.records.get(domain, 0) + 1
        self.kept[domain] = self.kept.get(domain, 0) + int(kept)
        self.total += 1


def import_corpus(
    source: str | Path,
    out: str | Path,
    *,
    text_field: str = "text",
    domain_field: str | None = "domain",
    domain: str | None = None,
    split: str = "train",
    overwrite: bool = False,
    progress: bool = True,
    limit: int | None = None,
) -> Path:
    """Import ``source`` (see the module docstring) into a corpus folder at ``out``.

    ``limit`` stops after that many records in total, in input order (a quick sample for a
    smoke test; for a balanced sample import each domain on its own). ``split`` applies to
    datasets only. Empty texts and exact duplicates are dropped by :class:`CorpusWriter`.
    """
    fields = _check_args(text_field, domain_field, domain, limit)
    inputs, subfolders = _resolve(source, split, fields)
    meta = {
        "importer": "acodm.data.importer",
        "source": str(source),
        "text_field": text_field,
        "domain_field": domain_field,
        "domain": domain,
        "split": split,
        "limit": limit,
        "acodm_version": acodm.__version__,
    }
    from acodm.progress import progress_bar

    with (
        CorpusWriter(out, meta=meta, overwrite=overwrite) as writer,
        progress_bar(total=limit, unit="doc", desc="import", disable=not progress) as bar,
    ):
        tally = _Tally()
        for inp in inputs:
            if limit is not None and tally.total >= limit:
                break
            _import_input(inp, writer, fields, tally, limit, bar.update)
        _check_domains(tally, subfolders, truncated=limit is not None and tally.total >= limit)
    return Path(out)


def _check_args(
    text_field: str, domain_field: str | None, domain: str | None, limit: int | None
) -> _Fields:
    if not text_field:
        raise CorpusError("text_field must name a field of the records, e.g. 'text'")
    if domain is not None:
        validate_domain_name(domain)
    if limit is not None and limit < 1:
        raise CorpusError(f"limit must be a positive number of records, got {limit}")
    return _Fields(text_field, domain_field or None, domain)


# -- reading records ------------------------------------------------------------------------


def _import_input(
    inp: _Input,
    writer: CorpusWriter,
    fields: _Fields,
    tally: _Tally,
    limit: int | None,
    advance: Callable[[int], None],
) -> None:
    domain_of: Callable[[int, Record], str] | None = None
    for row, rec in enumerate(_decoded(inp)):
        if not isinstance(rec, dict):
            raise CorpusError(
                f"{inp.label}, row {row}: a record must be an object with named fields, "
                f"got {type(rec).__name__}"
            )
        if domain_of is None:
            domain_of = _domain_rule(inp, rec, fields, tally)
        text = _text_of(inp, row, rec, fields.text_field)
        dom = domain_of(row, rec)
        try:
            kept = writer.add(Document(text, dom, inp.source, f"{dom}/{inp.stem}/{row}"))
        except CorpusError as e:  # e.g. an unpaired surrogate: say where the record is
            raise CorpusError(f"{inp.label}, row {row}: {e}") from None
        tally.count(dom, kept)
        if inp.folder_domain is not None:
            tally.folders_read.add(inp.folder_domain)
        advance(1)
        if limit is not None and tally.total >= limit:
            return


def _decoded(inp: _Input) -> Iterator[Any]:
    """The records of an input; text that is not UTF-8 (parquet, datasets) is a CorpusError.

    The JSON readers find the exact line themselves; this catches the other readers.
    """
    try:
        yield from inp.read()
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{inp.label} holds a string that is not UTF-8 ({e}); rewrite the column as valid "
            "UTF-8 text (decode the bytes with their real encoding, e.g. in pandas or pyarrow)"
        ) from e


def get_field(rec: Record, name: str) -> tuple[bool, Any]:
    """``(found, value)`` of a field; ``a.b`` reaches ``rec["a"]["b"]`` (a literal key wins)."""
    if name in rec:
        return True, rec[name]
    cur: Any = rec
    for part in name.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _field_names(rec: Record, prefix: str = "") -> list[str]:
    """Field names of a record, nested ones dotted, for error messages."""
    names: list[str] = []
    for k, v in rec.items():
        names += _field_names(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return names[:40]


def _text_of(inp: _Input, row: int, rec: Record, name: str) -> str:
    found, value = get_field(rec, name)
    if not found:
        raise CorpusError(
            f"{inp.label}, row {row}: no text field {name!r}; the record has fields "
            f"{_field_names(rec)}. Pass --text-field with one of them"
        )
    if not isinstance(value, str):
        raise CorpusError(
            f"{inp.label}, row {row}: field {name!r} holds {type(value).__name__} "
            f"({_short(value)}), not text; point --text-field at a string field"
        )
    return value


def _domain_rule(
    inp: _Input, first: Record, fields: _Fields, tally: _Tally
) -> Callable[[int, Record], str]:
    """How this input's records get their domain (the rules of the module docstring)."""
    if fields.domain is not None:
        fixed = fields.domain
        return lambda row, rec: fixed
    name = fields.domain_field
    if name is not None and get_field(first, name)[0]:
        return lambda row, rec: _domain_of(inp, row, rec, name)
    if inp.folder_domain is not None:
        tally.folder_rule_used = True
        folder = validate_domain_name(
            inp.folder_domain, f"rename the folder {inp.folder_domain!r}, or pass --domain NAME"
        )
        return lambda row, rec: folder
    why = (
        f"its records have no field {name!r} (fields: {_field_names(first)})"
        if name is not None
        else "--domain-field is off"
    )
    raise CorpusError(
        f"{inp.label}: cannot tell the domain of its records: {why}, and it is not inside a "
        "domain subfolder. Pass --domain-field FIELD (dots reach nested fields, e.g. "
        "meta.pile_set_name), --domain NAME for a single domain, or put the files in one "
        "subfolder per domain"
    )


def _domain_of(inp: _Input, row: int, rec: Record, name: str) -> str:
    found, value = get_field(rec, name)
    if not found:
        raise CorpusError(
            f"{inp.label}, row {row}: no domain field {name!r} (fields: {_field_names(rec)}), "
            "although the first record of this input has it"
        )
    if not isinstance(value, str):
        raise CorpusError(
            f"{inp.label}, row {row}: domain field {name!r} holds {type(value).__name__} "
            f"({_short(value)}), not text"
        )
    try:
        return validate_domain_name(value)
    except CorpusError as e:
        raise CorpusError(f"{inp.label}, row {row}: {e}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_domains(tally: _Tally, subfolders: list[str], truncated: bool) -> None:
    """Every domain the input names must end up with documents."""
    for domain, n in tally.records.items():
        if tally.kept[domain] == 0:
            raise CorpusError(
                f"domain {domain!r} ended up empty: its {n} records all had empty text or "
                "repeated earlier documents exactly; check --text-field or remove the domain"
            )
    if tally.folder_rule_used and not truncated:
        empty = [d for d in subfolders if d not in tally.folders_read]
        if empty:
            raise CorpusError(
                f"domain folder(s) {empty} hold no records (supported files: "
                f"{', '.join(_FORMATS)}); add data or remove the folder(s)"
            )


# -- resolving the source -------------------------------------------------------------------


def _resolve(source: str | Path, split: str, fields: _Fields) -> tuple[list[_Input], list[str]]:
    """The inputs of ``source`` and, for a folder, its first-level subfolders."""
    path = Path(source).expanduser()
    if path.is_file():
        return [_file_input(path, _stem(Path(path.name)), None, fields)], []
    if path.is_dir():
        if _is_saved_dataset(path):
            return [_disk_dataset_input(path, split)], []
        return _folder_inputs(path, fields)
    if Path(source).suffix.lower() in _FORMATS + _COMPRESSED or str(source).startswith(
        (".", "/", "~")
    ):
        raise CorpusError(f"input {source} does not exist")
    return [_hub_input(str(source), split)], []


def _folder_inputs(root: Path, fields: _Fields) -> tuple[list[_Input], list[str]]:
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not _hidden(p.relative_to(root)) and _format(p) is not None
    )
    if not files:
        found = sorted(p.name for p in root.iterdir())[:12]
        raise CorpusError(
            f"folder {root} has no supported files ({', '.join(_FORMATS)}, optionally "
            f"compressed), recursively; it has {found}"
        )
    inputs = []
    for p in files:
        rel = p.relative_to(root)
        folder = rel.parts[0] if len(rel.parts) > 1 else None
        inputs.append(_file_input(p, _stem(rel), folder, fields))
    subfolders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return inputs, subfolders


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _stem(rel: Path) -> str:
    """``books/part-0.jsonl.gz`` -> ``books/part-0``."""
    name = rel.name
    for suffix in (*_COMPRESSED, *_FORMATS):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return (rel.parent / name).as_posix()


def _format(path: Path) -> tuple[str, str | None] | None:
    """``(format, compression)`` of a file from its name, or None if unsupported."""
    name = path.name.lower()
    comp = next((c for c in _COMPRESSED if name.endswith(c)), None)
    if comp:
        name = name[: -len(comp)]
    fmt = next((f for f in _FORMATS if name.endswith(f)), None)
    if fmt is None or (fmt == ".parquet" and comp):
        return None
    return fmt, comp


def _file_input(path: Path, stem: str, folder: str | None, fields: _Fields) -> _Input:
    kind = _format(path)
    if kind is None:
        raise CorpusError(
            f"unsupported file type: {path.name}; supported are {', '.join(_FORMATS)} "
            f"(the text formats optionally compressed: {', '.join(_COMPRESSED)}), a folder of "
            "them, a `datasets` save_to_disk folder, or a dataset name"
        )
    fmt, comp = kind
    readers: dict[str, Callable[[], Iterator[Any]]] = {
        ".jsonl": lambda: _read_jsonl(path, comp),
        ".ndjson": lambda: _read_jsonl(path, comp),
        ".json": lambda: _read_json(path, comp),
        ".parquet": lambda: _read_parquet(path, fields),
        ".csv": lambda: _read_csv(path, ","),
        ".tsv": lambda: _read_csv(path, "\t"),
    }
    return _Input(str(path), str(path), stem, folder, readers[fmt])


#: How to fix text that is not UTF-8 (the usual culprit is latin-1 or cp1252).
REENCODE = (
    "acodm reads UTF-8 only: re-encode the file as UTF-8, e.g. "
    "`iconv -f latin1 -t utf-8 IN > OUT` (with the file's real encoding in place of latin1; "
    "decompress it first if it is compressed)"
)
# Undecodable bytes become U+DC80..U+DCFF (surrogateescape) so that the line that holds them
# can be named; "utf-8-sig" drops a byte order mark at the start of the file.
_ENCODING, _ERRORS = "utf-8-sig", "surrogateescape"


def _open_text(path: Path, comp: str | None) -> IO[str]:
    if comp == ".gz":
        return gzip.open(path, "rt", encoding=_ENCODING, errors=_ERRORS)
    if comp == ".bz2":
        return bz2.open(path, "rt", encoding=_ENCODING, errors=_ERRORS)
    if comp == ".xz":
        return lzma.open(path, "rt", encoding=_ENCODING, errors=_ERRORS)
    if comp == ".zst":
        try:
            import zstandard
        except ImportError:
            raise CorpusError(
                f"{path} is zstandard-compressed: `pip install zstandard`, or decompress it "
                "first (`zstd -d`)"
            ) from None
        stream: IO[str] = zstandard.open(path, "rt", encoding=_ENCODING, errors=_ERRORS)
        return stream
    return open(path, encoding=_ENCODING, errors=_ERRORS)


def _check_utf8(path: Path, text: str, lineno: int | None = None) -> None:
    """A CorpusError naming the line and byte of the first undecodable byte in ``text``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = ord(text[e.start]) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
        if lineno is None:
            lineno = text.count("\n", 0, e.start) + 1
            column = e.start - text.rfind("\n", 0, e.start)
        else:
            column = e.start + 1
        raise CorpusError(
            f"{path}:{lineno} is not UTF-8 text (byte 0x{byte:02x} at character {column}); "
            f"{_binary_hint(text) or REENCODE}"
        ) from None


def _binary_hint(text: str) -> str | None:
    """The fix for a "text" file that holds NUL bytes: it is binary, not mis-encoded."""
    if "\x00" not in text[: 1 << 16]:
        return None
    return (
        "it holds NUL bytes, so it looks binary rather than text: check that it is the file "
        f"you meant (a compressed file must end in {', '.join(_COMPRESSED)})"
    )


def _read_jsonl(path: Path, comp: str | None) -> Iterator[Any]:
    with _open_text(path, comp) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            _check_utf8(path, line, lineno)
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                fix = _binary_hint(line) or "each line of a JSON-lines file must be one record"
                raise CorpusError(f"{path}:{lineno} is not valid JSON ({e}); {fix}") from e


def _read_json(path: Path, comp: str | None) -> Iterator[Any]:
    """A ``.json`` file is an array of records (parsed whole) or JSON lines (streamed)."""
    with _open_text(path, comp) as f:
        head = f.read(1 << 16).lstrip()
    if not head.startswith("["):
        yield from _read_jsonl(path, comp)
        return
    with _open_text(path, comp) as f:
        text = f.read()
    _check_utf8(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = _binary_hint(text)
        raise CorpusError(f"{path} is not valid JSON ({e}){'; ' + hint if hint else ''}") from e
    yield from data


def _parquet_columns(names: list[str], fields: _Fields) -> list[str] | None:
    """The columns to read: text and domain (``meta`` for ``meta.x``); None reads all.

    All are read when the text column is missing, so that the error lists every field.
    """
    columns = set()
    for name in (fields.text_field, fields.domain_field):
        if name is None:
            continue
        top = name if name in names else name.split(".")[0]
        if top in names:
            columns.add(top)
        elif name == fields.text_field:
            return None
    return sorted(columns)


def _read_parquet(path: Path, fields: _Fields) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CorpusError(f"{path} is not a readable parquet file ({e})") from e
    columns = _parquet_columns(pf.schema_arrow.names, fields)
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
        yield from batch.to_pylist()


def _read_csv(path: Path, sep: str) -> Iterator[Any]:
    import pandas as pd

    try:
        # dtype=str and keep_default_na=False: every cell is text, "NA" and "" included.
        chunks = pd.read_csv(path, sep=sep, chunksize=_BATCH_ROWS, dtype=str, keep_default_na=False)
        for chunk in chunks:
            yield from chunk.to_dict("records")
    except UnicodeDecodeError as e:  # pandas does not say which row; the byte is enough
        raise CorpusError(f"{path} is not UTF-8 text ({e}); {REENCODE}") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise CorpusError(f"{path} is not a readable {sep!r}-separated file ({e})") from e


# -- datasets -------------------------------------------------------------------------------


def _is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _disk_dataset_input(path: Path, split: str) -> _Input:
    import datasets

    ds = datasets.load_from_disk(str(path))
    stem = path.name
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise CorpusError(f"{path} has splits {list(ds)}, not {split!r}; pass --split")
        ds, stem = ds[split], f"{path.name}/{split}"
    return _Input(str(path), f"{path}:{split}", stem, None, lambda: iter(ds))


def _hub_input(name: str, split: str) -> _Input:
    def read() -> Iterator[Any]:
        import datasets

        try:
            ds = datasets.load_dataset(name, split=split, streaming=True)
        except Exception as e:  # datasets raises many types: not found, offline, bad split
            raise CorpusError(
                f"{name!r} is neither a file or folder nor a dataset `datasets.load_dataset` "
                f"can stream ({type(e).__name__}: {e})"
            ) from e
        yield from ds

    return _Input(f"dataset {name!r}", f"{name}:{split}", f"{name}/{split}", None, read)
