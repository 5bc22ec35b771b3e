"""``AgentConfig.zero_init_actor``: the untrained actor outputs 0 (with the residual action: the
prior), its target copies that, and DDPG still learns from there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acodm.policies.agent import AgentConfig, continue_learning, load_agent, make_agent, small
from acodm.policies.agent import save_checkpoint as save_agent
from acodm.policies.analytic import TargetMixtureEnv
from acodm.policies.export import action_to_weights

FAST = {"gamma": 0.5, "batch_size": 64, "noise_sigma": 0.2, "tau": 0.02, "seed": 0}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def observations(env: TargetMixtureEnv, n: int = 32) -> torch.Tensor:
    return torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(n)]))


def test_the_untrained_actor_and_its_target_output_zero():
    env = TargetMixtureEnv()
    agent = make_agent(env, small(zero_init_actor=True, seed=2))
    last = agent.actor.mu[-2]
    assert isinstance(last, torch.nn.Linear) and isinstance(agent.actor.mu[-1], torch.nn.Tanh)
    assert not last.weight.any() and not last.bias.any()
    obs = observations(env)
    with torch.no_grad():
        assert not agent.actor(obs).any() and not agent.actor_target(obs).any()
    for p, q in zip(agent.actor.parameters(), agent.actor_target.parameters(), strict=True):
        assert torch.equal(p, q)
    # the hidden layers keep their random init: their activations reach the output layer
    assert agent.actor.mu[0].weight.abs().sum() > 0
    # off by default (None and False), so existing agents are what they were
    for cfg in (small(), small(zero_init_actor=False)):
        assert make_agent(env, cfg).actor.mu[-2].weight.abs().sum() > 0
    assert AgentConfig.from_json(small(zero_init_actor=True).to_json()).zero_init_actor is True


def test_gradients_reach_the_output_layer_first_then_the_hidden_layers():
    env = TargetMixtureEnv()
    agent = make_agent(env, small(zero_init_actor=True, **FAST, learning_starts=10**6))
    continue_learning(agent, 2 * FAST["batch_size"])  # fill the buffer without updating
    hidden = agent.actor.mu[0].weight.detach().clone()
    agent.train(gradient_steps=1, batch_size=FAST["batch_size"])
    # the output layer moved (its input, the hidden activations, is non-zero) ...
    assert agent.actor.mu[-2].weight.abs().sum() > 0
    # ... the hidden layers did not yet (their gradient went through a zero output layer)
    assert torch.equal(agent.actor.mu[0].weight, hidden)
    agent.train(gradient_steps=1, batch_size=FAST["batch_size"])
    assert not torch.equal(agent.actor.mu[0].weight, hidden)


def test_ddpg_learns_from_a_zero_actor():
    """From the zero action (uniform weights here, as a uniform prior would give), 1500 steps
    at least halve the weight error (measured, seeds 0 / 1 / 2: 0.15 -> 0.030 / 0.036 / 0.051;
    from a random actor 0.025 / 0.044 / 0.047, tests/policies/test_agent.py)."""
    env = TargetMixtureEnv()
    agent = make_agent(env, small(zero_init_actor=True, **FAST))
    obs, _ = env.reset(seed=123)
    before = np.abs(action_to_weights(np.zeros(4), env.beta, env.eps) - env.target).max()
    assert np.array_equal(agent.predict(obs, deterministic=True)[0], np.zeros(4, np.float32))
    continue_learning(agent, 1500)
    action, _ = agent.predict(obs, deterministic=True)
    after = np.abs(action_to_weights(action, env.beta, env.eps) - env.target).max()
    assert after < 0.5 * before, (before, after)


def test_a_saved_zero_actor_loads_as_zero(tmp_path):
    env = TargetMixtureEnv()
    agent = make_agent(env, small(zero_init_actor=True, seed=4))
    save_agent(agent, tmp_path / "agent")
    again = load_agent(tmp_path / "agent", env)
    with torch.no_grad():
        assert not again.actor(observations(env)).any()
