"""``AgentConfig.prior_anchor``: the actor maximises ``Q(s, a) - c ||a||^2``; the critic's
own fit is unchanged; the anchor survives save/load; the residual action turns it on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acodm.policies.agent import (
    V1_PRIOR_ANCHOR,
    AgentConfig,
    AgentError,
    AnchoredCritic,
    load_agent,
    make_agent,
    residual_agent_defaults,
    small,
)
from acodm.policies.agent import save_checkpoint as save_agent
from acodm.policies.analytic import TargetMixtureEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LinearInAction(torch.nn.Module):
    """Test fake of a critic head: ``Q(s, a) = g . a`` (the last k inputs are the action)."""

    def __init__(self, g: torch.Tensor) -> None:
        super().__init__()
        self.g = g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -len(self.g) :] @ self.g[:, None]


def _obs(env: TargetMixtureEnv, n: int = 16) -> torch.Tensor:
    return torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(n)]))


def test_the_actor_objective_subtracts_the_anchor_and_the_critic_fit_does_not():
    env = TargetMixtureEnv()
    plain = make_agent(env, small(seed=3))
    anchored = make_agent(env, small(seed=3, prior_anchor=0.7))
    assert isinstance(anchored.critic, AnchoredCritic)
    assert anchored.critic.prior_anchor == 0.7 and plain.critic.prior_anchor == 0.0
    obs, act = _obs(env), torch.rand(16, 4) * 2 - 1
    with torch.no_grad():
        base = plain.critic.q1_forward(obs, act)
        got = anchored.critic.q1_forward(obs, act)
        expected = base - 0.7 * (act**2).sum(dim=1, keepdim=True)
        torch.testing.assert_close(got, expected)
        # forward (the critic loss and the TD targets) is SB3's, anchor or not
        for q, p in zip(anchored.critic(obs, act), plain.critic(obs, act), strict=True):
            torch.testing.assert_close(q, p)
        torch.testing.assert_close(
            anchored.critic_target(obs, act)[0], plain.critic_target(obs, act)[0]
        )


def fit_actor(agent, obs: torch.Tensor, steps: int = 1500) -> torch.Tensor:
    """Adam on the actor alone against the critic's actor objective; the mean action."""
    opt = torch.optim.Adam(agent.actor.parameters(), lr=0.01)
    for _ in range(steps):
        loss = -agent.critic.q1_forward(obs, agent.actor(obs)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return agent.actor(obs).mean(dim=0)


@pytest.mark.parametrize(("anchor", "expected"), [(0.0, 1.0), (1.0, 0.3), (0.25, 1.0)])
def test_under_a_linear_critic_the_actor_moves_by_gradient_over_twice_the_anchor(anchor, expected):
    """Fitting the actor to ``g . a - c ||a||^2`` with g = 0.6 per domain gives a = g / 2c,
    clipped to the action bound (plain DDPG, c = 0, saturates at the bound)."""
    env = TargetMixtureEnv()
    agent = make_agent(env, small(seed=1, prior_anchor=anchor, zero_init_actor=True))
    g = torch.tensor([0.6, -0.6, 0.6, -0.6])
    agent.critic.q_networks[0] = LinearInAction(g)
    a = fit_actor(agent, _obs(env, 64))
    tol = 0.02 if expected < 1 else 0.05
    np.testing.assert_allclose(a.numpy(), (torch.sign(g) * expected).numpy(), atol=tol)


def test_the_anchor_survives_save_and_load(tmp_path):
    env = TargetMixtureEnv()
    agent = make_agent(env, small(seed=2, prior_anchor=0.3))
    save_agent(agent, tmp_path / "ckpt")
    back = load_agent(tmp_path / "ckpt", env)
    assert isinstance(back.critic, AnchoredCritic) and back.critic.prior_anchor == 0.3
    assert back.policy.prior_anchor == 0.3


def test_residual_defaults_and_validation():
    on = residual_agent_defaults(small(), residual=True)
    off = residual_agent_defaults(small(), residual=False)
    assert (on.prior_anchor, on.zero_init_actor) == (V1_PRIOR_ANCHOR, True)
    assert (off.prior_anchor, off.zero_init_actor) == (0.0, False)
    # explicit values win over the action's defaults
    assert residual_agent_defaults(small(prior_anchor=0.0), residual=True).prior_anchor == 0.0
    assert AgentConfig.from_json(small(prior_anchor=0.2).to_json()).prior_anchor == 0.2
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(AgentError, match="prior_anchor"):
            small(prior_anchor=bad)
