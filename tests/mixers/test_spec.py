"""make_mixer: every spec form, every error, and the registry for later mixers."""

from __future__ import annotations

import json

import pytest

from acodm.mixers import (
    FileMixer,
    MixerError,
    NaturalMixer,
    ODMMixer,
    TemperatureMixer,
    UniformMixer,
    UniMaxMixer,
    known_mixers,
    make_mixer,
    register_mixer,
)
from tests.mixers.util import private_registry


def test_known_mixers():
    assert {"uniform", "natural", "temperature", "file", "unimax", "odm"} <= set(known_mixers())
    # the plugins and DoReMi are known before anything imports them (error messages, --help)
    assert {"doremi", "actor", "ddpg"} <= set(known_mixers())


def test_pretrain_help_lists_every_mixer(capsys):
    """The --mixer help is generated from the registry, so it cannot drift from it."""
    from acodm.cli import main
    from acodm.mixers import mixer_usage

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    usages = mixer_usage()
    assert {u.split(":")[0].split("[")[0] for u in usages} == set(known_mixers())
    for usage in usages:
        assert usage in text, usage
    assert "actor:PATH[,reorder=1]" in usages and "unimax:N" in usages


def test_simple_specs():
    assert isinstance(make_mixer("uniform"), UniformMixer)
    assert isinstance(make_mixer("  natural\n"), NaturalMixer)
    t = make_mixer("temperature:0.3")
    assert isinstance(t, TemperatureMixer) and t.temperature == 0.3
    u = make_mixer("unimax:4")
    assert isinstance(u, UniMaxMixer) and u.max_epochs == 4.0 and u.describe() == "unimax:4"
    assert make_mixer("unimax:2.5").describe() == "unimax:2.5"


def test_file_spec(tmp_path):
    path = tmp_path / "mix.json"
    path.write_text(json.dumps({"a": 1.0}))
    m = make_mixer(f"file:{path}")
    assert isinstance(m, FileMixer) and m.path == str(path) and m.describe() == f"file:{path}"


def test_odm_specs():
    m = make_mixer("odm")
    assert isinstance(m, ODMMixer)
    assert (m.warmup, m.alpha, m.static.describe()) == (0.02, 0.5, "uniform")
    m = make_mixer("odm:static=natural, alpha=0.9,warmup=0")
    assert isinstance(m, ODMMixer)
    assert (m.warmup, m.alpha, m.static.describe()) == (0.0, 0.9, "natural")
    assert m.describe() == "odm:warmup=0,alpha=0.9,static=natural"
    m = make_mixer("odm:static=unimax:4")  # a static spec with its own argument
    assert isinstance(m, ODMMixer) and m.static.describe() == "unimax:4"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "non-empty"),
        ("uniformm", r"unknown mixer 'uniformm'.*known: \[.*'odm'.*'uniform'"),
        ("uniform:3", r"'uniform:3'.*takes no argument"),
        ("natural:", r"'natural:'.*takes no argument"),
        ("temperature", r"'temperature'.*needs an argument"),
        ("temperature:abc", r"'temperature:abc'.*must be a number"),
        ("temperature:-1", r"'temperature:-1'.*must be > 0"),
        ("temperature:nan", r"'temperature:nan'.*finite"),
        ("temperature:inf", r"'temperature:inf'.*finite"),
        ("unimax", r"needs an argument, e.g. 'unimax:4'"),
        ("unimax:0", r"'unimax:0'.*epoch cap N must be > 0"),
        ("file:", r"'file:'.*needs an argument"),
        ("file:/no/such/weights.json", r"does not exist"),
        ("odm:foo=1", r"unknown option 'foo'; known keys: \['alpha', 'static', 'warmup'\]"),
        ("odm:warmup", r"'warmup' is not KEY=VALUE"),
        ("odm:warmup=1.5", r"'odm:warmup=1.5'.*warmup must be <= 1"),
        ("odm:alpha=-0.5", r"must be in \[0, 1\]"),
        ("odm:warmup=0.1,warmup=0.2", r"'warmup' is given twice"),
        ("odm:static=odm", r"static='odm' is not a static mixer"),
        ("odm:static=bogus", r"unknown mixer 'bogus'"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(MixerError, match=match):
        make_mixer(spec)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry (names, usages, examples): registrations do not leak."""
    private_registry(monkeypatch)


def test_register_a_new_mixer(registry):
    seen = []

    def factory(arg):
        seen.append(arg)
        return UniformMixer()

    register_mixer("my-mixer", factory)  # a name no component registers
    assert "my-mixer" in known_mixers()
    assert isinstance(make_mixer("my-mixer:runs/a/actor"), UniformMixer)
    make_mixer("my-mixer")
    assert seen == ["runs/a/actor", None]


def test_register_errors(registry):
    with pytest.raises(MixerError, match="already registered"):
        register_mixer("odm", ODMMixer.from_spec_arg)
    register_mixer("odm", ODMMixer.from_spec_arg, replace=True)
    with pytest.raises(MixerError, match="lowercase"):
        register_mixer("Bad:Name", ODMMixer.from_spec_arg)
