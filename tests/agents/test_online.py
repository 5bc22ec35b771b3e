"""The agent console inside a training run (acodm.agents.online + the trainer's wiring)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from acodm.agents.annotate import AnnotationError, annotate_store
from acodm.agents.console import ScoredDomainSampler
from acodm.agents.online import OnlineConsole, window_documents
from acodm.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from acodm.config import TrainConfig, debug_cpu
from acodm.data.store import TokenStore
from acodm.metrics import read_metrics
from acodm.pretrain import pretrain
from acodm.trainer import Trainer
from tests.fixtures import (
    comparable_metrics,
    ddp_environment,
    free_port,
    interrupted_then_resumed,
    make_text_store,
)

REF = ("prose",)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def annotated(tmp_path_factory: pytest.TempPathFactory) -> str:
    # no reward split: the console needs none, and the credit tests' data stay as designed
    store = make_text_store(tmp_path_factory.mktemp("online") / "store", reward_fraction=0.0)
    annotate_store(store.path, reference_domains=list(REF), progress=False)
    return str(store.path)


def cfg(store: str, **kw) -> TrainConfig:
    base = debug_cpu(store).replace(
        console=True, steps=24, interval=4, device="cpu", warmup_steps=4
    )
    return base.replace(**kw)


def test_window_documents_take_the_document_of_the_middle_token():
    offsets = np.array([0, 3, 10, 11, 20])  # docs of 3, 7, 1, 9 tokens
    # windows of 4 tokens: middles at 2, 6, 10, 14
    np.testing.assert_array_equal(window_documents(offsets, 4, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(window_documents(offsets, 8, 2), [1, 3])  # middles 4, 12


def _console(store: str, seq_len: int = 64) -> OnlineConsole:
    ts = TokenStore(store)
    n = np.array([(ts.num_tokens(d) - 1) // seq_len for d in ts.domains])
    return OnlineConsole(ts, seq_len, n)


def test_times_seen_counts_earlier_draws_within_and_across_intervals(annotated):
    c = _console(annotated)
    d = np.array([0, 0, 1, 0, 0])
    w = np.array([5, 7, 5, 5, 5])
    f = c.close_interval(d, w, None)
    # window 5 of domain 0 drawn three times: seen 0, 1, 2 times before; domain 1 once
    assert f["repetition_rate"][0] == pytest.approx(2 / 4) and f["repetition_rate"][1] == 0.0
    assert c.times_seen[0][5] == 3 and c.times_seen[0][7] == 1 and c.times_seen[1][5] == 1
    f = c.close_interval(np.array([1, 0]), np.array([5, 6]), None)
    assert f["repetition_rate"].tolist()[:2] == [0.0, 1.0]
    assert c.updates == 0  # no credits, no console update


def test_credits_update_the_console_and_the_window_scores(annotated):
    c = _console(annotated)
    rng = np.random.default_rng(0)
    for _ in range(6):  # credit = the window's quality bin: the quality agent predicts it
        d = rng.integers(0, 3, 64)
        w = np.array([rng.integers(0, c.quality[i].size) for i in d])
        credit = np.array([c.quality_bin[i][j] for i, j in zip(d, w, strict=True)], float)
        c.close_interval(d, w, credit + 0.01 * rng.standard_normal(64))
    assert c.updates == 6
    assert c.alpha["quality"] > 0.5 and c.alpha["quality"] == max(c.alpha.values())
    q = c.console.agents[0].weights
    assert q[-1] > q[0]  # the top quality bin earns more weight than the bottom one
    scores = c.window_scores(1)
    top = c.quality_bin[1] == c.quality_bin[1].max()
    bottom = c.quality_bin[1] == c.quality_bin[1].min()
    seen = c.times_seen[1] == 0
    assert scores[top & seen].mean() > scores[bottom & seen].mean()


def test_domain_level_credit_teaches_the_domain_memory_not_the_within_domain_order(annotated):
    c = _console(annotated)
    rng = np.random.default_rng(1)
    for _ in range(6):  # credit depends on the domain only (plus noise)
        d = rng.integers(0, 3, 64)
        w = np.array([rng.integers(0, c.quality[i].size) for i in d])
        c.close_interval(d, w, d.astype(float) + 0.01 * rng.standard_normal(64))
    assert c.alpha["domain"] < 1 / 3  # it cannot predict credit inside a domain
    dom = c.console.agents[1].weights
    assert dom[2] > dom[1] > dom[0]  # but its memory learned which domains help


def test_missing_annotations_and_unknown_reference_are_clear_errors(tmp_path, annotated):
    store = make_text_store(tmp_path / "plain")
    with pytest.raises(AnnotationError, match="acodm annotate"):
        Trainer(cfg(str(store.path)))
    with pytest.raises(AnnotationError, match="wiki"):
        Trainer(cfg(annotated, console_reference=("wiki",)))


def test_console_run_reports_features_and_scores_the_windows(annotated):
    tr = Trainer(cfg(annotated))
    try:
        assert isinstance(tr.sampler, ScoredDomainSampler)
        reports = [tr.train_interval(np.full(3, 1 / 3)) for _ in range(4)]
    finally:
        tr.close()
    assert tr.console is not None and tr.console.updates == 3  # from the 2nd interval on
    dyn = reports[-1].dynamics
    assert set(dyn.agents) == {"mean_quality", "topic_entropy", "topic_coverage", "repetition_rate"}
    prose = tr.domains.index("prose")
    assert dyn.agents["mean_quality"][prose] == max(dyn.agents["mean_quality"])
    assert sum(dyn.console_alpha.values()) == pytest.approx(1.0)
    m = reports[-1].metrics
    assert "console/alpha/quality" in m and f"agents/topic_entropy/{tr.domains[0]}" in m
    for i in range(3):
        np.testing.assert_array_equal(tr.sampler.window_scores(i), tr.console.window_scores(i))


def test_console_run_resumes_exactly(annotated, tmp_path, monkeypatch):
    # long windows, so that domains cross epochs
    config = cfg(
        annotated,
        steps=24,
        seq_len=512,
        micro_batch_size=8,
        checkpoint_every=8,
        eval_every=12,
        eval_windows=2,
        console_temperature=0.5,
    )
    start = interrupted_then_resumed(config, tmp_path / "full", tmp_path / "cut", 20, monkeypatch)
    assert start.name == "step-00000016"
    assert comparable_metrics(tmp_path / "cut") == comparable_metrics(tmp_path / "full")
    a = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut"))
    assert a.state["console"] == b.state["console"] and a.state["sampler"] == b.state["sampler"]
    assert a.state["console"]["updates"] == 5
    for name, t in a.extra.items():
        if name.startswith("console/"):
            assert torch.equal(t, b.extra[name]), name
    assert any(k.startswith("console/order/0/") for k in a.extra)
    assert max(a.state["sampler"][0]["epoch"]) >= 1


def test_resuming_a_plain_run_with_console_is_refused(annotated, tmp_path):
    pretrain(
        cfg(annotated, console=False, steps=8, checkpoint_every=4), tmp_path / "r", progress=False
    )
    tr = Trainer(cfg(annotated, steps=8))
    try:
        with pytest.raises(CheckpointError, match="console"):
            tr.load_checkpoint(load_checkpoint(latest_checkpoint(tmp_path / "r")))
    finally:
        tr.close()


def test_env_with_console_features_and_reward_terms(annotated):
    import warnings

    from gymnasium.utils.env_checker import check_env

    from acodm.envs import CONSOLE_FEATURES, DataMixingEnv, console_reward_terms

    env = DataMixingEnv(
        annotated,
        cfg(annotated, steps=12),
        features=CONSOLE_FEATURES,
        reward_terms=console_reward_terms(),
    )
    try:
        assert env.observation_spec.features == CONSOLE_FEATURES
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_env(env, skip_render_check=True)
        obs, _ = env.reset(seed=1)
        assert obs.shape == env.observation_space.shape
        obs, reward, _, _, info = env.step(np.zeros(3, dtype=np.float32))
        assert env.observation_space.contains(obs)
        assert set(info["reward_terms"]) == {"alignment", "quality", "diversity"}
        assert reward == pytest.approx(sum(info["reward_terms"].values()))
    finally:
        env.close()


# -- data parallel: both ranks hold the same console and draw disjoint shards ----------------


def _ddp_console_worker(rank: int, world: int, port: int, store: str, out: str) -> None:
    import json

    ddp_environment(rank, world, port)
    tr = Trainer(cfg(store, steps=24, seq_len=512, micro_batch_size=4))
    drawn: list[tuple[int, int]] = []
    real = tr.sampler.next_batch

    def logged():
        b = real()
        drawn.extend(zip(b.domains.tolist(), b.windows.tolist(), strict=True))
        return b

    tr.sampler.next_batch = logged  # type: ignore[method-assign]
    while not tr.done:
        tr.train_interval(np.full(3, 1 / 3))
    assert tr.console is not None
    record = {
        "console": tr.console.state_dict(),
        "seen": [t.tolist() for t in tr.console.times_seen],
        "drawn": drawn,
        "epochs": tr.sampler._epoch.tolist(),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    tr.close()
    torch.distributed.destroy_process_group()


def test_ddp_ranks_share_the_console_and_keep_disjoint_shards(annotated, tmp_path):
    import json

    torch.multiprocessing.spawn(
        _ddp_console_worker, args=(2, free_port(), annotated, str(tmp_path)), nprocs=2, join=True
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["console"] == r1["console"] and r0["seen"] == r1["seen"]
    assert r0["console"]["updates"] == 5
    ts = TokenStore(annotated)
    crossed = False
    for i, d in enumerate(ts.domains):
        n = (ts.num_tokens(d) - 1) // 512
        per_epoch = [[], []]
        for r, rec in enumerate((r0, r1)):
            size = len(range(r, n, 2))
            windows = [w for dom, w in rec["drawn"] if dom == i]
            per_epoch[r] = [set(windows[e : e + size]) for e in range(0, len(windows), size)]
        for e in range(min(len(per_epoch[0]), len(per_epoch[1]))):
            assert not per_epoch[0][e] & per_epoch[1][e], (d, e)  # disjoint shards
            crossed |= e >= 1
    assert crossed  # an epoch ordered by updated scores was compared


def test_policy_trained_with_the_console_transfers_only_to_console_runs(annotated, tmp_path):
    from acodm.errors import AcodmError
    from acodm.policies.export import MixingPolicy
    from acodm.policies.train import train_policy

    proxy = cfg(annotated, console=False, steps=16)  # console=True comes from the argument
    policy = train_policy(
        annotated,
        tmp_path / "proxy",
        proxy=proxy,
        console=True,
        progress=False,
        seed=0,
        version="v0",  # the alignment reward: this store has no reward split
    )
    loaded = MixingPolicy.load(policy)
    assert "mean_quality" in loaded.spec["observation"]["features"]
    rewards = [r for r in read_metrics(tmp_path / "proxy" / "metrics.jsonl") if "rl/reward" in r]
    assert rewards and all("rl/reward/quality" in r for r in rewards)
    target = cfg(annotated, steps=8, mixer=f"actor:{policy}")
    summary = pretrain(target, tmp_path / "target", progress=False)
    assert summary["steps"] == 8
    with pytest.raises(AcodmError, match="--console"):
        pretrain(target.replace(console=False), tmp_path / "plain", progress=False)


def test_online_ddpg_mixer_observes_the_console(annotated, tmp_path):
    config = cfg(annotated, steps=16, mixer="ddpg:warmup=0.3", checkpoint_every=8)
    pretrain(config, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert "mean_quality" in ckpt.state["mixer"]["state"]["agent"]["features"]


# -- the console as one plug-in: four calls, usable outside acodm's trainer ------------------


def test_the_alignment_hooks_hand_out_credits_through_one_method():
    from acodm.dynamics.alignment import GradientAlignment

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    ga = GradientAlignment([("l", layer)], 3, rank=None)

    def interval() -> np.ndarray | None:
        ga.reset()
        ga.set_domains(np.array([0, 1, 2, 0]))
        layer(torch.randn(4, 5, 4)).pow(2).mean().backward()
        ga.all_reduce()
        return ga.hand_out_credits([0])

    assert interval() is None and ga.has_reference  # no reference in the first interval
    credits = interval()
    assert credits is not None and credits.shape == (4,) and np.all(np.isfinite(credits))
    ref = ga.reference()[0]
    assert torch.allclose((ref**2).sum(), torch.tensor(1.0))  # next one: unit norm


def test_the_console_plugs_into_a_plain_torch_loop(annotated):
    from acodm.data.scored_sampler import ScoredDomainSampler as Scored
    from acodm.dynamics.probe import DynamicsProbe, window_losses
    from acodm.models import build_model

    store = TokenStore(annotated)
    sampler = Scored(store, seq_len=64, batch_size=4, seed=0)
    console = OnlineConsole.for_run(store, sampler, 64)
    model = build_model("tiny", store.vocab_size, max_seq_len=64, seed=0)
    probe = DynamicsProbe(model, store.domains)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert probe.alignment is not None
    for step in range(1, 7):
        batch = sampler.next_batch()
        console.on_batch(batch)
        probe.set_domains(batch.domains)
        seq_loss = window_losses(model, torch.from_numpy(batch.tokens))
        seq_loss.mean().backward()
        opt.step()
        opt.zero_grad()
        probe.record(seq_loss, batch.domains)
        if step % 2 == 0:
            probe.reduce()
            agents = console.end_interval(probe.alignment)
            feedback = probe.interval_feedback(step, 6, agents=agents, console_alpha=console.alpha)
            assert feedback.dynamics is not None and set(feedback.dynamics.agents) == set(agents)
    probe.close()
    assert console.updates == 2  # credits from the second interval on
    for i in range(3):
        np.testing.assert_array_equal(sampler.window_scores(i), console.window_scores(i))
