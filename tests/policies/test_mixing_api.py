"""The framework-agnostic mixing API (issue 13): per-domain numbers in, weights out, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from acodm.data.sampler import DomainSampler
from acodm.data.store import TokenStore
from acodm.dynamics.interval import LossTracker
from acodm.models import build_model
from acodm.policies import (
    MixingController,
    NumpyPolicy,
    PolicyError,
    PolicyMixer,
    interval_dynamics,
    load_numpy_policies,
)
from acodm.policies.export import load_policies, load_policy
from acodm.policies.transfer import DynamicsProbe
from tests.fixtures import make_text_store
from tests.policies.test_transfer import _export_policy, seq_losses

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "gymnasium", "stable_baselines3", "transformers", "acodm.trainer", "acodm.envs")


@pytest.fixture(scope="module")
def text_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mixing") / "store"
    make_text_store(path)
    return path


@pytest.fixture(scope="module")
def policies(text_store, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("policies")
    return [_export_policy(text_store, root / f"p{s}", seed=s) for s in (1, 2)]


def _mixer(store: TokenStore, policy: str | Path, backend: str, total: int) -> PolicyMixer:
    return PolicyMixer.load(
        policy,
        domains=store.domains,
        domain_tokens=[store.num_tokens(d, "train") for d in store.domains],
        total_steps=total,
        tokens_per_step=4 * 16,
        backend=backend,
    )


def test_importing_the_api_loads_no_torch_gymnasium_or_trainer(policies, text_store):
    # a fresh interpreter: load an export with the numpy backend and decide twice
    code = f"""
import json, sys
import numpy as np
from acodm.policies import PolicyMixer
from acodm.data.store import TokenStore
loaded_at_import = sorted(m for m in {HEAVY!r} if m in sys.modules)
store = TokenStore({str(text_store)!r})
m = PolicyMixer.load({str(policies[0])!r}, domains=store.domains,
    domain_tokens=[store.num_tokens(d, "train") for d in store.domains],
    total_steps=8, tokens_per_step=64)
k = len(store.domains)
w = m.update(2, np.arange(1.0, k + 1), np.ones(k), epochs=np.zeros(k), weight_norm=np.ones(3),
             weight_distance=np.zeros(3), gram=np.eye(k))
print(json.dumps({{"import": loaded_at_import,
                   "after": sorted(x for x in {HEAVY!r} if x in sys.modules),
                   "sum": float(w.sum())}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["import"] == [] and got["after"] == []
    assert got["sum"] == pytest.approx(1.0)


def test_numpy_actor_matches_the_torch_actor(policies):
    obs = np.random.default_rng(0).normal(size=(64, load_policy(policies[0]).obs_dim))
    for paths in ([policies[0]], policies):  # one actor, and an ensemble of two
        torch_p = load_policies(paths)
        np_p = load_numpy_policies(paths)
        assert isinstance(np_p, NumpyPolicy) and np_p.spec == torch_p.spec
        a_t, a_n = torch_p.act(obs), np_p.act(obs)
        assert a_n.dtype == np.float32 and a_n.shape == a_t.shape
        np.testing.assert_allclose(a_n, a_t, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np_p.weights(obs[3]), torch_p.weights(obs[3]), atol=1e-6)
    with pytest.raises(PolicyError, match="expects"):
        np_p.act(np.zeros(3))


def test_the_numpy_loader_refuses_an_edited_policy(policies, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(policies[0], bad)
    spec = json.loads((bad / "policy.json").read_text())
    spec["interval"] = spec["interval"] + 1
    (bad / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(PolicyError, match="edited after export"):
        load_numpy_policies(bad)
    with pytest.raises(PolicyError, match="backend must be one of"):
        PolicyMixer.load(
            policies[0],
            domains=["a", "b"],
            domain_tokens=[1, 1],
            total_steps=2,
            tokens_per_step=1,
            backend="jax",
        )


def test_numbers_in_give_the_probes_weights(text_store, policies):
    """A hand-written loop with acodm's probe: feeding the probe's own sums to PolicyMixer
    gives the controller's weights (exactly with the torch actor, to 1e-6 with numpy)."""
    store = TokenStore(text_store)
    sampler = DomainSampler(store, seq_len=16, batch_size=4, seed=0)
    ctl = MixingController.load(policies[0], domains=sampler.domains, n_layers=3)
    total = 3 * ctl.interval
    by_torch = _mixer(store, policies[0], "torch", total)
    by_numpy = _mixer(store, policies[0], "numpy", total)
    assert by_numpy.interval == ctl.interval and by_numpy.n_layers == 3
    np.testing.assert_array_equal(by_numpy.weights, ctl.weights)
    model = build_model("tiny", store.vocab_size, max_seq_len=16, seed=0)
    probe = DynamicsProbe(model, sampler.domains)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler.set_weights(ctl.weights)
    k = len(sampler.domains)
    sums, counts = np.zeros(k), np.zeros(k)
    decisions = 0
    for step in range(1, total + 1):
        batch = sampler.next_batch()
        tokens = torch.from_numpy(batch.tokens)
        probe.set_domains(batch.domains)
        seq_loss = seq_losses(model, tokens)
        seq_loss.mean().backward()
        opt.step()
        opt.zero_grad()
        probe.record(seq_loss, batch.domains)
        # what any framework has at hand: per-sequence losses and their domains
        np.add.at(sums, batch.domains, seq_loss.detach().double().numpy())
        np.add.at(counts, batch.domains, 1.0)
        if step % ctl.interval == 0:
            dyn = probe.interval_end(step, total, epochs=sampler.epochs())
            assert probe.alignment is not None
            numbers = dict(
                epochs=sampler.epochs(),
                weight_norm=dyn.weight_norm,
                weight_distance=dyn.weight_distance,
                gram=probe.alignment.gram(),  # a torch tensor is read on the host
                grad_counts=probe.alignment.counts(),
            )
            w = ctl.observe(dyn)
            np.testing.assert_array_equal(by_torch.update(step, sums, counts, **numbers), w)
            np.testing.assert_allclose(by_numpy.update(step, sums, counts, **numbers), w, atol=1e-6)
            np.testing.assert_allclose(sums, probe.loss_sums)
            sampler.set_weights(w)
            sums[:], counts[:] = 0.0, 0.0
            decisions += 1
    probe.close()
    assert decisions == 3


def test_a_missing_number_the_policy_observes_is_an_error(text_store, policies):
    store = TokenStore(text_store)
    m = _mixer(store, policies[0], "numpy", 8)
    k = len(store.domains)
    with pytest.raises(PolicyError, match=r"observes \['alignment'\]: pass \['gram'\]"):
        m.update(2, np.ones(k), np.ones(k), epochs=np.zeros(k), weight_norm=np.ones(3),
                 weight_distance=np.zeros(3))  # fmt: skip
    with pytest.raises(PolicyError, match="loss_sums must have shape"):
        m.update(2, np.ones(k + 1), np.ones(k), epochs=np.zeros(k), weight_norm=np.ones(3),
                 weight_distance=np.zeros(3), gram=np.eye(k))  # fmt: skip
    with pytest.raises(PolicyError, match="counts must be >= 0"):
        m.update(2, np.ones(k), -np.ones(k), epochs=np.zeros(k), weight_norm=np.ones(3),
                 weight_distance=np.zeros(3), gram=np.eye(k))  # fmt: skip


def test_interval_dynamics_rules():
    tr = LossTracker(3)
    d = interval_dynamics(step=2, total_steps=8, loss_sums=[6.0, 0.0, 3.0],
                          counts=[2, 0, 1], tracker=tr, n_layers=2)  # fmt: skip
    # the unseen domain takes the mean of the seen ones; no gram: zero alignment
    np.testing.assert_allclose(d.loss, [3.0, 3.0, 3.0])
    np.testing.assert_allclose(d.share, [2 / 3, 0.0, 1 / 3])
    assert d.progress == 0.25 and not d.alignment.any() and d.weight_norm.shape == (2,)
    d = interval_dynamics(step=4, total_steps=8, loss_sums=[2.0, 0.0, 2.0],
                          counts=[1, 0, 1], tracker=tr, n_layers=2)  # fmt: skip
    np.testing.assert_allclose(d.loss_change, [-1.0, 0.0, -1.0])


def test_state_dict_round_trip_resumes_the_same_decisions(text_store, policies):
    store = TokenStore(text_store)
    k = len(store.domains)
    rng = np.random.default_rng(3)
    feeds = [
        dict(
            loss_sums=rng.uniform(1, 5, k),
            counts=rng.integers(0, 4, k).astype(float),
            epochs=rng.uniform(0, 2, k),
            weight_norm=rng.uniform(0.9, 1.1, 3),
            weight_distance=rng.uniform(0, 0.1, 3),
            gram=np.diag(rng.uniform(0.1, 1, k)),
        )
        for _ in range(4)
    ]
    a = _mixer(store, policies[1], "numpy", 8)
    ws = [a.update(2 * (i + 1), **f) for i, f in enumerate(feeds)]
    b = _mixer(store, policies[1], "numpy", 8)
    for i, f in enumerate(feeds[:2]):
        b.update(2 * (i + 1), **f)
    c = _mixer(store, policies[1], "numpy", 8)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    np.testing.assert_array_equal(c.weights, ws[1])
    for i, f in enumerate(feeds[2:], start=2):
        np.testing.assert_array_equal(c.update(2 * (i + 1), **f), ws[i])
