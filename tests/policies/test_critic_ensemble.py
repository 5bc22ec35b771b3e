"""``AgentConfig.critics`` / ``pessimism``: an explicit critic ensemble whose lower confidence
bound ``mean - beta * sd`` (minus the prior anchor) is the actor's objective; the critics'
own fit is SB3's; the ensemble survives save/load; the logged critic loss is per critic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acodm.policies.agent import (
    AgentError,
    AnchoredCritic,
    UpdateLogger,
    load_agent,
    make_agent,
    small,
)
from acodm.policies.agent import save_checkpoint as save_agent
from acodm.policies.analytic import TargetMixtureEnv

from .test_prior_anchor import LinearInAction, _obs, fit_actor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_is_one_critic_and_the_first_critic_objective():
    env = TargetMixtureEnv()
    plain = make_agent(env, small(seed=3))
    assert plain.critic.n_critics == 1 and not plain.critic.ensemble
    td3 = make_agent(env, small(seed=3, algorithm="td3"))
    assert td3.critic.n_critics == 2 and not td3.critic.ensemble  # SB3's TD3: follows critic 1
    obs, act = _obs(env), torch.rand(16, 4) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(td3.critic.q1_forward(obs, act), td3.critic(obs, act)[0])


@pytest.mark.parametrize(("beta", "anchor"), [(0.0, 0.0), (1.5, 0.0), (0.7, 0.4)])
def test_the_actor_objective_is_the_ensembles_lower_bound(beta, anchor):
    env = TargetMixtureEnv()
    agent = make_agent(env, small(seed=4, critics=4, pessimism=beta, prior_anchor=anchor))
    assert isinstance(agent.critic, AnchoredCritic) and agent.critic.n_critics == 4
    assert len(agent.critic_target.q_networks) == 4
    obs, act = _obs(env), torch.rand(16, 4) * 2 - 1
    with torch.no_grad():
        qs = torch.cat(agent.critic(obs, act), dim=1).numpy().astype(np.float64)
        want = qs.mean(axis=1) - beta * qs.std(axis=1) - anchor * (act.numpy() ** 2).sum(axis=1)
        got = agent.critic.q1_forward(obs, act).numpy()[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.ptp(qs, axis=1).min() > 0  # the critics start from different inits


def test_pessimism_holds_the_actor_back_only_where_the_critics_disagree():
    """Two linear fake critics: domain 0 both say 0.6 per unit action, domain 1 they say 1.0
    and 0.2 (mean 0.6). Objective ``0.6 a0 + 0.6 a1 - beta 0.4 |a1| - c ||a||^2`` with c = 1:
    ``a0 = 0.3`` always, ``a1 = (0.6 - 0.4 beta) / 2``: 0.3 without pessimism, 0.1 at beta 1."""
    env = TargetMixtureEnv()
    got = {}
    for beta in (0.0, 1.0):
        agent = make_agent(
            env, small(seed=1, critics=2, pessimism=beta, prior_anchor=1.0, zero_init_actor=True)
        )
        agent.critic.q_networks[0] = LinearInAction(torch.tensor([0.6, 1.0, 0.0, 0.0]))
        agent.critic.q_networks[1] = LinearInAction(torch.tensor([0.6, 0.2, 0.0, 0.0]))
        got[beta] = fit_actor(agent, _obs(env, 64)).numpy()
    np.testing.assert_allclose(got[0.0][:2], [0.3, 0.3], atol=0.02)
    np.testing.assert_allclose(got[1.0][:2], [0.3, 0.1], atol=0.02)
    np.testing.assert_allclose(got[1.0][2:], [0.0, 0.0], atol=0.02)


def test_the_ensemble_survives_save_and_load(tmp_path):
    env = TargetMixtureEnv()
    agent = make_agent(env, small(seed=2, critics=3, pessimism=0.5, prior_anchor=0.3))
    save_agent(agent, tmp_path / "ckpt")
    back = load_agent(tmp_path / "ckpt", env)
    assert isinstance(back.critic, AnchoredCritic)
    assert (back.critic.n_critics, back.critic.ensemble, back.critic.pessimism) == (3, True, 0.5)
    obs, act = _obs(env), torch.rand(16, 4) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(
            back.critic.q1_forward(obs, act), agent.critic.q1_forward(obs, act)
        )


def test_the_logged_critic_loss_is_one_critics_mean():
    seen = []
    logger = UpdateLogger(seen.append, critics=3)
    logger.record("train/n_updates", 5)
    logger.record("train/actor_loss", -2.0)
    logger.record("train/critic_loss", 0.9)  # SB3's sum over the 3 critics
    assert seen == [{"n_updates": 5, "actor_loss": -2.0, "critic_loss": pytest.approx(0.3)}]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"critics": 0}, "critics must be >= 1"),
        ({"critics": 3, "pessimism": -1.0}, "pessimism must be"),
        ({"critics": 3, "pessimism": float("nan")}, "pessimism must be"),
        ({"pessimism": 0.5}, "critics >= 2"),
        ({"critics": 1, "pessimism": 0.5}, "critics >= 2"),
    ],
)
def test_bad_ensemble_settings_are_refused(changes, match):
    with pytest.raises(AgentError, match=match):
        small(**changes)
