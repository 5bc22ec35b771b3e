"""``TrainConfig.max_epochs``: every mixer held to an epoch cap at the trainer's one boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acodm.config import ConfigError, TrainConfig
from acodm.data.weights import feasible_caps
from acodm.metrics import read_metrics
from acodm.pretrain import pretrain
from acodm.trainer import Trainer
from tests.fixtures import make_position_store

L = 16  # seq_len
SIZES = {"small": 12 * L, "mid": 60 * L, "big": 600 * L}  # training windows: 12, 60, 600

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cap") / "store"
    make_position_store(path, SIZES, val_tokens=4 * L, vocab_size=256)
    return str(path)


def config(store: str, **changes) -> TrainConfig:
    base = TrainConfig(
        store=store,
        model="tiny",
        mixer="uniform",
        seq_len=L,
        micro_batch_size=8,
        steps=40,  # 320 sequences: uniform draws ~107 of each, ~9 epochs of "small"
        warmup_steps=1,
        interval=2,
        eval_every=0,
        eval_windows=1,
        checkpoint_every=0,
        dynamics=False,
        device="cpu",
    )
    return base.replace(**changes)


def run(store: str, out: Path, **changes) -> tuple[dict, list[dict], np.ndarray]:
    seen: list[Trainer] = []
    original = Trainer.close

    def keep(self: Trainer) -> None:  # read the sampler's epochs before the run closes
        seen.append(self)
        original(self)

    Trainer.close = keep  # type: ignore[method-assign]
    try:
        summary = pretrain(config(store, **changes), out, progress=False)
    finally:
        Trainer.close = original  # type: ignore[method-assign]
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    return summary, rows, seen[0].sampler.epochs()


def test_a_capped_static_mixer_stays_within_the_cap(store, tmp_path):
    _, _, free = run(store, tmp_path / "free")
    assert free[0] > 6.0  # uncapped, uniform repeats the small domain ~9 times
    _, rows, epochs = run(store, tmp_path / "capped", max_epochs=2.0)
    # measured from the sampler: the cap holds up to one interval's sampling noise
    # (16 draws per interval, so a few windows of the 12-window domain)
    assert epochs[0] <= 2.0 + 4 / 12
    assert epochs[1] <= 2.0 + 4 / 60
    # the small domain's weight is its cap (2 epochs of its 193 tokens over the 5120 of the
    # run at the start); the big domain takes the rest
    small = [r["mix/weight/small"] for r in rows]
    assert small[0] == pytest.approx(2 * 193 / 5120) and np.mean(small) < 0.1
    assert min(r["mix/weight/big"] for r in rows) > 0.5


def test_every_interval_runs_within_the_live_caps(store):
    tr = Trainer(config(store, max_epochs=2.0))
    tokens = np.array([SIZES[d] + 1 for d in tr.domains], dtype=np.float64)  # + EOS
    uniform = np.full(3, 1 / 3)
    try:
        while not tr.done:
            caps, _ = feasible_caps(tr.epochs(), tokens, tr.remaining_tokens, 2.0)
            report = tr.train_interval(uniform)
            assert np.all(report.weights <= caps + 1e-15)
            np.testing.assert_array_equal(tr.sampler.weights, report.weights / report.weights.sum())
    finally:
        tr.close()


def test_a_cap_that_never_binds_changes_nothing(store, tmp_path):
    summary, rows, epochs = run(store, tmp_path / "default", mixer="natural")
    summary_cap, rows_cap, epochs_cap = run(
        store, tmp_path / "loose", mixer="natural", max_epochs=1000.0
    )
    assert TrainConfig(store=store).max_epochs is None  # off by default
    drop = ("perf/", "seconds")
    assert [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rows] == [
        {k: v for k, v in r.items() if not k.startswith(drop)} for r in rows_cap
    ]
    assert summary["eval/loss_mean"] == summary_cap["eval/loss_mean"]
    np.testing.assert_array_equal(epochs, epochs_cap)


def test_a_budget_beyond_the_cap_raises_it_with_one_warning(store):
    tr = Trainer(config(store, max_epochs=0.05, steps=20))  # 160 windows > 0.05 of 672
    try:
        with pytest.warns(UserWarning, match="raised to") as caught:
            while not tr.done:
                tr.train_interval(np.full(3, 1 / 3))
        assert len([w for w in caught if "raised to" in str(w.message)]) == 1
    finally:
        tr.close()


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), True])
def test_a_bad_max_epochs_is_a_config_error(store, bad):
    with pytest.raises(ConfigError, match="max_epochs"):
        config(store, max_epochs=bad)
