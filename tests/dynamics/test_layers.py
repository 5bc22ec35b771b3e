"""The monitored-layer rule (acodm.dynamics.layers) on real models: GPT-NeoX presets (big ones
on the meta device), patterns, and blocks beyond the known names."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

from acodm.dynamics.layers import (
    ALL_DEPTHS,
    UPPER_HALF,
    find_blocks,
    mlp_output_projection,
    monitored_layers,
    select_depths,
)
from acodm.errors import ModelError
from acodm.models import build_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def meta_model(name: str) -> PreTrainedModel:
    """Build without allocating: shapes and names only (the Pythia vocabulary)."""
    with torch.device("meta"):
        return build_model(name, 50277)


@pytest.fixture(scope="module")
def tiny_model() -> PreTrainedModel:
    return build_model("tiny", 1000, seed=0)


def test_gpt_neox_monitored_names(tiny_model: PreTrainedModel) -> None:
    def names(model: nn.Module) -> list[str]:
        return [n for n, _ in monitored_layers(model)]

    neox = "gpt_neox.layers.{}.mlp.dense_4h_to_h"
    assert names(tiny_model) == [neox.format(i) for i in (1, 2, 3)]
    assert names(meta_model("70m")) == [neox.format(i) for i in (3, 4, 5)]
    assert names(meta_model("410m")) == [neox.format(i) for i in (12, 18, 23)]
    assert names(meta_model("1b")) == [neox.format(i) for i in (8, 12, 15)]
    _, layer = monitored_layers(tiny_model)[0]
    assert (layer.in_features, layer.out_features) == (256, 64)
    assert len(find_blocks(tiny_model)) == 4


def test_select_depths() -> None:
    for region in (UPPER_HALF, ALL_DEPTHS):
        six, sixteen = select_depths(6, 3, region=region), select_depths(16, 3, region=region)
        assert len(six) == len(sixteen) == 3
        for n, idx in ((6, six), (16, sixteen)):
            assert idx == sorted(set(idx)) and idx[-1] == n - 1
    assert select_depths(6, 3) == [3, 4, 5]
    assert select_depths(16, 3) == [8, 12, 15]
    assert select_depths(16, 4, region=ALL_DEPTHS) == [0, 5, 10, 15]
    assert select_depths(4, 3) == [1, 2, 3]  # region too small: extended downwards
    assert select_depths(5, 5) == [0, 1, 2, 3, 4]
    assert select_depths(9, 1) == [8]
    # fewer blocks than the count: every block, the upper ones repeated, same length
    assert select_depths(2, 3) == [0, 1, 1]
    assert select_depths(1, 3) == [0, 0, 0]
    assert select_depths(3, 5, region=ALL_DEPTHS) == [0, 1, 1, 2, 2]
    with pytest.raises(ModelError, match="at least one block"):
        select_depths(0, 3)
    with pytest.raises(ModelError, match="region"):
        select_depths(6, 2, region=(0.8, 0.2))


def test_patterns_override(tiny_model: PreTrainedModel) -> None:
    got = monitored_layers(tiny_model, patterns=["gpt_neox.layers.0.mlp.dense_h_to_4h"])
    assert [n for n, _ in got] == ["gpt_neox.layers.0.mlp.dense_h_to_4h"]
    got = monitored_layers(tiny_model, patterns=["*.attention.dense", "*.layers.3.attention.*"])
    expected = [f"gpt_neox.layers.{i}.attention.dense" for i in range(3)] + [
        "gpt_neox.layers.3.attention.query_key_value",  # module order, each module once
        "gpt_neox.layers.3.attention.dense",
    ]
    assert [n for n, _ in got] == expected
    with pytest.raises(ModelError, match="matches no module"):
        monitored_layers(tiny_model, patterns=["*.mlp.down_proj"])
    with pytest.raises(ModelError, match=r"without a 2-D weight; monitored layers are linear maps"):
        monitored_layers(tiny_model, patterns=["gpt_neox.layers.0.mlp"])


class _Moe(nn.Module):
    """A block whose MLP is a router plus 8 experts: the experts list must not be the blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Module()
        self.mlp.gate = nn.Linear(8, 2)  # narrows, but to num_experts, not back to the width
        self.mlp.experts = nn.ModuleList(nn.Linear(8, 8) for _ in range(8))


class _Ffn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feed_forward = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))


def test_block_and_projection_rules_beyond_known_names() -> None:
    moe = nn.Module()
    moe.blocks = nn.ModuleList(_Moe() for _ in range(3))
    assert len(find_blocks(moe)) == 3
    with pytest.raises(ModelError, match="MLP output projection"):
        mlp_output_projection(moe.blocks[0])
    ffn = nn.Module()
    ffn.stack = nn.ModuleList(_Ffn() for _ in range(6))
    assert [n for n, _ in monitored_layers(ffn)] == [f"stack.{i}.feed_forward.2" for i in (3, 4, 5)]
    with pytest.raises(ModelError, match=r"no nn\.ModuleList"):
        find_blocks(nn.Linear(2, 2))
