"""Actor export -> load (METHOD.md, "Proxy mode and transfer"): exact, pickle-free, tamper-evident."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from acodm.policies.agent import make_agent, small
from acodm.policies.analytic import TargetMixtureEnv
from acodm.policies.export import (
    ACTOR_FILE,
    SPEC_FILE,
    MixingPolicy,
    PolicyError,
    action_to_weights,
    check_domains,
    export_actor,
    spec_digest,
)

BETA, EPS = 2.0, 0.1


@pytest.fixture(scope="module")
def env() -> TargetMixtureEnv:
    return TargetMixtureEnv(noise=0.3)


@pytest.fixture(scope="module")
def agent(env):
    return make_agent(env, small(net_arch=(32, 16), seed=3))


@pytest.fixture(scope="module")
def exported(agent, env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "policy"
    export_actor(
        agent,
        out,
        domains=env.domains,
        observation=env.observation_spec(),
        beta=BETA,
        eps=EPS,
        interval=4,
        extra={"note": "test"},
    )
    return out


def observations(env: TargetMixtureEnv, n: int = 16) -> np.ndarray:
    return np.stack([env.observation_space.sample() for _ in range(n)]).astype(np.float32)


def test_export_writes_spec_and_weights(exported, env):
    assert sorted(p.name for p in exported.iterdir()) == [ACTOR_FILE, SPEC_FILE]
    spec = json.loads((exported / SPEC_FILE).read_text())
    assert spec["domains"] == env.domains and spec["interval"] == 4
    assert spec["network"] == {
        "input_dim": 9,
        "layers": [32, 16],
        "output_dim": 4,
        "activation": "relu",
        "output_activation": "tanh",
    }
    assert (
        spec["action_mapping"]["beta"] == BETA and spec["observation"]["env"] == "TargetMixtureEnv"
    )
    assert set(spec["versions"]) == {"acodm", "torch", "stable_baselines3"}
    assert len(spec["actor_sha256"]) == 64 and spec["extra"] == {"note": "test"}
    assert len(spec["spec_sha256"]) == 64
    assert spec["observation_space"]["shape"] == [9] and spec["action_space"]["low"] == [-1.0] * 4


def test_loaded_policy_equals_sb3_actor(agent, exported, env):
    policy = MixingPolicy.load(exported)
    assert isinstance(policy, torch.nn.Module) and policy.domains == tuple(env.domains)
    obs = observations(env)
    with torch.no_grad():
        expected = agent.actor(torch.from_numpy(obs)).numpy()
    np.testing.assert_array_equal(policy.act(obs), expected)
    with torch.no_grad():  # batch of one: its own GEMM kernel, so compare like with like
        expected_one = agent.actor(torch.from_numpy(obs[:1])).numpy()[0]
    np.testing.assert_array_equal(policy.act(obs[0]), expected_one)
    want = np.stack([action_to_weights(row, BETA, EPS) for row in expected])
    np.testing.assert_array_equal(policy.weights(obs), want)
    assert MixingPolicy.load(exported / SPEC_FILE).spec == policy.spec


def test_fresh_process_gives_identical_actions(exported, env, tmp_path):
    obs = observations(env)
    np.save(tmp_path / "obs.npy", obs)
    script = (
        "import sys, numpy as np, torch\n"
        "torch.set_num_threads(1)\n"
        "from acodm.policies import MixingPolicy\n"
        "assert 'stable_baselines3' not in sys.modules\n"
        "p = MixingPolicy.load(sys.argv[2])\n"
        "np.save(sys.argv[4], p.act(np.load(sys.argv[3])))\n"
        "assert 'stable_baselines3' not in sys.modules, 'loading imported SB3'\n"
    )
    env_vars = dict(os.environ)
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "unused",
            str(exported),
            str(tmp_path / "obs.npy"),
            str(tmp_path / "act.npy"),
        ],
        check=True,
        env=env_vars,
        timeout=120,
    )
    here = MixingPolicy.load(exported).act(obs)
    there = np.load(tmp_path / "act.npy")
    assert there.dtype == np.float32
    np.testing.assert_array_equal(there, here)


def test_load_never_unpickles(exported, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle/torch.load called while loading a policy")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert MixingPolicy.load(exported).domains


def copy_export(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (ACTOR_FILE, SPEC_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_tampered_or_truncated_weights_are_rejected(exported, tmp_path):
    bad = copy_export(exported, tmp_path / "t")
    data = bytearray((bad / ACTOR_FILE).read_bytes())
    data[-1] ^= 0x01
    (bad / ACTOR_FILE).write_bytes(bytes(data))
    with pytest.raises(PolicyError, match=r"actor\.safetensors.*sha256"):
        MixingPolicy.load(bad)
    (bad / ACTOR_FILE).write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(PolicyError, match="sha256"):
        MixingPolicy.load(bad)
    (bad / ACTOR_FILE).unlink()
    with pytest.raises(PolicyError, match="not found"):
        MixingPolicy.load(bad)


def test_weights_behind_a_symlink_out_of_the_folder_are_refused(exported, tmp_path):
    """Even the right bytes: a shared folder must not make acodm read a file elsewhere."""
    bad = copy_export(exported, tmp_path / "link")
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((bad / ACTOR_FILE).read_bytes())
    (bad / ACTOR_FILE).unlink()
    (bad / ACTOR_FILE).symlink_to(outside)
    with pytest.raises(PolicyError, match="leads outside"):
        MixingPolicy.load(bad)
    (bad / ACTOR_FILE).unlink()
    (bad / ACTOR_FILE).mkdir()
    with pytest.raises(PolicyError, match="not a regular file"):
        MixingPolicy.load(bad)


def rewrite_spec(folder: Path, **changes) -> None:
    spec = json.loads((folder / SPEC_FILE).read_text())
    spec.update(changes)
    (folder / SPEC_FILE).write_text(json.dumps(spec))


def test_foreign_truncated_or_incomplete_json_is_rejected(exported, tmp_path):
    bad = copy_export(exported, tmp_path / "j")
    text = (bad / SPEC_FILE).read_text()
    (bad / SPEC_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(PolicyError, match=r"policy\.json.*not valid JSON"):
        MixingPolicy.load(bad)
    (bad / SPEC_FILE).write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(PolicyError, match="not an acodm policy"):
        MixingPolicy.load(bad)
    (bad / SPEC_FILE).write_text(text)
    spec = json.loads(text)
    del spec["domains"]
    (bad / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(PolicyError, match=r"lacks the keys \['domains'\]"):
        MixingPolicy.load(bad)
    with pytest.raises(PolicyError, match="not found"):
        MixingPolicy.load(tmp_path / "nowhere")


def rehash(folder: Path) -> None:
    """Recompute both hashes of an edited export, as someone forging one would."""
    from acodm.io import sha256_bytes

    blob = (folder / ACTOR_FILE).read_bytes()
    spec = json.loads((folder / SPEC_FILE).read_text())
    spec["actor_sha256"] = sha256_bytes(blob)
    spec["spec_sha256"] = spec_digest(spec, blob)
    (folder / SPEC_FILE).write_text(json.dumps(spec))


def test_wrong_shapes_or_names_are_rejected_even_with_a_matching_hash(exported, tmp_path):
    from safetensors.torch import load, save

    bad = copy_export(exported, tmp_path / "s")
    tensors = load((bad / ACTOR_FILE).read_bytes())
    tensors["mu.0.weight"] = torch.zeros(32, 5)
    (bad / ACTOR_FILE).write_bytes(save(tensors))
    rehash(bad)
    with pytest.raises(PolicyError, match=r"shapes.*mu\.0\.weight"):
        MixingPolicy.load(bad)
    del tensors["mu.0.weight"]
    (bad / ACTOR_FILE).write_bytes(save(tensors))
    rehash(bad)
    with pytest.raises(PolicyError, match=r"missing tensors \['mu\.0\.weight'\]"):
        MixingPolicy.load(bad)


def _edit(folder: Path, change) -> None:
    spec = json.loads((folder / SPEC_FILE).read_text())
    change(spec)
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2))


def _swap_features(spec: dict) -> None:
    groups = spec["observation"]["groups"]
    groups[0]["name"], groups[1]["name"] = groups[1]["name"], groups[0]["name"]


def _set_beta(spec: dict) -> None:
    spec["action_mapping"]["beta"] = 100.0


def _reorder_domains(spec: dict) -> None:
    spec["domains"] = spec["domains"][::-1]


def _swap_bounds(spec: dict) -> None:
    space = spec["observation_space"]
    space["low"], space["high"] = space["high"], space["low"]


@pytest.mark.parametrize(
    "change",
    [_swap_features, _set_beta, _reorder_domains, _swap_bounds],
    ids=["features-swapped", "beta-100", "domains-reordered", "bounds"],
)
def test_an_edited_spec_is_refused(exported, tmp_path, change):
    bad = copy_export(exported, tmp_path / "e")
    _edit(bad, change)
    with pytest.raises(PolicyError, match=r"policy\.json was edited after export.*re-export"):
        MixingPolicy.load(bad)


def test_free_form_keys_may_be_edited_and_unknown_keys_are_refused(exported, tmp_path):
    ok = copy_export(exported, tmp_path / "ok")
    _edit(ok, lambda spec: spec.update(extra={"note": "edited"}, versions={"acodm": "9"}))
    assert MixingPolicy.load(ok).spec["extra"] == {"note": "edited"}
    _edit(ok, lambda spec: spec.update(comment="mine"))
    with pytest.raises(PolicyError, match=r"unknown keys \['comment'\].*extra"):
        MixingPolicy.load(ok)


def test_a_version_1_export_is_refused_with_a_re_export_hint(exported, tmp_path):
    old = copy_export(exported, tmp_path / "v1")

    def as_v1(spec: dict) -> None:
        spec["format_version"] = 1
        del spec["spec_sha256"]

    _edit(old, as_v1)
    with pytest.raises(PolicyError, match=r"format_version 1.*acodm export RUN"):
        MixingPolicy.load(old)


def test_the_spec_hash_is_canonical(exported):
    """spec_sha256 = sha256(canonical JSON of the hashed keys + the weights' bytes)."""
    import hashlib

    from acodm.policies.export import HASHED_KEYS

    spec = json.loads((exported / SPEC_FILE).read_text())
    hashed = {key: spec[key] for key in HASHED_KEYS}
    text = json.dumps(hashed, sort_keys=True, separators=(",", ":")).encode()
    want = hashlib.sha256(text + (exported / ACTOR_FILE).read_bytes()).hexdigest()
    assert spec["spec_sha256"] == want and spec["format_version"] == 3


def test_observation_shape_is_checked(exported):
    with pytest.raises(PolicyError, match=r"expects \(9,\)"):
        MixingPolicy.load(exported).act(np.zeros(8, np.float32))


def test_export_refuses_to_overwrite_and_mismatched_domains(agent, exported, env):
    with pytest.raises(Exception, match="already exists"):
        export_actor(
            agent, exported, domains=env.domains, observation={}, beta=1.0, eps=0.1, interval=1
        )
    with pytest.raises(PolicyError, match="3 domain names"):
        export_actor(
            agent,
            exported.parent / "x",
            domains=["a", "b", "c"],
            observation={},
            beta=1.0,
            eps=0.1,
            interval=1,
        )


def test_check_domains(exported):
    policy = MixingPolicy.load(exported)
    assert check_domains(policy, ["d0", "d1", "d2", "d3"]) == (0, 1, 2, 3)
    with pytest.raises(PolicyError, match=r"missing \['d3'\], extra \['web'\]"):
        check_domains(policy, ["d0", "d1", "d2", "web"])
    with pytest.raises(PolicyError, match=r"missing \['d3'\], extra \[\]"):
        check_domains(policy, ["d0", "d1", "d2"])
    with pytest.raises(PolicyError, match="another order"):
        check_domains(policy, ["d1", "d0", "d2", "d3"])
    order = check_domains(policy, ["d1", "d0", "d3", "d2"], allow_reorder=True)
    given = ["d1", "d0", "d3", "d2"]
    assert [given[j] for j in order] == list(policy.domains)
