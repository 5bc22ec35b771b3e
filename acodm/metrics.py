"""One small logging interface: JSONL always, wandb when asked.

Metric names are namespaced (STYLE.md): ``mix/weight/<domain>``, ``train/loss/<domain>``,
``eval/ppl/<domain>``, ``rl/reward``, ``perf/tok_s``. wandb is imported lazily and runs in
offline mode unless the user sets ``WANDB_MODE`` themselves.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from acodm.errors import AcodmError


def _jsonable(value: Any) -> Any:
    """Floats stay floats (NaN/inf become null, which JSON can hold); numpy/torch scalars unwrap."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Append metrics to ``metrics.jsonl`` (one JSON object per line) and optionally wandb.

    Lines are flushed as written so that a crashed run keeps everything logged before it.
    A resumed run appends to the same file; each line carries its ``step``.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        wandb: bool = False,
        project: str = "acodm",
        run_name: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._wandb: Any = None
        if wandb:
            self._wandb = _start_wandb(
                project, run_name, config or {}, self.path.parent if self.path else None
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=int(step))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_wandb(
    project: str, name: str | None, config: dict[str, Any], folder: Path | None
) -> Any:
    try:
        import wandb
    except ImportError as e:
        raise AcodmError(
            "--wandb was given but wandb is not installed: pip install 'acodm[wandb]'"
        ) from e
    os.environ.setdefault("WANDB_MODE", "offline")
    return wandb.init(
        project=project,
        name=name,
        config=config,
        dir=str(folder) if folder else None,
        reinit="finish_previous",
    )


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
