"""Progress bars that suit both a terminal and a log file.

On a terminal :func:`progress_bar` is tqdm's usual bar, redrawn in place. When stderr is not
a terminal (a job log, ``nohup``, CI), a redrawn bar writes a carriage return and a new
state many times a second, which a log shows as thousands of fragments. There the bar
prints one full line every ``ACODM_PROGRESS_SECONDS`` seconds (default 30), plus one at the
start and one at the end.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm as _plain_tqdm

from acodm.errors import AcodmError

#: Seconds between lines in a log (``ACODM_PROGRESS_SECONDS`` overrides it).
LOG_SECONDS = 30.0


class _LogLines(_plain_tqdm):
    """tqdm that writes whole lines (no ``\\r``), at most one per ``mininterval``."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing its line before it closes: a log has nothing to clear
            return False
        self.fp.write((self.__str__() if msg is None else msg) + "\n")
        self.fp.flush()
        return True

    # A new postfix or description shows in the next timed line, not in a line of its own.
    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=False)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)

    def close(self) -> None:
        if not self.disable and self.n != self.last_print_n:
            self.display()  # the final state, once
        self.leave = False  # tqdm would otherwise print the last line again
        super().close()


def log_seconds() -> float:
    """The interval between progress lines in a log, from ``ACODM_PROGRESS_SECONDS``."""
    text = os.environ.get("ACODM_PROGRESS_SECONDS")
    if text is None:
        return LOG_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise AcodmError(f"ACODM_PROGRESS_SECONDS must be a number of seconds > 0, got {text!r}")
    return value


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar (same arguments) that prints plain lines when stderr is not a terminal."""
    if kwargs.get("disable"):
        return _plain_tqdm(iterable, **kwargs)
    stream = kwargs.get("file") or sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, **kwargs)
    seconds = log_seconds()
    kwargs.pop("dynamic_ncols", None)  # a log has no width to follow
    return _LogLines(iterable, mininterval=seconds, maxinterval=seconds, ascii=True, **kwargs)
