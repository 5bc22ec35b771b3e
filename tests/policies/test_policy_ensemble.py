"""``PolicyEnsemble`` / ``load_policies`` / ``actor:A;B``: several exported actors of one
spec act as one (the mean of their actions); mismatched members are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from acodm.policies.agent import make_agent, small
from acodm.policies.analytic import TargetMixtureEnv
from acodm.policies.export import (
    MixingPolicy,
    PolicyEnsemble,
    PolicyError,
    action_to_weights,
    export_actor,
    load_policies,
)
from acodm.study import policy_flops

BETA, EPS = 2.0, 0.1


def _export(env: TargetMixtureEnv, out: Path, seed: int, interval: int = 4) -> Path:
    agent = make_agent(env, small(net_arch=(16, 8), seed=seed))
    return export_actor(
        agent,
        out,
        domains=env.domains,
        observation=env.observation_spec(),
        beta=BETA,
        eps=EPS,
        interval=interval,
        extra={"compute": {"flops_6nd": 10.0 * (seed + 1)}},
    )


@pytest.fixture(scope="module")
def env() -> TargetMixtureEnv:
    return TargetMixtureEnv(noise=0.3)


@pytest.fixture(scope="module")
def three(env, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ensemble")
    return [_export(env, root / f"p{s}", seed=s) for s in range(3)]


def test_the_ensemble_acts_as_the_mean_of_its_members(env, three):
    members = [MixingPolicy.load(p) for p in three]
    ens = load_policies(";".join(str(p) for p in three))
    assert isinstance(ens, PolicyEnsemble) and len(ens.members) == 3
    obs = np.stack([env.observation_space.sample() for _ in range(8)]).astype(np.float32)
    want = np.mean([m.act(obs) for m in members], axis=0)
    np.testing.assert_allclose(ens.act(obs), want, rtol=1e-6, atol=1e-7)
    assert np.abs(members[0].act(obs) - members[1].act(obs)).max() > 1e-3  # they differ
    # weights: the exported mapping of the mean action
    np.testing.assert_allclose(ens.weights(obs[0]), action_to_weights(want[0], BETA, EPS))
    assert ens.domains == members[0].domains and ens.interval == 4
    assert ens.spec["ensemble"] == [m.spec["spec_sha256"] for m in members]
    # one path is the policy itself, and a sequence of paths works like the joined string
    assert type(load_policies(three[0])) is MixingPolicy
    np.testing.assert_array_equal(load_policies(three).act(obs), ens.act(obs))


def test_the_study_sums_an_ensembles_compute(three):
    spec = "actor:" + ";".join(str(p) for p in three)
    assert policy_flops(spec) == pytest.approx(10.0 + 20.0 + 30.0)
    spec_json = json.loads((three[2] / "policy.json").read_text())
    spec_json["extra"] = {}
    (three[2] / "policy.json").write_text(json.dumps(spec_json))  # extra is not hashed
    assert policy_flops(spec) is None  # one member recorded no compute: unknown, not partial


def test_mismatched_or_too_few_members_are_refused(env, three, tmp_path):
    other = _export(env, tmp_path / "k8", seed=5, interval=8)
    with pytest.raises(PolicyError, match="differs from policy 1 in 'interval'"):
        load_policies([three[0], other])
    with pytest.raises(PolicyError, match="at least 2"):
        PolicyEnsemble([MixingPolicy.load(three[0])])
    with pytest.raises(PolicyError, match="empty policy path"):
        load_policies(f"{three[0]};")
    with pytest.raises(PolicyError, match="not found"):
        load_policies(f"{three[0]};{tmp_path / 'nowhere'}")


def test_the_ensemble_is_a_plain_module_without_gradients(three):
    ens = load_policies(three)
    x = torch.zeros(2, ens.obs_dim)
    assert ens(x).shape == (2, len(ens.domains)) and not ens.training
