"""DoReMi: the update rule by hand, state and resume, reference-file errors, the CLI chain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from acodm.checkpoint import latest_checkpoint, load_checkpoint
from acodm.cli import main
from acodm.config import debug_cpu
from acodm.data.store import TokenStore
from acodm.errors import AcodmError
from acodm.io import read_json
from acodm.mixers import DoReMiMixer, MixerError, make_mixer
from acodm.mixers.doremi import (
    average_weights_of_run,
    doremi_excess,
    doremi_update,
    read_reference,
    reference_losses,
    sample_windows,
)
from acodm.mixers.static import read_weight_file
from acodm.models import build_model
from acodm.pretrain import pretrain
from acodm.trainer import Trainer
from tests.fixtures import comparable_metrics, interrupted_then_resumed, make_text_store
from tests.mixers.util import feedback, make_ctx, write_ref


def doremi(tmp_path, losses=(2.0, 3.0), **kw) -> DoReMiMixer:
    names = [f"d{i}" for i in range(len(losses))]
    m = DoReMiMixer(write_ref(tmp_path / "ref.json", dict(zip(names, losses, strict=True))), **kw)
    m.setup(make_ctx(tokens=[100] * len(losses), domains=names))
    return m


# -- the update rule --------------------------------------------------------------------------
def test_update_rule_on_a_hand_computed_example(tmp_path):
    m = doremi(tmp_path, losses=(2.0, 3.0), eta=1.0, smooth=0.1)
    np.testing.assert_array_equal(m.weights(), [0.5, 0.5])  # alpha_0 uniform
    # step 1: excess (ln 3, max(2.5 - 3, 0) = 0); softmax(log .5 + (ln 3, 0)) = (3/4, 1/4)
    m.update(feedback(1, [2.0 + math.log(3.0), 2.5]))
    a1 = 0.9 * np.array([0.75, 0.25]) + 0.1 / 2  # smoothing: (0.725, 0.275)
    np.testing.assert_allclose(m.weights(), a1, rtol=1e-14)
    np.testing.assert_allclose(m.excess, [math.log(3.0), 0.0], rtol=1e-14)
    # step 2: d0 not sampled keeps excess ln 3; d1 has excess ln 2
    m.update(feedback(2, [float("nan"), 3.0 + math.log(2.0)], counts=[0, 4]))
    a2 = 0.9 * np.array([0.725 * 3, 0.275 * 2]) / (0.725 * 3 + 0.275 * 2) + 0.05
    np.testing.assert_allclose(m.weights(), a2, rtol=1e-14)
    # Algorithm 1's average leaves alpha_0 out (the released code's is (alpha_0 + a1 + a2) / 3)
    np.testing.assert_allclose(m.average_weights(), (a1 + a2) / 2, rtol=1e-14)


def test_paper_defaults_and_spec_round_trip(tmp_path):
    ref = write_ref(tmp_path / "ref.json", {"a": 1.0, "b": 2.0, "c": 3.0})
    m = make_mixer(f"doremi:ref={ref}")
    assert isinstance(m, DoReMiMixer) and (m.eta, m.smooth) == (1.0, 1e-3)
    assert m.describe() == f"doremi:ref={ref},eta=1,smooth=0.001"
    assert make_mixer(m.describe()).describe() == m.describe()
    again = make_mixer(f"doremi:smooth=0.01,ref={ref},eta=0.5")
    assert again.describe() == f"doremi:ref={ref},eta=0.5,smooth=0.01"
    m.setup(make_ctx(domains=("c", "a", "b")))  # file order does not matter, names do
    np.testing.assert_array_equal(m.weights(), np.full(3, 1 / 3))


def test_excess_is_clipped_at_zero_and_unsampled_domains_keep_their_last():
    ref = np.array([2.0, 2.0, 2.0, 2.0])
    last = np.array([0.5, 0.5, 0.5, 0.0])
    loss = np.array([2.75, 1.0, np.nan, 9.0])
    counts = np.array([3.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(doremi_excess(loss, counts, ref, last), [0.75, 0.0, 0.5, 0.0])
    assert last.tolist() == [0.5, 0.5, 0.5, 0.0]  # not modified in place


def test_a_domain_below_its_reference_loss_gives_no_push(tmp_path):
    m = doremi(tmp_path, losses=(2.0, 3.0, 4.0))
    for step in range(1, 6):
        m.update(feedback(step, [1.0, 2.0, 3.0]))  # every domain below its reference
    np.testing.assert_allclose(m.weights(), np.full(3, 1 / 3), rtol=1e-14)
    np.testing.assert_array_equal(m.excess, [0.0, 0.0, 0.0])


def test_smoothing_floors_every_weight_at_c_over_k_and_large_steps_do_not_overflow():
    alpha = np.full(4, 0.25)
    excess = np.array([1e4, 0.0, 0.0, 0.0])  # exp(1e4) would overflow without the shift
    w = doremi_update(alpha, excess, eta=1.0, smooth=0.2)
    np.testing.assert_allclose(w, [0.8 + 0.05, 0.05, 0.05, 0.05], rtol=1e-14)
    assert w.sum() == pytest.approx(1.0, abs=1e-15)
    # c = 0: the plain exponentiated-gradient step
    w0 = doremi_update(np.array([0.2, 0.8]), np.array([math.log(4.0), 0.0]), eta=1.0, smooth=0.0)
    np.testing.assert_allclose(w0, [0.5, 0.5], rtol=1e-14)
    # eta scales the step: eta = 2 on excess ln 2 is excess ln 4 at eta = 1
    w2 = doremi_update(np.array([0.2, 0.8]), np.array([math.log(2.0), 0.0]), eta=2.0, smooth=0.0)
    np.testing.assert_allclose(w2, w0, rtol=1e-14)


def test_average_weights_each_interval_by_its_steps(tmp_path):
    m = doremi(tmp_path, losses=(2.0, 3.0), smooth=0.0)
    seen = []
    for step, loss in ((3, [2.0 + math.log(3.0), 3.0]), (5, [2.0, 3.0 + math.log(5.0)])):
        m.update(feedback(step, loss))
        seen.append(m.weights())
    np.testing.assert_allclose(m.average_weights(), (3 * seen[0] + 2 * seen[1]) / 5, rtol=1e-14)
    fresh = doremi(tmp_path, losses=(2.0, 3.0))
    np.testing.assert_array_equal(fresh.average_weights(), [0.5, 0.5])  # before any update


def test_state_round_trip_through_json_continues_identically(tmp_path):
    a = doremi(tmp_path, losses=(2.0, 3.0, 1.0))
    rng = np.random.default_rng(0)
    for step in range(1, 4):
        a.update(feedback(step, rng.uniform(0, 5, 3), counts=rng.integers(0, 3, 3)))
    state = json.loads(json.dumps(a.state_dict()))
    b = doremi(tmp_path, losses=(2.0, 3.0, 1.0))
    b.load_state_dict(state)
    for step in range(4, 7):
        fb = feedback(step, rng.uniform(0, 5, 3))
        a.update(fb)
        b.update(fb)
        np.testing.assert_array_equal(a.weights(), b.weights())
    assert a.state_dict() == b.state_dict()
    assert state["state"]["updates"] == 3 and state["state"]["steps"] == 3


def test_state_from_another_reference_file_is_refused(tmp_path):
    a = doremi(tmp_path, losses=(2.0, 3.0))
    a.update(feedback(1, [4.0, 4.0]))
    state = a.state_dict()
    b = doremi(tmp_path, losses=(2.0, 3.5))  # the file was rewritten
    with pytest.raises(MixerError, match="changed since the checkpoint"):
        b.load_state_dict(state)
    state["state"]["alpha"] = [0.5]
    with pytest.raises(MixerError, match="'alpha' must be 2 finite numbers"):
        doremi(tmp_path, losses=(2.0, 3.0)).load_state_dict(state)


# -- errors -----------------------------------------------------------------------------------
def test_domain_mismatch_names_the_domains(tmp_path):
    m = DoReMiMixer(write_ref(tmp_path / "ref.json", {"code": 1.0, "wiki": 2.0, "old": 3.0}))
    with pytest.raises(MixerError) as e:
        m.setup(make_ctx(domains=("code", "wiki", "math")))
    assert "unknown domains ['old']" in str(e.value) and "missing domains ['math']" in str(e.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("{not json", "not readable JSON"),
        ('{"code": 1.0}', "not a DoReMi reference file"),
        ('{"format": "acodm-doremi-reference", "version": 9, "losses": {"a": 1}}', "version 9"),
        ('{"format": "acodm-doremi-reference", "version": 1, "losses": {}}', "non-empty"),
        ('{"format": "acodm-doremi-reference", "version": 1, "losses": [1]}', "non-empty"),
        ('{"format": "acodm-doremi-reference", "version": 1, "losses": {"a": -1}}', ">= 0"),
        ('{"format": "acodm-doremi-reference", "version": 1, "losses": {"a": "1"}}', ">= 0"),
        ('{"format": "acodm-doremi-reference", "version": 1, "losses": {"a": true}}', ">= 0"),
        ('{"format": "acodm-doremi-reference", "version": 1, "losses": {"a": NaN}}', ">= 0"),
    ],
)
def test_bad_reference_files_are_clear_errors(tmp_path, content, match):
    path = tmp_path / "ref.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MixerError, match=match):
        read_reference(path)
    with pytest.raises(MixerError, match=r"bad mixer spec 'doremi:ref="):
        make_mixer(f"doremi:ref={path}")


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        ("", "needs an argument"),
        ("eta=1", "needs ref=PATH"),
        ("ref=R,step=2", "unknown option 'step'"),
        ("ref=R,eta=0", "eta must be > 0"),
        ("ref=R,smooth=2", "smooth must be <= 1"),
        ("ref=R,smooth=-0.1", r"smooth must be in \[0, 1\]"),
        ("ref=R,eta=x", "must be a number"),
    ],
)
def test_bad_specs(tmp_path, arg, match):
    ref = write_ref(tmp_path / "R", {"a": 1.0})
    with pytest.raises(MixerError, match=match):
        make_mixer(f"doremi:{arg}".replace("ref=R", f"ref={ref}") if arg else "doremi")


def test_sample_windows_are_evenly_spaced_and_distinct():
    assert sample_windows(10, 4).tolist() == [0, 2, 5, 7]
    assert sample_windows(3, 64).tolist() == [0, 1, 2]
    idx = sample_windows(65, 64)
    assert np.all(np.diff(idx) >= 1) and idx[-1] < 65


# -- on the tiny real setup -------------------------------------------------------------------
@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("doremi") / "store"
    make_text_store(path)
    return str(path)


@pytest.fixture(scope="module")
def ref_run(store_path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("doremi-ref") / "ref"
    pretrain(debug_cpu(store_path).replace(steps=6, eval_every=0), run, progress=False)
    return run


def test_reference_losses_file_matches_the_models_own_loss(store_path, ref_run, tmp_path):
    out = tmp_path / "ref.json"
    res = reference_losses(ref_run, out, windows=5)
    assert read_json(out) == res
    store = TokenStore(store_path)
    assert res["domains"] == store.domains and list(res["losses"]) == store.domains
    assert set(res["windows"].values()) == {5}
    run = res["reference_run"]
    assert run["step"] == 6 and run["finished"] and len(run["config_sha256"]) == 64
    assert run["mixer"] == "uniform" and res["seq_len"] == 64
    assert res["store"]["corpus_hash"] == store.corpus_hash
    assert read_reference(out) == res["losses"]
    # independently: the checkpoint's weights, HF's own loss on the same 5 windows
    model = build_model("tiny", store.vocab_size, max_seq_len=64)
    model.load_state_dict(load_checkpoint(latest_checkpoint(ref_run)).model)
    model.eval()
    d = store.domains[1]
    arr = store.tokens(d, "train")
    idx = sample_windows((arr.size - 1) // 64, 5)
    rows = torch.from_numpy(np.stack([arr[w * 64 : w * 64 + 65] for w in idx]).astype(np.int64))
    with torch.no_grad():
        want = model(input_ids=rows, labels=rows).loss.item()  # token mean = mean of seq means
    assert res["losses"][d] == pytest.approx(want, rel=1e-5)


def test_resume_reproduces_the_uninterrupted_proxy_run_exactly(
    store_path, ref_run, tmp_path, monkeypatch
):
    ref = reference_losses(ref_run, tmp_path / "ref.json", windows=4)
    config = debug_cpu(store_path).replace(
        steps=8, checkpoint_every=4, eval_every=4, mixer=f"doremi:ref={tmp_path / 'ref.json'}"
    )
    assert ref["losses"]
    interrupted_then_resumed(config, tmp_path / "full", tmp_path / "cut", 6, monkeypatch)
    assert comparable_metrics(tmp_path / "cut") == comparable_metrics(tmp_path / "full")
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut"))
    assert a.state["mixer"] == b.state["mixer"]
    assert a.state["mixer"]["state"]["updates"] == 8
    assert average_weights_of_run(tmp_path / "full") == average_weights_of_run(tmp_path / "cut")


def test_cli_chain_reference_proxy_export_target(store_path, ref_run, tmp_path, capsys):
    ref, weights = tmp_path / "ref.json", tmp_path / "weights.json"
    assert main(["doremi", "reference-losses", "--run", str(ref_run), "--out", str(ref),
                 "--windows", "8"]) == 0  # fmt: skip
    assert "reference loss" in capsys.readouterr().out
    proxy = tmp_path / "proxy"
    common = ["--preset", "debug_cpu", "--store", store_path, "--steps", "6", "--quiet"]
    assert main(["pretrain", "--out", str(proxy), "--mixer", f"doremi:ref={ref}", *common]) == 0
    assert main(["doremi", "export", "--run", str(proxy), "--out", str(weights)]) == 0
    assert f"file:{weights}" in capsys.readouterr().out
    w = read_weight_file(weights)
    state = read_json(latest_checkpoint(proxy) / "state.json")["mixer"]["state"]
    expected = np.asarray(state["alpha_sum"]) / state["steps"]
    assert list(w) == read_json(proxy / "config.json")["store"]["domains"]
    np.testing.assert_allclose(list(w.values()), expected / expected.sum(), rtol=1e-12)
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)
    # the weights moved: the proxy's training loss is above the trained reference's early on
    assert not np.allclose(list(w.values()), 1 / len(w))
    target = tmp_path / "target"
    common[5] = "2"  # --steps 2
    assert main(["pretrain", "--out", str(target), "--mixer", f"file:{weights}", *common]) == 0
    assert read_json(target / "summary.json")["mixer"] == f"file:{weights}"


def test_export_refuses_other_mixers_and_unfinished_runs(
    store_path, ref_run, tmp_path, capsys, monkeypatch
):
    with pytest.raises(AcodmError, match="not trained with the doremi mixer"):
        average_weights_of_run(ref_run)
    assert main(["doremi", "export", "--run", str(ref_run), "--out", str(tmp_path / "w")]) == 2
    assert "doremi mixer" in capsys.readouterr().err
    ref = tmp_path / "ref.json"
    reference_losses(ref_run, ref, windows=2)
    proxy = tmp_path / "proxy"
    config = debug_cpu(store_path).replace(steps=6, checkpoint_every=2, mixer=f"doremi:ref={ref}")

    real = Trainer.train_interval

    def stop_at_4(self, weights, steps=None):
        if self.step == 4:
            raise RuntimeError("stopped")
        return real(self, weights, steps)

    monkeypatch.setattr(Trainer, "train_interval", stop_at_4)
    with pytest.raises(RuntimeError, match="stopped"):
        pretrain(config, proxy, progress=False)
    with pytest.raises(AcodmError, match=r"not finished \(last checkpoint at step 4 of 6\)"):
        average_weights_of_run(proxy)
    assert len(average_weights_of_run(proxy, partial=True)) == 3
    with pytest.raises(AcodmError, match="no checkpoint"):
        average_weights_of_run(tmp_path)
