"""experiments/bench/reward_validity.py: its statistics by hand and a toy end-to-end run."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import make_text_store

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rv():
    sys.path.insert(0, str(BENCH))  # the bench scripts import their `common` module
    try:
        yield importlib.import_module("reward_validity")
    finally:
        sys.path.remove(str(BENCH))


def test_ranks_average_ties_and_spearman(rv) -> None:
    assert rv.ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [2.5, 0.0, 2.5, 1.0]
    assert rv.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert rv.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_partial_spearman_by_hand(rv) -> None:
    x, y, z = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [1, 3, 2, 5, 4]
    rxy, rxz, ryz = 0.8, 0.8, 0.3  # Spearman of each pair (distinct ranks: 1 - 6 sum d^2 / 120)
    assert rv.spearman(x, y) == pytest.approx(rxy)
    assert rv.spearman(x, z) == pytest.approx(rxz)
    assert rv.spearman(y, z) == pytest.approx(ryz)
    want = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert rv.partial_spearman(x, y, z) == pytest.approx(want)
    assert math.isnan(rv.partial_spearman(z, y, z))  # a variable given itself


def test_top_pick_ratio_and_entropy(rv) -> None:
    assert rv.top_pick_ratio([0.1, 0.9, 0.5], [0.02, 0.01, 0.04]) == pytest.approx(0.25)
    assert rv.top_pick_ratio([0.1, 0.9], [0.03, 0.05]) == 1.0  # it picked the best
    assert rv.entropy(np.array([0.5, 0.5, 0.0])) == pytest.approx(math.log(2))


def test_toy_run_end_to_end(rv, tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    make_text_store(store)
    out = tmp_path / "rv.json"
    rc = rv.main(
        [
            "--store", str(store), "--preset", "debug_cpu", "--interval", "2",
            "--points", "2,4,6", "--mixtures", "16", "--val-windows", "4",
            "--steps", "12", "--device", "cpu", "--out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["points"] == [2, 4, 6] and res["default"] == "probe"
    assert set(res["rewards"]) == {"alignment", "probe", "entropy"}
    for rows in res["rewards"].values():
        assert set(rows) == {"spearman", "partial_spearman", "top_pick_ratio"}
        assert all(len(v) == 3 for v in rows.values())
        assert all(v is None or -1 - 1e-9 <= v <= 1 + 1e-9 for v in rows["spearman"])
    assert res["rewards"]["entropy"]["partial_spearman"] == [None] * 3
    assert len(res["mixtures"]) == 16 and res["mixtures"][:4] == [
        "uniform", "natural", "unimax:4", "temperature:0.5"
    ]  # fmt: skip
    assert res["exact_restore"] is True  # CPU: the same mixture twice, identical losses
    assert 0 < res["probe_cost"]["ratio"] < 10
    assert res["config"]["val_windows_per_domain"] == 4
    # the branches differ: the measurement can tell mixtures apart
    reals = [b["real"] for b in res["per_point"][0]["branches"]]
    assert len(set(reals)) > 1
    assert "probe cost" in capsys.readouterr().out
