"""User-supplied quality scorers for :func:`acodm.agents.annotate.annotate_store`.

A quality scorer is any callable ``scorer(texts: Sequence[str]) -> array-like of float``
returning one finite number per text, higher = better quality (for example a FineWeb-Edu
style classifier, as in the paper). Annotation bins its scores by quantile within each
domain exactly as it does the built-in classifier's, so only their order matters.

* :func:`hf_sequence_classifier` - a local Hugging Face sequence-classification folder
  (safetensors weights only; a pickle ``pytorch_model.bin`` is refused, never unpickled).
* :func:`load_scorer` - a spec string: a folder, or ``module:function``.
* :func:`scorer_identity` - what annotation records in its settings, so that annotating
  with another scorer (other weights, another function) is a settings change.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from acodm.errors import AnnotationError

QualityScorer = Callable[[Sequence[str]], Any]
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def weights_sha256(folder: Path) -> str:
    """sha256 over the folder's ``*.safetensors`` files, in name order (shards included)."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.name.encode("utf-8") + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _check_folder(folder: Path) -> None:
    """A clear error before transformers sees a folder it cannot (or must not) load."""
    if not folder.is_dir():
        raise AnnotationError(f"quality scorer folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise AnnotationError(
            f"{folder} has no config.json: not a Hugging Face model folder (save one with "
            "model.save_pretrained(folder) and tokenizer.save_pretrained(folder))"
        )
    if not any((folder / n).is_file() for n in SAFE_WEIGHTS):
        pickled = [n for n in PICKLE_WEIGHTS if (folder / n).is_file()]
        found = f"only pickle weights {pickled}" if pickled else "no model.safetensors"
        raise AnnotationError(
            f"{folder} has {found}; acodm loads safetensors weights only and never unpickles. "
            "Convert it once where you trust the file: load the model with transformers and "
            "call model.save_pretrained(folder, safe_serialization=True)"
        )


def _label_index(config: Any, label: int | str | None, folder: Path) -> int:
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    n = int(config.num_labels)
    if label is None:
        return n - 1
    if isinstance(label, int) and 0 <= label < n:
        return label
    by_name = {v: k for k, v in id2label.items()}
    if isinstance(label, str) and label in by_name:
        return by_name[label]
    raise AnnotationError(
        f"label {label!r} is not a label of {folder}: it has {n} labels {id2label} "
        "(pass an index or one of these names)"
    )


class HFSequenceClassifier:
    """A quality scorer over a loaded Hugging Face sequence-classification model.

    Score = the single logit of a one-output (regression) head, else the softmax probability
    of one label. Built by :func:`hf_sequence_classifier`. The weights load on the first call,
    so a scorer used only for its identity (annotations reused unchanged) costs no model load.
    """

    def __init__(
        self,
        path: Path,
        tokenizer: Any,
        *,
        label_index: int | None,
        identity: dict[str, Any],
        batch_size: int,
        max_length: int,
        device: str,
        progress: bool,
    ) -> None:
        self.path, self.tokenizer = path, tokenizer
        self._model: Any = None
        self.label_index = label_index  # None: one-output regression head
        self.acodm_identity = identity
        # Without a pad token a batch cannot be padded: score one text at a time (exact).
        self.batch_size = batch_size if tokenizer.pad_token_id is not None else 1
        self.max_length = max_length
        self.device, self.progress = device, progress

    @property
    def model(self) -> Any:
        """The model in eval mode on ``device`` (safetensors weights, loaded once)."""
        if self._model is None:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, local_files_only=True, use_safetensors=True
            )
            if model.config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
                # decoder heads (GPT-style) pool the last non-pad token: they need the pad id
                model.config.pad_token_id = self.tokenizer.pad_token_id
            self._model = model.eval().to(self.device)
        return self._model

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        from acodm.progress import progress_bar

        out = np.empty(len(texts), dtype=np.float64)
        starts = range(0, len(texts), self.batch_size)
        with torch.no_grad():
            for s in progress_bar(
                starts, desc="quality scorer", unit="batch", disable=not self.progress
            ):
                batch = list(texts[s : s + self.batch_size])
                enc = self.tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                logits = self.model(**enc).logits.float()  # (batch, num_labels)
                if self.label_index is None:
                    scores = logits[:, 0]
                else:
                    scores = torch.softmax(logits, dim=-1)[:, self.label_index]
                out[s : s + len(batch)] = scores.cpu().numpy()
        return out


def hf_sequence_classifier(
    folder: str | Path,
    *,
    label: int | str | None = None,
    batch_size: int = 32,
    max_length: int = 512,
    device: str = "cpu",
    progress: bool = True,
) -> HFSequenceClassifier:
    """A quality scorer from a local Hugging Face sequence-classification folder.

    The folder needs ``config.json``, tokenizer files and safetensors weights; nothing is
    downloaded and no pickle is read. ``label`` (an index or a name in ``config.id2label``;
    default: the last label) picks the probability used as the score; a one-output head's
    logit is used as is. Texts are truncated to ``max_length`` tokens (and to the tokenizer's
    own ``model_max_length`` when that is smaller).
    """
    from transformers import AutoConfig, AutoTokenizer

    path = Path(folder).expanduser().resolve()
    _check_folder(path)
    if batch_size < 1 or max_length < 1:
        raise AnnotationError("batch_size and max_length must be at least 1")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise AnnotationError(
            f"{path} is not a sequence-classification model (config.json architectures: "
            f"{archs}); a quality scorer folder must hold a *ForSequenceClassification model, "
            "or pass a module:function scorer instead"
        )
    label_index = None if int(config.num_labels) == 1 else _label_index(config, label, path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < max_length:
        max_length = limit
    identity = {
        "kind": "hf_sequence_classifier",
        "path": str(path),
        "weights_sha256": weights_sha256(path),
        "label": None if label_index is None else config.id2label.get(label_index, label_index),
        "max_length": max_length,
    }
    return HFSequenceClassifier(
        path,
        tokenizer,
        label_index=label_index,
        identity=identity,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        progress=progress,
    )


def _import_callable(spec: str) -> QualityScorer:
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise AnnotationError(f"quality scorer {spec!r} does not import: {e}") from e
    if not callable(obj):
        raise AnnotationError(f"quality scorer {spec!r} is a {type(obj).__name__}, not callable")
    return obj


def load_scorer(spec: str | Path, *, progress: bool = True) -> QualityScorer:
    """A scorer from a spec: a Hugging Face folder, or ``module:function`` (imported)."""
    text = str(spec)
    module, sep, attr = text.partition(":")
    if Path(text).expanduser().exists() or not sep:
        if not Path(text).expanduser().exists():
            raise AnnotationError(
                f"quality scorer {text!r} is neither an existing folder nor module:function"
            )
        return hf_sequence_classifier(text, progress=progress)
    if not module or not attr:
        raise AnnotationError(f"quality scorer {text!r} must read module:function")
    return _import_callable(text)


def scorer_identity(scorer: QualityScorer) -> dict[str, Any]:
    """What annotation records for a scorer: an HF folder's path and weights hash, or the
    callable's ``module.qualname`` (two lambdas of one module look alike: name your scorer)."""
    ident = getattr(scorer, "acodm_identity", None)
    if isinstance(ident, dict):
        return dict(ident)
    target = scorer if hasattr(scorer, "__qualname__") else type(scorer)
    module = getattr(target, "__module__", None) or "?"
    return {"kind": "callable", "name": f"{module}.{target.__qualname__}"}


def describe(scorer: QualityScorer) -> str:
    """One line naming a scorer, for messages."""
    ident = scorer_identity(scorer)
    if ident["kind"] == "callable":
        return str(ident["name"])
    return f"{ident['path']} (weights sha256 {str(ident['weights_sha256'])[:12]})"


def score_texts(scorer: QualityScorer, texts: Sequence[str]) -> np.ndarray:
    """``scorer(texts)`` checked: one finite float per text, else an :class:`AnnotationError`."""
    name = describe(scorer)
    try:
        raw = scorer(texts)
    except AnnotationError:
        raise
    except Exception as e:
        raise AnnotationError(f"quality scorer {name} failed: {e}") from e
    try:
        scores = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise AnnotationError(f"quality scorer {name} did not return numbers: {e}") from e
    if scores.shape != (len(texts),):
        raise AnnotationError(
            f"quality scorer {name} returned shape {scores.shape} for {len(texts)} texts; "
            "it must return one number per text"
        )
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise AnnotationError(
            f"quality scorer {name} returned {bad.size} non-finite scores (first at text "
            f"{int(bad[0])}: {scores[bad[0]]})"
        )
    return scores
