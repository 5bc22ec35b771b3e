"""The observation's features: one registry entry and one docstring row each, kept in step.

A newcomer adds or changes a feature in ``acodm.envs.spaces.FEATURES`` and in the table of
``DataMixingEnv``'s docstring (the env's spec); these tests fail when the two disagree or when
an entry reads another field than the one it is named after.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from acodm.dynamics.features import Dynamics
from acodm.envs import DataMixingEnv
from acodm.envs.spaces import (
    AGENT_FEATURES,
    DEFAULT_FEATURES,
    FEATURES,
    PROBE_FEATURES,
    REPETITION_FEATURES,
)

LENGTH = {"domain": "k", "layer": "n_layers", "scalar": "1"}
ROW = re.compile(r"^\s*\|\s*`(\w+)`\s*\|\s*(\w+)\s*\|", re.MULTILINE)


def tables() -> list[list[tuple[str, str]]]:
    """The docstring's feature tables, each a list of (name, length) rows."""
    doc = DataMixingEnv.__doc__ or ""
    spec = doc[doc.index("## Observation Space") : doc.index("## Rewards")]
    return [ROW.findall(block) for block in spec.split("| Group") if ROW.search(block)]


def test_every_feature_has_one_docstring_row_with_its_length():
    default, console, repetition, probe = tables()
    assert [name for name, _ in default] == list(DEFAULT_FEATURES)
    assert [name for name, _ in console] == list(AGENT_FEATURES)
    assert [name for name, _ in repetition] == list(REPETITION_FEATURES)
    assert [name for name, _ in probe] == list(PROBE_FEATURES)
    rows = dict(default + console + repetition + probe)
    assert sorted(rows) == sorted(FEATURES)
    for name, length in rows.items():
        assert LENGTH[FEATURES[name].kind] == length, name


def misread(features: dict) -> list[str]:
    """The entries of ``features`` that do not read the field (or agent feature) they name
    (a derived group, e.g. ``log_epochs``, names its source field in ``source``)."""
    rng = np.random.default_rng(0)
    k, n = 3, 2
    d = Dynamics(
        step=1,
        progress=0.25,
        **{f: rng.normal(size=k) for f in ("loss", "loss_change", "share", "epochs", "alignment")},
        gram=np.eye(k),
        weight_norm=rng.normal(size=n),
        weight_distance=rng.normal(size=n),
        agents={f: rng.normal(size=k) for f in AGENT_FEATURES},
        probe_loss=rng.normal(size=k),
        probe_delta=rng.normal(size=k),
    )
    wrong = []
    for name, group in features.items():
        want = d.agents[name] if name in AGENT_FEATURES else getattr(d, group.source or name)
        if not np.array_equal(np.asarray(group.read(d)), want):
            wrong.append(name)
    return wrong


def test_every_entry_reads_the_dynamics_field_it_is_named_after():
    assert misread(FEATURES) == []


def test_a_slip_in_an_entry_is_caught():
    slipped = dict(FEATURES)
    slipped["loss_change"] = dataclasses.replace(FEATURES["loss_change"], read=lambda d: d.loss)
    assert misread(slipped) == ["loss_change"]
