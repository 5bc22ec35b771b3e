"""The metrics logger: JSONL lines, non-finite values, torn lines, and the wandb path."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest

from acodm.errors import AcodmError
from acodm.metrics import MetricsLogger, read_metrics


def test_jsonl_lines_and_non_finite_values(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsLogger(path) as log:
        log.log({"train/loss": np.float64(2.5), "eval/ppl": math.inf, "x": float("nan")}, step=3)
    rec = json.loads(path.read_text())
    assert rec == {"step": 3, "train/loss": 2.5, "eval/ppl": None, "x": None}
    with open(path, "a") as f:
        f.write('{"step": 4, "torn')  # a crash in the middle of a line
    assert read_metrics(path) == [rec]


class FakeWandbRun:
    """Stands in for a wandb run (the real package is optional and not installed in CI)."""

    def __init__(self) -> None:
        self.logged: list[tuple[dict, int]] = []
        self.finished = False

    def log(self, metrics: dict, step: int) -> None:
        self.logged.append((metrics, step))

    def finish(self) -> None:
        self.finished = True


def test_wandb_is_imported_lazily_and_offline_by_default(tmp_path, monkeypatch):
    run = FakeWandbRun()
    calls = {}

    def init(**kw):
        calls.update(kw)
        return run

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    import os

    log = MetricsLogger(tmp_path / "m.jsonl", wandb=True, run_name="r1", config={"lr": 1.0})
    log.log({"train/loss": 1.0}, step=7)
    log.close()
    assert os.environ["WANDB_MODE"] == "offline"
    assert calls["name"] == "r1" and calls["config"] == {"lr": 1.0}
    assert run.logged == [({"train/loss": 1.0}, 7)] and run.finished


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.raises(AcodmError, match=r"pip install 'acodm\[wandb\]'"):
        MetricsLogger(tmp_path / "m.jsonl", wandb=True)
