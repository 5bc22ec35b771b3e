"""The agents' model folders: ``STEM.json`` (format, schema version, settings) beside
``STEM.safetensors`` (arrays), as the quality classifier and the topic model save them.

Each file is written atomically, the JSON last, so a folder whose JSON exists has its arrays
(``acodm annotate`` also builds the whole annotation folder under a temporary name). Reading
checks the JSON's format and schema version and turns a missing, foreign or damaged file into
one :class:`AnnotationError` that names the file and the fix, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from acodm.errors import AnnotationError
from acodm.io import atomic_write_bytes, atomic_write_text, read_checked_manifest


def save_model_folder(
    folder: str | Path,
    stem: str,
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    indent: int | None = None,
) -> Path:
    """Write ``folder/STEM.safetensors`` then ``folder/STEM.json``; returns ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write_bytes(out / f"{stem}.safetensors", safetensors.numpy.save(tensors))
    atomic_write_text(out / f"{stem}.json", json.dumps(dict(meta), indent=indent) + "\n")
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())  # the CLI prints an error as one line


def _fix(save: str, folder: Path) -> str:
    # a model of an annotation folder (STORE/annotations/quality) is rebuilt by annotating again
    store = folder.parent.parent if folder.parent.name == "annotations" else "STORE"
    return f"save it again with {save}, or re-run `acodm annotate {store} --overwrite`"


def load_model_folder(
    folder: str | Path, stem: str, *, fmt: str, version: int, what: str, save: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a folder written by :func:`save_model_folder`, checked.

    ``what`` names the model ("quality classifier"), ``save`` the method that writes one
    (``QualityClassifier.save``); both go into the error messages.
    """
    root = Path(folder)
    meta = read_checked_manifest(
        root,
        name=f"{stem}.json",
        fmt=fmt,
        version=version,
        what=what,
        create=_fix(save, root),
        rebuild=_fix(save, root),
        error=AnnotationError,
    )
    path = root / f"{stem}.safetensors"
    try:
        arrays = safetensors.numpy.load(path.read_bytes())
    except Exception as e:  # missing (OSError) or corrupt (SafetensorError): one clear message
        raise AnnotationError(
            f"{what} {path} is missing or corrupt ({_one_line(e)}); {_fix(save, root)}"
        ) from e
    return meta, arrays


@contextlib.contextmanager
def damaged(folder: str | Path, what: str, save: str) -> Iterator[None]:
    """Turn a missing or mistyped field or array, read while rebuilding a model from its
    folder, into an :class:`AnnotationError` naming the folder and the fix."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else _one_line(e)
        fix = _fix(save, Path(folder))
        raise AnnotationError(f"{what} in {folder} is damaged ({detail}); {fix}") from e
