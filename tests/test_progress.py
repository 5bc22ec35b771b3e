"""Progress output: redrawn bars on a terminal, whole lines at a steady pace in a log."""

from __future__ import annotations

import io

import pytest

from acodm.errors import AcodmError
from acodm.progress import log_seconds, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_few_whole_lines(monkeypatch):
    monkeypatch.setenv("ACODM_PROGRESS_SECONDS", "1000")
    log = io.StringIO()
    bar = progress_bar(total=5000, desc="tokenize", unit="step", file=log)
    for _ in range(5000):
        bar.update(1)
    bar.set_postfix(loss="1.234")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 2, lines  # the start and the end, nothing in between
    assert lines[0].startswith("tokenize:   0%") and "5000/5000" in lines[1]


def test_a_log_line_every_interval(monkeypatch):
    monkeypatch.setenv("ACODM_PROGRESS_SECONDS", "0.001")
    log = io.StringIO()
    clock = iter(range(1, 10_000))
    monkeypatch.setattr("tqdm.std.time", lambda: float(next(clock)))  # one "second" per call
    for _ in progress_bar(range(20), desc="x", file=log):
        pass
    lines = log.getvalue().splitlines()
    assert 20 <= len(lines) <= 22 and "\r" not in log.getvalue()
    assert len(set(lines)) == len(lines)  # the last state is not printed twice


def test_a_terminal_gets_the_redrawn_bar():
    term = _Terminal()
    bar = progress_bar(total=3, desc="t", file=term)
    bar.update(3)
    bar.close()
    assert "\r" in term.getvalue()


def test_disabled_and_bad_settings(monkeypatch):
    log = io.StringIO()
    bar = progress_bar(total=3, file=log, disable=True)
    bar.update(3)
    bar.close()
    assert log.getvalue() == ""
    monkeypatch.setenv("ACODM_PROGRESS_SECONDS", "soon")
    with pytest.raises(AcodmError, match="ACODM_PROGRESS_SECONDS"):
        log_seconds()
