"""The multi-seed quickstart (``acodm quickstart --seeds``) on a tiny preset and store."""

from __future__ import annotations

import json

import pytest

from acodm.cli import main
from acodm.config import TrainConfig
from acodm.policies import quickstart as qs
from tests.fixtures import make_text_store


def _micro_proxy(store: str) -> TrainConfig:
    return TrainConfig(
        store=store, model="tiny", seq_len=64, micro_batch_size=4, steps=12, interval=3,
        warmup_steps=2, eval_every=0, eval_windows=1, device="cpu",
    )  # fmt: skip


def _micro_target(store: str) -> TrainConfig:
    return _micro_proxy(store).replace(steps=9, eval_every=3)


MICRO = qs.QuickstartPreset(vocab_size=512, proxy=_micro_proxy, target=_micro_target)


@pytest.fixture
def micro(monkeypatch, tmp_path):
    monkeypatch.setitem(qs.PRESETS, "micro", MICRO)
    out = tmp_path / "study"
    make_text_store(out / "store")  # the study reuses a finished store: no corpus build
    return out


def test_study_runs_every_seed_on_one_store_and_aggregates(micro, monkeypatch):
    result = qs.study(micro, preset="micro", seeds=[0, 1], baselines=("uniform",), progress=False)
    assert result["seeds"] == [0, 1] and set(result["runs"]) == {"policy", "uniform"}
    finals = [
        json.loads((micro / f"seed-{s}" / "results.json").read_text())["comparison"]["policy"][
            "final_ppl_mean"
        ]
        for s in (0, 1)
    ]
    assert finals[0] != finals[1]  # the seed changes the runs
    assert result["runs"]["policy"]["final_ppl_mean"]["mean"] == pytest.approx(sum(finals) / 2)
    assert not (micro / "seed-0" / "store").exists()  # one shared store
    assert "policy beat uniform on" in (micro / "study.txt").read_text()
    # a finished study is reused: nothing is trained again
    monkeypatch.setattr(qs, "pretrain", lambda *a, **k: pytest.fail("re-trained a finished run"))
    assert qs.study(micro, preset="micro", seeds=[0, 1], baselines=("uniform",), progress=False)


def test_cli_seeds_are_checked(capsys):
    assert main(["quickstart", "--seeds", "0,x", "--quiet"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err


def test_a_store_of_other_prepare_settings_is_refused(micro):
    """The cpu quickstart's store is data-constrained; an older quickstart's is not reused."""
    from acodm.errors import AcodmError

    other = qs.QuickstartPreset(
        vocab_size=512,
        proxy=_micro_proxy,
        target=_micro_target,
        doc_chars=3000,
        max_train_tokens="geometric:6000:789000",
    )
    with pytest.raises(AcodmError, match="prepared with"):
        qs._data(micro, other, progress=False)
    assert qs._data(micro, MICRO, progress=False) == micro / "store"
    cpu = qs.PRESETS["cpu"].store_settings()
    assert cpu["doc_chars"] == 3000 and cpu["max_train_tokens"] == "geometric:6000:789000"
