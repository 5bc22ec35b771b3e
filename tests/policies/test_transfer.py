"""Transfer of an exported actor to target runs (METHOD.md, "Proxy mode and transfer")."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from acodm.config import TrainConfig
from acodm.data.sampler import DomainSampler
from acodm.data.store import TokenStore
from acodm.envs.spaces import ObservationSpec, build_observation
from acodm.metrics import read_metrics
from acodm.mixers import make_mixer
from acodm.mixers.base import MixerContext, MixerError
from acodm.models import build_model
from acodm.policies.export import MixingPolicy, PolicyError
from acodm.policies.transfer import ActorMixer, DynamicsProbe, MixingController
from acodm.pretrain import pretrain
from tests.fixtures import make_position_store, make_text_store

BETA, EPS, K = 3.0, 0.1, 2


@pytest.fixture(scope="module")
def text_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("transfer") / "store"
    make_text_store(path)
    return path


@pytest.fixture(scope="module")
def policy_dir(text_store, tmp_path_factory) -> Path:
    """A tiny DDPG actor (untrained: any deterministic map will do) exported SB3-free."""
    return _export_policy(text_store, tmp_path_factory.mktemp("policy") / "policy", seed=1)


def _export_policy(text_store: Path, out: Path, seed: int) -> Path:
    from acodm.envs.data_mixing import DataMixingEnv
    from acodm.policies.agent import make_agent, small
    from acodm.policies.export import export_actor

    env = DataMixingEnv(store=str(text_store), interval=K, beta=BETA, eps=EPS)
    agent = make_agent(env, small(net_arch=(16,), seed=seed))
    export_actor(
        agent,
        out,
        domains=env.domains,
        observation=env.observation_spec.to_dict(),
        beta=BETA,
        eps=EPS,
        interval=K,
    )
    env.close()
    return out


def config(store: Path, policy: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        store=str(store),
        model="tiny",
        mixer=f"actor:{policy}",
        seq_len=32,
        micro_batch_size=4,
        steps=6,
        warmup_steps=1,
        interval=K,
        eval_every=0,
        eval_windows=1,
        device="cpu",
        lr=3e-3,
    )
    return base.replace(**changes)


def spy(mixer: ActorMixer) -> list:
    """Record every interval's dynamics the mixer receives."""
    seen: list = []
    update = mixer.update

    def wrapped(feedback):
        seen.append(feedback.dynamics)
        update(feedback)

    mixer.update = wrapped  # type: ignore[method-assign]
    return seen


def logged_weights(run: Path, domains: list[str]) -> list[np.ndarray]:
    rows = [r for r in read_metrics(run / "metrics.jsonl") if f"mix/weight/{domains[0]}" in r]
    return [np.array([r[f"mix/weight/{d}"] for d in domains]) for r in rows]


def test_actor_mixer_drives_pretrain(text_store, policy_dir, tmp_path):
    cfg = config(text_store, policy_dir)
    mixer = make_mixer(cfg.mixer)
    assert isinstance(mixer, ActorMixer) and mixer.describe() == cfg.mixer
    seen = spy(mixer)
    pretrain(cfg, tmp_path / "run", progress=False, mixer=mixer)
    policy = MixingPolicy.load(policy_dir)
    spec = ObservationSpec.from_dict(policy.spec["observation"])
    weights = logged_weights(tmp_path / "run", list(policy.domains))
    assert len(weights) == 3 and len(seen) == 3
    np.testing.assert_allclose(weights[0], 1 / 3)  # first interval uniform, as env.reset
    for dyn, w in zip(seen[:-1], weights[1:], strict=True):
        by_hand = policy.weights(build_observation(dyn, spec))
        np.testing.assert_allclose(w, by_hand, rtol=1e-12)
        assert np.abs(w - 1 / 3).max() > 1e-3
    state = mixer.state_dict()
    np.testing.assert_allclose(state["state"]["weights"], mixer.weights())
    resumed = make_mixer(cfg.mixer)
    resumed.setup(MixerContext(policy.domains, np.ones(3), 6, 128, interval=K))
    np.testing.assert_allclose(resumed.weights(), 1 / 3)
    resumed.load_state_dict(state)  # resume: the last decision, not uniform
    np.testing.assert_allclose(resumed.weights(), mixer.weights())


def test_an_ensemble_of_actors_drives_pretrain(text_store, policy_dir, tmp_path):
    """``actor:A;B``: each interval's weights are the mapping of the two actors' mean action."""
    from acodm.envs.spaces import action_to_weights

    other = _export_policy(text_store, tmp_path / "other", seed=2)
    cfg = config(text_store, policy_dir, mixer=f"actor:{policy_dir};{other}")
    mixer = make_mixer(cfg.mixer)
    seen = spy(mixer)
    pretrain(cfg, tmp_path / "run", progress=False, mixer=mixer)
    a, b = MixingPolicy.load(policy_dir), MixingPolicy.load(other)
    spec = ObservationSpec.from_dict(a.spec["observation"])
    weights = logged_weights(tmp_path / "run", list(a.domains))
    assert len(weights) == 3
    for dyn, w in zip(seen[:-1], weights[1:], strict=True):
        obs = build_observation(dyn, spec)
        assert np.abs(a.act(obs) - b.act(obs)).max() > 1e-3  # the members disagree
        mean = (a.act(obs).astype(np.float64) + b.act(obs)) / 2
        np.testing.assert_allclose(w, action_to_weights(mean, BETA, EPS), rtol=1e-5)


def test_transfer_to_a_larger_target(text_store, policy_dir, tmp_path):
    cfg = config(text_store, policy_dir, model="14m", micro_batch_size=2, steps=4)
    summary = pretrain(cfg, tmp_path / "run14m", progress=False)
    assert summary["steps"] == 4 and summary["mixer"] == cfg.mixer
    weights = logged_weights(tmp_path / "run14m", list(MixingPolicy.load(policy_dir).domains))
    assert np.abs(weights[1] - 1 / 3).max() > 1e-3


def test_layer_count_mismatch_is_a_clear_error(text_store, policy_dir, tmp_path):
    cfg = config(text_store, policy_dir, monitored_layers=2, steps=2)
    with pytest.raises(MixerError, match=r"monitors 2 layers .* trained on 3"):
        pretrain(cfg, tmp_path / "bad", progress=False)


def test_domain_mismatch_in_the_controller(policy_dir):
    with pytest.raises(PolicyError, match=r"missing \['prose'\], extra \['wiki'\]"):
        MixingController.load(policy_dir, ["code", "numbers", "wiki"])
    with pytest.raises(PolicyError, match="another order"):
        MixingController.load(policy_dir, ["numbers", "code", "prose"])


def _dynamics(k: int, seed: int):
    from acodm.dynamics.features import Dynamics

    rng = np.random.default_rng(seed)
    gram = rng.normal(size=(k, k))
    return Dynamics(
        step=4,
        progress=0.5,
        loss=rng.uniform(2, 5, k),
        loss_change=rng.normal(size=k),
        share=rng.dirichlet(np.ones(k)),
        epochs=rng.uniform(0, 3, k),
        alignment=rng.normal(size=k),
        gram=gram @ gram.T,
        weight_norm=rng.uniform(1, 2, 3),
        weight_distance=rng.uniform(0, 1, 3),
    )


def test_reordered_domains_are_mapped_by_name(policy_dir):
    """With allow_reorder the controller reads the run's dynamics in the policy's order and
    answers in the run's order: each domain gets the weight the policy gives it by name."""
    from acodm.dynamics.features import permute_domains

    policy = MixingPolicy.load(policy_dir)
    names = list(policy.domains)
    run_names = [names[2], names[0], names[1]]
    order = [run_names.index(d) for d in names]  # run index of each policy domain
    dyn_run = _dynamics(3, seed=0)
    ctl = MixingController(policy, run_names, allow_reorder=True)
    w_run = ctl.observe(dyn_run)
    dyn_policy = permute_domains(dyn_run, order)
    assert dyn_policy.loss[0] == dyn_run.loss[order[0]]
    np.testing.assert_array_equal(dyn_policy.gram, dyn_run.gram[np.ix_(order, order)])
    w_policy = policy.weights(build_observation(dyn_policy, ctl.spec))
    assert np.abs(w_policy - 1 / 3).max() > 1e-3  # the test can tell orders apart
    for i, d in enumerate(names):
        assert w_run[run_names.index(d)] == pytest.approx(w_policy[i], rel=1e-12)
    assert ctl.weight_dict() == pytest.approx(dict(zip(names, w_policy, strict=True)))
    same = MixingController(policy, names)
    np.testing.assert_allclose(same.observe(dyn_policy), w_policy, rtol=1e-12)


def test_reorder_from_the_mixer_spec(text_store, policy_dir, tmp_path):
    """`--mixer actor:PATH,reorder=1`: the CLI way to run a store in another order."""
    names = list(MixingPolicy.load(policy_dir).domains)
    with pytest.raises(MixerError, match=r"actor:PATH,reorder=1"):
        ActorMixer(policy_dir).setup(MixerContext(names[::-1], np.ones(3), 6, 128, interval=K))
    mixer = make_mixer(f"actor:{policy_dir},reorder=1")
    assert isinstance(mixer, ActorMixer) and mixer.reorder
    assert make_mixer(mixer.describe()).describe() == mixer.describe()
    assert not make_mixer(f"actor:{policy_dir},reorder=0").reorder  # type: ignore[attr-defined]
    with pytest.raises(MixerError, match="reorder must be 1 or 0"):
        make_mixer(f"actor:{policy_dir},reorder=yes")
    store = make_position_store(tmp_path / "rev", {d: 3000 for d in names[::-1]})
    cfg = config(store.path, policy_dir, mixer=mixer.describe(), steps=4)
    summary = pretrain(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 4


def test_domain_mismatch_in_pretrain(policy_dir, tmp_path):
    store = make_position_store(tmp_path / "other", {"code": 4000, "wiki": 4000})
    cfg = config(store.path, policy_dir, steps=2)
    with pytest.raises(MixerError, match=r"missing \['prose', 'numbers'\], extra \['wiki'\]"):
        pretrain(cfg, tmp_path / "bad", progress=False)


def test_bad_path_and_unknown_name(tmp_path):
    with pytest.raises(MixerError, match="not found"):
        make_mixer(f"actor:{tmp_path / 'nowhere'}")
    with pytest.raises(MixerError, match="needs an argument"):
        make_mixer("actor")
    with pytest.raises(MixerError, match="unknown mixer 'nosuch'"):
        make_mixer("nosuch:1")


def test_an_edited_policy_is_refused_by_every_loader(policy_dir, tmp_path):
    """The mixer and the controller load through load_policy, so they check spec_sha256."""
    import json
    import shutil

    bad = tmp_path / "edited"
    shutil.copytree(policy_dir, bad)
    spec = json.loads((bad / "policy.json").read_text())
    spec["observation"]["features"] = spec["observation"]["features"][::-1]
    (bad / "policy.json").write_text(json.dumps(spec))
    with pytest.raises(MixerError, match="edited after export"):
        make_mixer(f"actor:{bad}")
    with pytest.raises(PolicyError, match="edited after export"):
        MixingController.load(bad, domains=spec["domains"])


def test_make_mixer_imports_the_plugin_lazily(policy_dir):
    code = (
        "import sys\n"
        "from acodm.mixers import make_mixer\n"
        "assert 'acodm.policies.transfer' not in sys.modules\n"
        f"m = make_mixer('actor:{policy_dir}')\n"
        "print(type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ActorMixer"


def test_load_path_never_unpickles(policy_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle/torch.load called while loading a policy")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert isinstance(make_mixer(f"actor:{policy_dir}"), ActorMixer)


def seq_losses(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean next-token losses ``(B,)`` of a plain forward (what a user's loop has)."""
    logits = model(input_ids=tokens[:, :-1]).logits
    tok = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
    return tok.view(tokens.shape[0], -1).mean(dim=1)


def test_plain_torch_loop(text_store, policy_dir):
    """The module docstring's loop: controller + probe around a hand-written step."""
    store = TokenStore(text_store)
    sampler = DomainSampler(store, seq_len=16, batch_size=4, seed=0)
    ctl = MixingController.load(policy_dir, domains=sampler.domains, n_layers=3)
    model = build_model("tiny", store.vocab_size, max_seq_len=16, seed=0)
    probe = DynamicsProbe(model, sampler.domains)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sampler.set_weights(ctl.weights)
    total = 2 * ctl.interval
    for step in range(1, total + 1):
        batch = sampler.next_batch()
        tokens = torch.from_numpy(batch.tokens)
        probe.set_domains(batch.domains)
        seq_loss = seq_losses(model, tokens)
        seq_loss.mean().backward()
        opt.step()
        opt.zero_grad()
        probe.record(seq_loss, batch.domains)
        if step % ctl.interval == 0:
            dyn = probe.interval_end(step, total, epochs=sampler.epochs())
            w = ctl.observe(dyn)
            np.testing.assert_allclose(w, ctl.policy.weights(build_observation(dyn, ctl.spec)))
            sampler.set_weights(w)
            assert dyn.gram.shape == (3, 3) and np.any(dyn.alignment != 0)
    np.testing.assert_allclose(sampler.weights, ctl.weights)
    probe.close()
    with pytest.raises(PolicyError, match="monitors 2 layers"):
        MixingController.load(policy_dir, sampler.domains, n_layers=2)
