"""The golden trace (tests/golden.py): refactors must reproduce the stored numbers bit for bit.

Exact against the trace recorded with the same torch, numpy and CPU kernel family
(``torch.backends.cpu.get_cpu_capability()``; one stored file per family). Where none is
stored, float kernels round differently, so the comparison allows the measured cross-kernel
spread (:data:`CROSS_KERNEL_RTOL`, far below any change of behaviour) and says so. A change
that alters numbers on purpose regenerates this machine's file in the same commit
(``python -m tests.golden --write``), deletes the other families' files and says why.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.golden import golden_path, machine, stored_traces, trace


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


#: How far the same code's trace moves between CPU kernel families, measured between the AVX2
#: and AVX512 traces (torch 2.13.0+cpu, numpy 2.4.6): at most a relative 6e-4 (the online
#: DDPG mixer's alignment gamma after three intervals of critic updates; 4e-4 in the console's
#: gamma, 3e-4 in the env's observation); 1e-3 bounds that. Used only where no trace of this
#: machine's kernel family is stored; where one is, the comparison is exact.
CROSS_KERNEL_RTOL = 1e-3


def _same_kernels(recorded: dict[str, str], here: dict[str, str]) -> bool:
    return all(recorded[k] == here[k] for k in ("torch", "cpu_capability", "numpy"))


def _stored() -> list[tuple[Path, dict[str, Any]]]:
    found = [(p, json.loads(p.read_text(encoding="utf-8"))) for p in stored_traces()]
    assert found, "no stored golden trace: record one with python -m tests.golden --write"
    return found


@pytest.mark.slow  # about 10 s: a trainer, an env episode, a ddpg run, a console run
def test_the_golden_trace_is_reproduced():
    here = machine()
    stored = _stored()
    got = json.loads(json.dumps(trace()))
    same = [data for _, data in stored if _same_kernels(data["machine"], here)]
    if same:
        diff = first_difference(same[0]["trace"], got, 0.0)
    else:
        warnings.warn(
            f"no golden trace recorded on {here} (stored: "
            f"{[data['machine'] for _, data in stored]}): comparing floats to a relative "
            f"{CROSS_KERNEL_RTOL:g} instead of exactly; record this machine's with "
            "python -m tests.golden --write",
            stacklevel=1,
        )
        diffs = [first_difference(data["trace"], got, CROSS_KERNEL_RTOL) for _, data in stored]
        diff = None if None in diffs else diffs[0]
    assert diff is None, (
        f"the golden trace changed at {diff}; if on purpose, regenerate it "
        "(python -m tests.golden --write), delete the other kernel families' files and say "
        "why in the commit"
    )


def test_stored_traces_are_named_by_their_kernels_and_agree_across_kernels():
    stored = _stored()
    for path, data in stored:
        assert path.name == golden_path(data["machine"]["cpu_capability"]).name, path
    for (pa, a), (pb, b) in itertools.combinations(stored, 2):
        diff = first_difference(a["trace"], b["trace"], CROSS_KERNEL_RTOL)
        assert diff is None, (
            f"{pa.name} and {pb.name} differ beyond the cross-kernel tolerance at {diff}: one "
            "of them is stale (regenerate it on its machine or delete it)"
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
