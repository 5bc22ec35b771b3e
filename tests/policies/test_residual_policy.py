"""Residual policies end to end (issue 11): the exported spec (format 3) records the action
mapping, version-2 policies still load, and on a target a zero actor *is* the target's own
(capped) prior: in acodm's trainer, a torch loop, the Hugging Face callback and the online
``ddpg`` mixer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from acodm.config import TrainConfig
from acodm.data.weights import project_capped
from acodm.dynamics.features import Dynamics
from acodm.envs.data_mixing import DataMixingEnv
from acodm.envs.spaces import ActionMapping, action_to_weights, prior_weights, run_caps
from acodm.metrics import read_metrics
from acodm.mixers import make_mixer
from acodm.mixers.base import MixerContext
from acodm.policies.agent import make_agent, small
from acodm.policies.export import SPEC_FILE, MixingPolicy, PolicyError, export_actor, spec_digest
from acodm.policies.transfer import MixingController
from acodm.pretrain import pretrain
from tests.fixtures import make_text_store

K = 2
CAP = 0.02  # epochs: binds on this store within a 12-step target of 4 x 32 tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("residual") / "store"
    make_text_store(path)
    return path


def export(store: Path, out: Path, *, zero: bool, **env_kw) -> Path:
    """An untrained actor (zero-initialised or random) of a proxy env, exported."""
    env = DataMixingEnv(store=str(store), interval=K, **env_kw)
    agent = make_agent(env, small(net_arch=(16,), seed=1, zero_init_actor=zero))
    export_actor(
        agent,
        out,
        domains=env.domains,
        observation=env.observation_spec.to_dict(),
        interval=K,
        action=env.action_mapping,
    )
    env.close()
    return out


@pytest.fixture(scope="module")
def zero_capped(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("policy") / "zero-capped"
    return export(store, out, zero=True, action="residual", max_epochs=CAP)


@pytest.fixture(scope="module")
def random_residual(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("policy") / "random"
    return export(store, out, zero=False, action="residual", prior="uniform")


def target(store: Path, mixer: str, **changes) -> TrainConfig:
    base = TrainConfig(
        store=str(store),
        model="tiny",
        mixer=mixer,
        seq_len=32,
        micro_batch_size=4,
        steps=12,
        warmup_steps=1,
        interval=K,
        eval_every=0,
        eval_windows=1,
        device="cpu",
        lr=3e-3,
    )
    return base.replace(**changes)


def run(cfg: TrainConfig, out: Path) -> tuple[list[dict], dict]:
    summary = pretrain(cfg, out, progress=False)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    return [{k: v for k, v in r.items() if k.startswith(("mix/", "train/loss"))} for r in rows], {
        k: v for k, v in summary.items() if k.startswith("eval/")
    }


# ----------------------------------------------------------------------------- the spec


def test_the_exported_spec_records_the_action_mapping(zero_capped):
    spec = json.loads((zero_capped / SPEC_FILE).read_text())
    assert spec["format_version"] == 3
    assert spec["action_mapping"] == {
        "kind": "residual",
        "formula": "w = project(normalise(prior * exp(beta * a)), caps)",
        "beta": float(np.log(4.0)),
        "prior": "unimax:0.02",
        "projection": "kl",
        "max_epochs": CAP,
    }
    policy = MixingPolicy.load(zero_capped)
    assert policy.mapping == ActionMapping.make("residual", max_epochs=CAP)
    assert not policy.mu[-2].weight.any()


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(prior="uniform"),
        lambda m: m.update(max_epochs=4.0),
        lambda m: m.update(beta=2.0),
        lambda m: m.update(kind="softmax", eps=0.15),
    ],
    ids=["prior", "max_epochs", "beta", "kind"],
)
def test_the_hash_covers_the_new_fields(zero_capped, tmp_path, edit):
    import shutil

    bad = tmp_path / "edited"
    shutil.copytree(zero_capped, bad)
    spec = json.loads((bad / SPEC_FILE).read_text())
    edit(spec["action_mapping"])
    (bad / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(PolicyError, match="edited after export"):
        MixingPolicy.load(bad)


def as_version_2(folder: Path) -> None:
    """Rewrite a softmax export as acodm wrote it before format 3 (no kind, no max_epochs)."""
    spec = json.loads((folder / SPEC_FILE).read_text())
    spec["format_version"] = 2
    spec["action_mapping"] = {
        k: v for k, v in spec["action_mapping"].items() if k in ("formula", "beta", "eps")
    }
    spec["spec_sha256"] = spec_digest(spec, (folder / "actor.safetensors").read_bytes())
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2))


def test_a_version_2_policy_still_loads_as_the_softmax_mapping(store, tmp_path):
    out = export(store, tmp_path / "v2", zero=False, beta=2.0, eps=0.1)
    as_version_2(out)
    spec = json.loads((out / SPEC_FILE).read_text())
    assert spec["format_version"] == 2 and "kind" not in spec["action_mapping"]
    policy = MixingPolicy.load(out)
    assert policy.mapping == ActionMapping("softmax", 2.0, 0.1)
    obs = np.random.default_rng(0).normal(size=(4, policy.obs_dim)).astype(np.float32)
    want = np.stack([action_to_weights(a, 2.0, 0.1) for a in policy.act(obs)])
    np.testing.assert_array_equal(policy.weights(obs), want)
    ctl = MixingController(policy, policy.domains)
    assert not ctl.needs_context
    np.testing.assert_array_equal(ctl.weights, np.full(3, 1 / 3))


def test_a_residual_policy_needs_the_runs_prior(zero_capped, random_residual):
    policy = MixingPolicy.load(random_residual)
    with pytest.raises(PolicyError, match="prior"):
        policy.weights(np.zeros(policy.obs_dim, np.float32))
    ctl = MixingController(MixingPolicy.load(zero_capped), policy.domains)
    with pytest.raises(PolicyError, match="context"):
        ctl.observe(dynamics(3, step=2, epochs=np.zeros(3)))


# ----------------------------------------------------------------------------- on a target


def test_a_zero_actor_is_the_targets_capped_prior_exactly(store, zero_capped, tmp_path):
    """Interval for interval, the zero residual actor runs the weights of the static prior
    rule held to the same cap by the trainer, so the two runs are the same run."""
    static, static_eval = run(target(store, f"unimax:{CAP}", max_epochs=CAP), tmp_path / "s")
    actor, actor_eval = run(target(store, f"actor:{zero_capped}", max_epochs=CAP), tmp_path / "a")
    assert actor == static and actor_eval == static_eval
    # without the trainer's cap the policy keeps to its own: the same weights again
    alone, _ = run(target(store, f"actor:{zero_capped}"), tmp_path / "alone")
    weights = [{k: v for k, v in r.items() if k.startswith("mix/")} for r in alone]
    assert weights == [{k: v for k, v in r.items() if k.startswith("mix/")} for r in static]
    # and the cap did bind: the prior alone differs
    free, _ = run(target(store, f"unimax:{CAP}"), tmp_path / "free")
    assert [r["mix/weight/numbers"] for r in free] != [r["mix/weight/numbers"] for r in static]


@pytest.mark.parametrize("prior", ["natural", "temperature:0.9"])  # 0.9: renormalising moves bits
def test_a_zero_actor_without_a_cap_is_the_prior_exactly(store, tmp_path, prior):
    policy = export(store, tmp_path / "zero", zero=True, action="residual", prior=prior)
    static = run(target(store, prior), tmp_path / "s")
    assert run(target(store, f"actor:{policy}"), tmp_path / "a") == static


def test_the_target_computes_its_own_prior(store, tmp_path):
    """The uncapped auto prior is UniMax at 4 epochs of the *target's* budget: uniform on a
    short target, UniMax's allocation on one long enough to repeat a domain 4 times."""
    out = export(store, tmp_path / "auto", zero=True, action="residual")
    from acodm.data.store import TokenStore

    domains = ("code", "prose", "numbers")
    tokens = np.array([TokenStore(store).num_tokens(d) for d in domains], dtype=np.float64)
    firsts = []
    for steps in (10, 300):  # 10 x 1024 tokens, then 300 x 1024 (> 4 epochs of "numbers")
        ctx = MixerContext(domains, tokens, steps, 1024, interval=K)
        mixer, static = make_mixer(f"actor:{out}"), make_mixer("unimax:4")
        mixer.setup(ctx)
        static.setup(ctx)
        np.testing.assert_array_equal(mixer.weights(), static.weights())
        firsts.append(mixer.weights())
    np.testing.assert_allclose(firsts[0], np.full(3, 1 / 3))
    assert firsts[1][2] == pytest.approx(4 * tokens[2] / 307_200) and firsts[1][2] < 1 / 3


def dynamics(k: int, *, step: int, epochs: np.ndarray, seed: int = 0) -> Dynamics:
    rng = np.random.default_rng(seed)
    return Dynamics(
        step=step, progress=0.5, loss=rng.normal(size=k) + 3, loss_change=rng.normal(size=k),
        share=np.full(k, 1 / k), epochs=epochs, alignment=rng.normal(size=k), gram=np.eye(k),
        weight_norm=np.ones(3) + rng.random(3), weight_distance=rng.random(3),
    )  # fmt: skip


def test_the_controller_maps_a_trained_actor_around_the_prior_within_live_caps(
    random_residual, store
):
    """A torch loop's controller: the prior from the run's context, the caps from the
    interval's epochs and step, the actor's action in between; reordered domains too."""
    policy = MixingPolicy.load(random_residual)
    domains = policy.domains
    ctx = MixerContext(domains, np.array([3000.0, 1000.0, 500.0]), 100, 64, interval=K)
    ctl = MixingController(policy, domains, context=ctx)
    np.testing.assert_array_equal(ctl.prior, np.full(3, 1 / 3))
    np.testing.assert_array_equal(ctl.weights, np.full(3, 1 / 3))
    dyn = dynamics(3, step=10, epochs=np.array([0.1, 0.5, 2.0]))
    w = ctl.observe(dyn)
    a = policy.act(ctl.last_observation)
    np.testing.assert_array_equal(
        w, ActionMapping.make("residual", prior="uniform").weights(a, ctl.prior)
    )
    assert np.abs(w - 1 / 3).max() > 1e-3
    # the same policy over the run's domains listed in another order: the same mixture
    order = [2, 0, 1]
    run_domains = tuple(domains[i] for i in order)
    run_ctx = MixerContext(run_domains, ctx.domain_tokens[order], 100, 64, interval=K)
    other = MixingController(policy, run_domains, allow_reorder=True, context=run_ctx)
    from acodm.dynamics.features import permute_domains

    np.testing.assert_allclose(other.observe(permute_domains(dyn, order)), w[order], rtol=1e-12)


def test_the_hf_callback_gives_a_residual_controller_its_run(zero_capped, store, tmp_path):
    from acodm.dynamics.probe import DynamicsProbe
    from acodm.models import build_model
    from acodm.policies.hf import MixingCallback, MixtureDataset

    ds = MixtureDataset(store, seq_len=32, seed=0)
    model = build_model("tiny", ds.vocab_size, max_seq_len=33)
    probe = DynamicsProbe(model, ds.domains)
    ctl = MixingController.load(zero_capped, ds.domains)
    cb = MixingCallback(ds, probe, ctl)
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to="none",
        seed=0,
    )
    state = TrainerState(max_steps=12, global_step=0)
    cb.on_train_begin(args, state, TrainerControl())
    ctx = ctl.context
    assert ctx is not None and ctx.total_tokens == 12 * 4 * 32
    prior = prior_weights(f"unimax:{CAP}", ctx)
    np.testing.assert_array_equal(
        cb.history[0][1], project_capped(prior, run_caps(ctx, np.zeros(3), 0, CAP))
    )
    np.testing.assert_array_equal(ds.weights, cb.history[0][1])
    probe.close()


# ----------------------------------------------------------------------------- online ddpg


def test_the_online_ddpg_mixer_with_the_residual_action(store, tmp_path):
    spec = f"ddpg:warmup=0.3,action=residual,max_epochs={CAP}"
    mixer = make_mixer(spec)
    assert mixer.describe() == (
        f"ddpg:warmup=0.3,seed=0,action=residual,beta={float(np.log(4.0))!r},"
        f"prior=unimax:0.02,max_epochs={CAP}"
    )
    assert make_mixer(mixer.describe()).describe() == mixer.describe()
    assert mixer.agent_config.zero_init_actor is True  # the residual action starts at its prior
    assert make_mixer("ddpg").agent_config.zero_init_actor is False
    pretrain(target(store, spec), tmp_path / "ddpg", progress=False)
    rows = [r for r in read_metrics(tmp_path / "ddpg" / "metrics.jsonl") if "train/loss" in r]
    static, _ = run(target(store, f"unimax:{CAP}", max_epochs=CAP), tmp_path / "static")
    domains = ("code", "prose", "numbers")
    first = [rows[0][f"mix/weight/{d}"] for d in domains]  # the prior (to rounding: the
    # mixer's weights are renormalised, as every mixer's)
    np.testing.assert_allclose(first, [static[0][f"mix/weight/{d}"] for d in domains], rtol=1e-15)
    from acodm.data.store import TokenStore

    tokens = np.array([TokenStore(store).num_tokens(d) for d in domains], dtype=np.float64)
    ctx = MixerContext(domains, tokens, 12, 128, interval=K)
    epochs = np.zeros(3)
    for i, r in enumerate(rows):  # every interval within the caps of the run
        w = np.array([r[f"mix/weight/{d}"] for d in domains])
        assert np.all(w <= run_caps(ctx, epochs, i * K, CAP) + 1e-12)
        epochs = np.array([r[f"train/epochs/{d}"] for d in domains])


def test_softmax_ddpg_is_unchanged_by_default():
    m = make_mixer("ddpg:warmup=0.25,seed=1")
    assert m.describe() == "ddpg:warmup=0.25,seed=1,beta=1,eps=0.15"


# ----------------------------------------------------------------------------- proxy training


def test_train_policy_with_the_residual_action(store, tmp_path, monkeypatch):
    from acodm.cli import main
    from acodm.policies import train as train_mod
    from acodm.policies.train import export_from_checkpoint

    seen: dict = {}
    real = train_mod.train_policy

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_policy", spy)
    out = tmp_path / "proxy"
    argv = ["train-policy", "--store", str(store), "--out", str(out), "--steps", "8"]
    argv += ["--interval", "2", "--action", "residual", "--max-epochs", str(CAP), "--quiet"]
    assert main(argv) == 0
    assert seen["action"] == "residual" and seen["max_epochs"] == CAP and seen["prior"] is None
    config = json.loads((out / "config.json").read_text())
    assert config["proxy"]["max_epochs"] == CAP
    assert config["agent"]["zero_init_actor"] is True
    assert config["env"]["action"] == ActionMapping.make("residual", max_epochs=CAP).to_dict()
    policy = MixingPolicy.load(out / "policy")
    assert policy.mapping == ActionMapping.make("residual", max_epochs=CAP)
    again = export_from_checkpoint(out, tmp_path / "again")
    assert MixingPolicy.load(again).mapping == policy.mapping
    # the logged weights are the ones the intervals ran with (prior * exp(beta a), capped)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "rl/reward" in r]
    assert rows and all(
        abs(sum(r[f"mix/weight/{d}"] for d in policy.domains) - 1) < 1e-9 for r in rows
    )


def test_a_run_started_before_the_new_settings_still_resumes(store, tmp_path):
    """Runs whose config.json predates max_epochs / zero_init_actor resume: a key added
    since, at its off value, is not a change of the run (such runs are v0 runs)."""
    from acodm.policies.agent import small
    from acodm.policies.train import train_policy

    out = tmp_path / "old"
    kw = dict(
        overrides={"steps": 8, "warmup_steps": 1, "device": "cpu", "eval_every": 0},
        interval=2,
        agent=small(net_arch=(16,), batch_size=4),
        progress=False,
        version="v0",
    )
    train_policy(store, out, **kw)
    config = json.loads((out / "config.json").read_text())
    del config["proxy"]["max_epochs"], config["agent"]["zero_init_actor"]
    (out / "config.json").write_text(json.dumps(config))
    train_policy(store, out, episodes=2, resume=True, **kw)
    assert json.loads((out / "config.json").read_text())["agent"]["zero_init_actor"] is False
