"""Model presets and the builder (CPU; big presets on the meta device)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from acodm.dynamics.layers import monitored_layers
from acodm.errors import AcodmError
from acodm.models import (
    PRESETS,
    ModelError,
    ModelSpec,
    build_model,
    count_parameters,
    get_preset,
    model_summary,
    padded_vocab_size,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

PYTHIA_VOCAB = 50277  # the GPT-NeoX tokenizer; padded to 50,304 rows as in Pythia
# Total parameters (input embedding + untied output head + blocks) and non-embedding
# parameters, as published in the Pythia model table (EleutherAI/pythia README).
PYTHIA_PARAMS = {
    "14m": (14_067_712, 1_189_888),
    "31m": (30_494_720, 4_739_072),
    "70m": (70_426_624, 18_915_328),
    "160m": (162_322_944, 85_056_000),
    "410m": (405_334_016, 302_311_424),
    "1b": (1_011_781_632, 805_736_448),
}
NOMINAL = {"14m": 14e6, "31m": 31e6, "70m": 70e6, "160m": 160e6, "410m": 410e6, "1b": 1e9}
TINY_VOCAB = 1000  # padded to 1024


def meta_model(name: str, vocab: int = PYTHIA_VOCAB) -> PreTrainedModel:
    """Build without allocating: shapes and names only."""
    with torch.device("meta"):
        return build_model(name, vocab)


@pytest.fixture(scope="module")
def tiny_model() -> PreTrainedModel:
    return build_model("tiny", TINY_VOCAB, seed=0)


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        dtype="bfloat16",  # what saved configs often say: the builder must still give fp32
    ).save_pretrained(tmp_path)
    return tmp_path


# -- presets and parameter counts --------------------------------------------------------------
def test_registry_holds_every_preset() -> None:
    assert list(PRESETS) == ["tiny", "micro", "14m", "31m", "70m", "160m", "410m", "1b"]
    for key, make in PRESETS.items():
        assert make().name == key


@pytest.mark.parametrize("name", sorted(PYTHIA_PARAMS))
def test_preset_parameter_counts_match_pythia(name: str) -> None:
    model = meta_model(name)
    total, non_embedding = PYTHIA_PARAMS[name]
    # total params with the Pythia vocab: exactly Pythia's, and within 15% of the preset's name
    assert count_parameters(model) == total
    assert count_parameters(model, non_embedding=True) == non_embedding
    assert abs(total / NOMINAL[name] - 1) < 0.15
    spec = get_preset(name)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size) == (spec.layers, spec.hidden)
    assert config.use_parallel_residual and not config.tie_word_embeddings
    assert config.rope_parameters["partial_rotary_factor"] == 0.25


def test_micro_is_the_pilots_412k_model() -> None:
    """BENCHMARKS.md's CPU pilot where mixtures separate: 3 x 64 GPT-NeoX, 2k BPE, 412k params."""
    model = meta_model("micro", vocab=2048)
    assert count_parameters(model) == 412_224
    # 2 x 2048 x 64 embedding rows (untied), 3 blocks of 49,984, the final LayerNorm
    assert count_parameters(model, non_embedding=True) == 3 * 49_984 + 128
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 64


def test_preset_aliases() -> None:
    assert get_preset("pythia-70m") == get_preset("70M") == get_preset("pythia_70m")


# -- the tiny model, really built ---------------------------------------------------------------
def test_tiny_forward_loss_is_near_uniform(tiny_model: PreTrainedModel) -> None:
    vocab = padded_vocab_size(TINY_VOCAB)
    assert tiny_model.get_input_embeddings().weight.shape == (vocab, 64)
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())
    tokens = torch.randint(0, TINY_VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    out = tiny_model(input_ids=tokens, labels=tokens)
    assert out.logits.shape == (2, 32, vocab)
    assert math.isfinite(out.loss.item())
    assert abs(out.loss.item() - math.log(vocab)) < 0.3  # small-std init: near-uniform logits


def test_init_is_a_function_of_seed_without_global_side_effects() -> None:
    cpu_state = torch.get_rng_state()
    a = build_model("tiny", TINY_VOCAB, seed=1).state_dict()
    b = build_model("tiny", TINY_VOCAB, seed=1).state_dict()
    c = build_model("tiny", TINY_VOCAB, seed=2).state_dict()
    assert torch.equal(torch.get_rng_state(), cpu_state)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])


def test_vocab_padding() -> None:
    assert padded_vocab_size(PYTHIA_VOCAB) == 50304
    assert [padded_vocab_size(n) for n in (1, 64, 65)] == [64, 64, 128]
    for bad in (0, -3, 1.5):
        with pytest.raises(ModelError, match="vocab_size"):
            padded_vocab_size(bad)  # type: ignore[arg-type]


def test_overrides_and_summary(tiny_model: PreTrainedModel) -> None:
    model = build_model("tiny", TINY_VOCAB, max_seq_len=128, attn_implementation="eager")
    assert model.config.max_position_embeddings == 128
    assert model.config._attn_implementation == "eager"
    summary = model_summary(tiny_model, preset="tiny")
    json.dumps(summary)
    assert summary["preset"] == "tiny"
    assert (summary["layers"], summary["hidden"], summary["vocab_size"]) == (4, 64, 1024)
    assert summary["params"] - summary["non_embedding_params"] == 2 * 1024 * 64
    assert not tiny_model.config.use_cache
    assert tiny_model.generation_config.use_cache


def test_spec_validation() -> None:
    with pytest.raises(ModelError, match="divisible by heads"):
        ModelSpec("bad", layers=2, hidden=100, heads=3, intermediate=400)
    with pytest.raises(ModelError, match="layers must be a positive int"):
        ModelSpec("bad", layers=0, hidden=64, heads=4, intermediate=256)
    with pytest.raises(ModelError, match="rotary"):
        ModelSpec("bad", layers=2, hidden=64, heads=4, intermediate=256, rotary_pct=0.1)
    spec = get_preset("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.layers = 3  # type: ignore[misc]
    custom = dataclasses.replace(spec, name="wide", hidden=128)
    assert build_model(custom, 100).config.hidden_size == 128


# -- any causal LM from a config folder ---------------------------------------------------------
def test_llama_config_folder(llama_dir: Path) -> None:
    model = build_model(llama_dir, 100)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == 128
    assert next(model.parameters()).dtype == torch.float32
    assert [n for n, _ in monitored_layers(model)] == [
        f"model.layers.{i}.mlp.down_proj" for i in (3, 4, 5)
    ]
    same = build_model(llama_dir / "config.json", 100)  # a config.json path works too
    assert type(same) is type(model)


# -- errors -------------------------------------------------------------------------------------
def test_unknown_preset_and_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        build_model("pythia-7b", 100)
    assert all(name in str(info.value) for name in PRESETS)
    assert isinstance(info.value, AcodmError)
    with pytest.raises(ModelError, match="neither a preset"):
        build_model(tmp_path / "missing", 100)
    with pytest.raises(ModelError, match=r"no config\.json"):
        build_model(tmp_path, 100)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        build_model(tmp_path, 100)
    with pytest.raises(ModelError, match="attn_implementation"):
        build_model("tiny", 100, attn_implementation="bogus")


def test_a_two_block_model_is_monitored_with_the_default_count(tmp_path: Path) -> None:
    """Small proxies are what users try first: a 2-block model gets the same observation
    length as any other (3 per-layer slots), its top block repeated, each layer hooked once."""
    from transformers import GPTNeoXConfig

    from acodm.config import debug_cpu
    from acodm.policies.transfer import DynamicsProbe
    from acodm.trainer import Trainer
    from tests.fixtures import make_text_store

    folder = tmp_path / "two-blocks"
    GPTNeoXConfig(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128,
    ).save_pretrained(folder)  # fmt: skip
    model = build_model(folder, 512)
    names = [n for n, _ in monitored_layers(model)]
    assert names == [f"gpt_neox.layers.{i}.mlp.dense_4h_to_h" for i in (0, 1, 1)]
    store = make_text_store(tmp_path / "store")
    tr = Trainer(debug_cpu(str(store.path)).replace(model=str(folder), steps=4, interval=2))
    assert tr.alignment is not None and tr.alignment.names == names[:2]
    dyn = tr.train_interval(np.full(3, 1 / 3)).dynamics
    assert dyn.weight_norm.shape == (3,) and dyn.weight_norm[1] == dyn.weight_norm[2]
    assert dyn.weight_distance[0] != dyn.weight_distance[1] and np.any(dyn.alignment != 0)
    probe = DynamicsProbe(model, store.domains)
    assert probe.n_layers == 3 and probe.alignment.names == names[:2]
    probe.close()
    tr.close()


def test_training_state_bytes_by_layout():
    from acodm.models import training_state_bytes, transformer_blocks

    with torch.device("meta"):
        model = build_model("tiny", 512)
    p = count_parameters(model)
    assert training_state_bytes(model) == {"state": 16 * p, "transient": 4 * p, "total": 20 * p}
    blocks = transformer_blocks(model)
    assert len(blocks) == 4 and all(type(b).__name__ == "GPTNeoXLayer" for b in blocks)
    block = count_parameters(blocks[0])
    root = p - 4 * block  # embeddings, final norm and head
    unit = max(block, root)
    got = training_state_bytes(model, world_size=4, parallel="fsdp", param_dtype="bf16")
    assert got["state"] == -(-16 * p // 4) and got["transient"] == 2 * unit * (2 + 4)
    assert training_state_bytes(model, world_size=4, parallel="fsdp")["transient"] == 16 * unit
    with pytest.raises(ModelError, match="parallel must be"):
        training_state_bytes(model, parallel="zero")
