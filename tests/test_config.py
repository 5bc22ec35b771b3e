"""Every named run preset (pretraining and quickstart) builds a valid configuration."""

from __future__ import annotations

import pytest

from acodm.config import PRESETS, ConfigError, TrainConfig, preset
from acodm.models import PRESETS as MODEL_PRESETS
from acodm.models import get_preset
from acodm.policies.quickstart import PRESETS as QUICKSTART_PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_run_presets_are_valid_and_round_trip(name):
    cfg = preset(name, "data/store")
    assert cfg.model in MODEL_PRESETS
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.total_steps() >= 1 and cfg.tokens_per_step() == (
        cfg.seq_len * cfg.micro_batch_size * cfg.grad_accum
    )


@pytest.mark.parametrize("name", sorted(QUICKSTART_PRESETS))
def test_quickstart_presets_are_valid(name):
    p = QUICKSTART_PRESETS[name]
    proxy, target = p.proxy_config("s", seed=3), p.target_config("s", "unimax:4", seed=3)
    for cfg in (proxy, target):
        assert cfg.model in MODEL_PRESETS and cfg.seed == 3 and cfg.store == "s"
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert target.mixer == "unimax:4" and proxy.mixer == "uniform"
    # the policy transfers only if proxy and target observe the same number of layers
    assert proxy.monitored_layers == target.monitored_layers
    assert get_preset(proxy.model).layers >= proxy.monitored_layers
    assert get_preset(target.model).layers >= target.monitored_layers


# The quickstart's settings as they were when its presets were dicts of TrainConfig keywords:
# the preset functions must build exactly these runs (its reported results depend on them).
_QUICKSTART_KWARGS = {
    "cpu": (  # since the study regime: the micro model on a data-constrained store
        dict(
            model="micro", seq_len=128, micro_batch_size=32, steps=100, interval=5,
            warmup_steps=10, lr=3e-3, eval_every=0, eval_windows=8, checkpoint_every=0,
            keep_last=1,
        ),
        dict(
            model="micro", seq_len=128, micro_batch_size=32, steps=200, interval=5,
            warmup_steps=20, lr=3e-3, eval_every=20, eval_windows=16, checkpoint_every=100,
            keep_last=1,
        ),
    ),
    "gpu": (
        dict(
            model="70m", seq_len=1024, micro_batch_size=16, steps=1500, interval=10,
            warmup_steps=50, lr=1e-3, eval_every=0, eval_windows=4,
        ),
        dict(
            model="160m", seq_len=1024, micro_batch_size=16, steps=2000, interval=10,
            warmup_steps=100, lr=6e-4, eval_every=100, eval_windows=16,
        ),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_QUICKSTART_KWARGS))
def test_quickstart_presets_build_the_same_runs_as_before(name):
    p = QUICKSTART_PRESETS[name]
    proxy, target = _QUICKSTART_KWARGS[name]
    assert p.vocab_size == {"cpu": 2048, "gpu": 32768}[name]
    assert p.proxy_config("s", 7).to_dict() == TrainConfig(store="s", seed=7, **proxy).to_dict()
    for mixer in ("actor:runs/proxy/policy", "uniform"):
        built = p.target_config("s", mixer, 7).to_dict()
        assert built == TrainConfig(store="s", mixer=mixer, seed=7, **target).to_dict()
    assert sorted(QUICKSTART_PRESETS) == sorted(_QUICKSTART_KWARGS)  # each one is checked


def test_unknown_preset_and_bad_keys():
    with pytest.raises(ConfigError, match="unknown run preset"):
        preset("nope", "s")
    with pytest.raises(ConfigError, match="unknown configuration keys"):
        TrainConfig.from_dict({"store": "s", "learning_rate": 1.0})


def test_study_presets_share_the_protocol_and_the_proxy_is_cheaper():
    for size in ("cpu", "gpu"):
        proxy, target = preset(f"study_{size}_proxy", "s"), preset(f"study_{size}_target", "s")
        same = ("seq_len", "micro_batch_size", "grad_accum", "interval", "monitored_layers")
        assert all(getattr(proxy, f) == getattr(target, f) for f in same)
        assert proxy.total_steps() < target.total_steps()
        assert target.eval_windows >= 32 and 0 < target.eval_every <= target.total_steps() // 20
        assert target.total_steps() % target.eval_every == 0
        assert get_preset(proxy.model).layers >= proxy.monitored_layers
    cpu = preset("study_cpu_target", "s")
    assert (cpu.model, cpu.seq_len, cpu.micro_batch_size, cpu.steps) == ("micro", 128, 32, 200)
