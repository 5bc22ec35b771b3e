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
    proxy = TrainConfig(store="s", **p.proxy)
    target = TrainConfig(store="s", **p.target)
    # the policy transfers only if proxy and target observe the same number of layers
    assert proxy.monitored_layers == target.monitored_layers
    assert get_preset(proxy.model).layers >= proxy.monitored_layers
    assert get_preset(target.model).layers >= target.monitored_layers


def test_unknown_preset_and_bad_keys():
    with pytest.raises(ConfigError, match="unknown run preset"):
        preset("nope", "s")
    with pytest.raises(ConfigError, match="unknown configuration keys"):
        TrainConfig.from_dict({"store": "s", "learning_rate": 1.0})
