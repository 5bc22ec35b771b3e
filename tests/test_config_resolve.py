"""resolve_config: the one way the env and proxy training put a run's TrainConfig together."""

from __future__ import annotations

import pytest

from acodm.config import ConfigError, TrainConfig, cpu_small, debug_cpu, resolve_config


def test_a_config_a_preset_name_or_the_default():
    cfg = TrainConfig(store="a", steps=7)
    assert resolve_config(cfg) is cfg
    assert resolve_config(cfg, "b").store == "b" and resolve_config(cfg, "b").steps == 7
    assert resolve_config("cpu_small", "s") == cpu_small("s")
    assert resolve_config(None, "s") == debug_cpu("s")
    assert resolve_config(None, "s", default=cpu_small) == cpu_small("s")
    got = resolve_config("debug_cpu", "s", overrides={"steps": 5}, interval=3)
    assert (got.steps, got.interval) == (5, 3)


def test_bad_inputs_are_config_errors_that_name_the_config():
    with pytest.raises(ConfigError, match="bad proxy override"):
        resolve_config("debug_cpu", "s", overrides={"no_such_field": 1}, what="proxy")
    with pytest.raises(ConfigError, match="needs a store"):
        resolve_config("debug_cpu")
    with pytest.raises(ConfigError, match="preset name or a TrainConfig"):
        resolve_config(3, "s")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown run preset"):
        resolve_config("nope", "s")


def test_the_env_and_proxy_training_use_it(monkeypatch, tmp_path):
    import acodm.envs.data_mixing as env_module
    import acodm.policies.train as train_module

    calls: list[str] = []
    real = resolve_config

    def spy(*args, **kwargs):
        calls.append(kwargs.get("what", "config"))
        raise ConfigError("stop here")

    monkeypatch.setattr(env_module, "resolve_config", spy)
    monkeypatch.setattr(train_module, "resolve_config", spy)
    with pytest.raises(ConfigError, match="stop here"):
        env_module.DataMixingEnv(str(tmp_path), "debug_cpu")
    with pytest.raises(ConfigError, match="stop here"):
        train_module._resolve_proxy(tmp_path, "debug_cpu", None, None)
    assert calls == ["config", "proxy"] and real is not spy
