"""The SB3 agent on the analytic env: learning, warm-up + behaviour cloning, frozen actor,
logging and checkpoint/resume (METHOD.md, "The agent")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from stable_baselines3 import DDPG, TD3

from acodm.errors import AcodmError
from acodm.policies.agent import (
    AgentConfig,
    MixingCallback,
    Transition,
    continue_learning,
    fill_replay_buffer,
    load_agent,
    make_agent,
    paper,
    small,
    warmup,
)
from acodm.policies.analytic import TargetMixtureEnv
from acodm.policies.export import action_to_weights, weights_to_action

# Tuned on the analytic env: larger batch/noise/tau than `small()` learn w* in ~1k steps.
FAST = {"gamma": 0.5, "batch_size": 64, "noise_sigma": 0.2, "tau": 0.02, "seed": 0}


def greedy_weights(agent, env: TargetMixtureEnv) -> np.ndarray:
    obs, _ = env.reset(seed=123)
    action, _ = agent.predict(obs, deterministic=True)
    return action_to_weights(action, env.beta, env.eps)


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_presets_and_validation():
    assert small().algorithm == "ddpg" and small().net_arch == (64, 64)
    p = paper()
    assert (p.gamma, p.tau, p.buffer_size, p.batch_size, p.net_arch) == (
        0.95,
        0.001,
        10_000,
        32,
        (1024,) * 6,
    )
    assert AgentConfig.from_json(json.loads(json.dumps(p.to_json()))) == p
    for bad in (
        {"algorithm": "sac"},
        {"net_arch": ()},
        {"gamma": 1.5},
        {"tau": 0.0},
        {"batch_size": 0},
        {"learning_rate": -1.0},
    ):
        with pytest.raises(AcodmError):
            small(**bad)


def test_make_agent_builds_ddpg_and_td3_and_checks_the_action_space():
    env = TargetMixtureEnv()
    ddpg = make_agent(env, small())
    assert type(ddpg) is DDPG and ddpg.learning_starts == 0 and ddpg.actor.net_arch == [64, 64]
    assert isinstance(make_agent(env, small(algorithm="td3")), TD3)
    from gymnasium import spaces

    env.action_space = spaces.Box(0.0, 1.0, (4,), np.float32)
    with pytest.raises(AcodmError, match=r"Box\(-1, 1"):
        make_agent(env, small())


def test_ddpg_improves_on_its_random_actor_quickly():
    """Fast tier: 1000 steps (about 6 s) must at least halve the random actor's weight error
    (measured, seed 0: 0.156 -> 0.033; DDPG's greedy policy is noisy before ~1000 steps)."""
    env = TargetMixtureEnv()
    agent = make_agent(env, small(**FAST))
    before = np.abs(greedy_weights(agent, env) - env.target).max()
    continue_learning(agent, 1000)
    after = np.abs(greedy_weights(agent, env) - env.target).max()
    assert after < 0.5 * before, (before, after)


@pytest.mark.slow
def test_ddpg_learns_the_target_mixture():
    """1500 steps (about 10 s), k = 4, seed 0: max |w - w*| <= 0.05 (measured 0.025; the
    random actor: 0.156)."""
    env = TargetMixtureEnv()
    agent = make_agent(env, small(**FAST))
    continue_learning(agent, 1500)
    w = greedy_weights(agent, env)
    assert np.abs(w - env.target).max() <= 0.05, w


def expert_for(env: TargetMixtureEnv):
    best = weights_to_action(env.target, env.beta, env.eps)
    return lambda obs: best


def test_warmup_fills_the_buffer_with_expert_transitions_and_clones_the_expert():
    env = TargetMixtureEnv()
    agent = make_agent(env, small(seed=1))
    seen = []
    result = warmup(
        agent,
        expert_for(env),
        steps=40,
        bc_steps=300,
        critic_steps=100,
        on_step=lambda t, info: seen.append(info["weights"]),
    )
    rb = agent.replay_buffer
    best = weights_to_action(env.target, env.beta, env.eps)
    assert result.transitions == 40 and rb.size() == 40 and agent.num_timesteps == 40
    assert agent.learning_starts == 40
    np.testing.assert_array_equal(rb.actions[:40, 0], np.tile(best, (40, 1)))
    np.testing.assert_allclose(rb.rewards[:40, 0], 0.0, atol=1e-6)  # the expert is optimal
    np.testing.assert_allclose(np.array(seen), np.tile(env.target, (40, 1)), atol=1e-6)
    assert rb.dones[:40, 0].sum() == 40 // env.episode_length  # episodes end every 16 steps
    # the buffer's next_obs chain: next_obs[t] == obs[t + 1] inside an episode
    np.testing.assert_array_equal(rb.next_observations[:15, 0], rb.observations[1:16, 0])
    # behaviour cloning: the greedy actor now plays the expert's mixture
    assert result.bc_loss is not None and result.bc_loss < 1e-3
    assert np.abs(greedy_weights(agent, env) - env.target).max() < 0.02
    assert result.critic_loss is not None and np.isfinite(result.critic_loss)
    # learning continues the same episode and never takes random actions
    continue_learning(agent, 48)
    assert agent.num_timesteps == 48 and rb.size() == 48


def test_fill_replay_buffer_from_logged_transitions():
    env = TargetMixtureEnv()
    agent = make_agent(env, small())
    obs = np.zeros(9, np.float32)
    ts = [Transition(obs, np.full(4, 0.5, np.float32), -1.0, obs + 1, truncated=True)]
    assert fill_replay_buffer(agent, ts) == 1
    rb = agent.replay_buffer
    assert rb.size() == 1 and rb.rewards[0, 0] == -1.0 and rb.dones[0, 0] and rb.timeouts[0, 0]


def test_frozen_actor_keeps_the_actor_while_the_critic_learns():
    env = TargetMixtureEnv()
    agent = make_agent(env, small(frozen_actor=True, seed=2))
    actor0, target0, critic0 = params(agent.actor), params(agent.actor_target), params(agent.critic)
    result = warmup(agent, expert_for(env), steps=20, bc_steps=50, critic_steps=20)
    assert result.bc_loss is None and "frozen_actor" in result.notes[0]
    continue_learning(agent, 120)
    assert same(params(agent.actor), actor0)
    # the target only sees Polyak rounding: (1 - tau) x + tau x is x up to float32 ulps
    assert all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(params(agent.actor_target), target0, strict=True)
    )
    assert not same(params(agent.critic), critic0)


def test_callback_logs_and_checkpoint_resume_continues(tmp_path):
    env = TargetMixtureEnv()
    agent = make_agent(env, small(seed=4))
    warmup(agent, expert_for(env), steps=10, bc_steps=10, critic_steps=10)
    records: list[tuple[dict, int]] = []
    ckpt = tmp_path / "ckpt"
    cb = MixingCallback(
        lambda m, s: records.append((m, s)),
        domains=env.domains,
        beta=env.beta,
        eps=env.eps,
        checkpoint_dir=ckpt,
        checkpoint_every=20,
    )
    continue_learning(agent, 40, callback=cb)
    assert [s for _, s in records] == list(range(11, 41))
    first, last = records[0][0], records[-1][0]
    assert {"rl/reward", "rl/action/d0", "mix/weight/d3", "rl/critic_loss", "rl/actor_loss"} <= set(
        last
    )
    assert "rl/critic_loss" not in first  # nothing trained before the first post-warm-up step
    assert sum(v for k, v in last.items() if k.startswith("mix/weight/")) == pytest.approx(1.0)
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    assert meta["num_timesteps"] == 40 and meta["buffer_size"] == 40
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers

    resumed = load_agent(ckpt, TargetMixtureEnv())
    assert resumed.num_timesteps == 40 and resumed.replay_buffer.size() == 40
    assert same(params(resumed.actor), params(agent.actor))
    np.testing.assert_array_equal(
        resumed.replay_buffer.actions[:40], agent.replay_buffer.actions[:40]
    )
    continue_learning(resumed, 50)
    assert resumed.num_timesteps == 50 and resumed.replay_buffer.size() == 50
    assert not same(params(resumed.actor), params(agent.actor))
