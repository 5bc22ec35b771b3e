"""The golden trace (tests/golden.py): refactors must reproduce the stored numbers bit for bit.

Exact where the trace was recorded with the same torch, numpy and CPU kernel family
(``torch.backends.cpu.get_cpu_capability()``); elsewhere float kernels may round differently,
so there the comparison allows a relative 1e-4 (still far below any change of behaviour) and
says so. A change that alters numbers on purpose regenerates the file in the same commit
(``python -m tests.golden --write``) and says why.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import pytest

from tests.golden import GOLDEN, machine, trace


def first_difference(want: Any, got: Any, rtol: float, path: str = "") -> str | None:
    """The path of the first entry that differs (floats: beyond ``rtol``; NaN equals NaN)."""
    if isinstance(want, dict) and isinstance(got, dict):
        if sorted(want) != sorted(got):
            return f"{path}: keys {sorted(want)} != {sorted(got)}"
        for key in sorted(want):
            found = first_difference(want[key], got[key], rtol, f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return f"{path}: length {len(want)} != {len(got)}"
        for i, (w, g) in enumerate(zip(want, got, strict=True)):
            found = first_difference(w, g, rtol, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(want, float) and isinstance(got, float):
        if math.isnan(want) and math.isnan(got):
            return None
        close = want == got if rtol == 0 else math.isclose(want, got, rel_tol=rtol, abs_tol=1e-9)
        return None if close else f"{path}: {want!r} != {got!r}"
    return None if want == got and type(want) is type(got) else f"{path}: {want!r} != {got!r}"


@pytest.mark.slow  # about 10 s: a trainer, an env episode, a ddpg run, a console run
def test_the_golden_trace_is_reproduced():
    stored = json.loads(GOLDEN.read_text(encoding="utf-8"))
    here = machine()
    exact = all(stored["machine"][k] == here[k] for k in ("torch", "cpu_capability", "numpy"))
    if not exact:
        warnings.warn(
            f"golden trace recorded on {stored['machine']}, running on {here}: comparing "
            "floats to a relative 1e-4 instead of exactly",
            stacklevel=1,
        )
    diff = first_difference(
        stored["trace"], json.loads(json.dumps(trace())), 0.0 if exact else 1e-4
    )
    assert diff is None, (
        f"the golden trace changed at {diff}; if on purpose, regenerate it "
        "(python -m tests.golden --write) and say why in the commit"
    )


def test_first_difference_finds_what_changed():
    a = {"x": [1.0, 2.0, float("nan")], "y": {"z": 3}}
    assert first_difference(a, json.loads(json.dumps(a)), 0.0) is None
    assert first_difference(a, {"x": [1.0, 2.0 + 1e-12, float("nan")], "y": {"z": 3}}, 0.0) == (
        "/x[1]: 2.0 != 2.000000000001"
    )
    assert first_difference(a, {"x": [1.0, 2.0 + 1e-12, float("nan")], "y": {"z": 3}}, 1e-4) is None
    assert "keys" in str(first_difference(a, {"x": a["x"]}, 0.0))
    assert first_difference({"n": 1}, {"n": 1.0}, 0.0) == "/n: 1 != 1.0"
