"""Causal LMs pretrained from scratch: Pythia-shaped presets and a builder.

1. **Shapes.** :class:`ModelSpec` is a frozen, validated GPT-NeoX shape; the presets (``tiny``,
   ``14m`` ... ``1b``) are the Pythia suite's shapes (rotary on 25% of each head, parallel
   residual, untied input/output embeddings). With the Pythia vocabulary (50,277 tokens padded
   to 50,304) each preset has exactly the parameter count Pythia publishes.
   ``micro`` (3 x 64) is the CPU study regime's model (not a Pythia shape).
2. **Building.** :func:`build_model` makes a randomly initialised ``transformers`` causal LM from a
   preset name, a :class:`ModelSpec`, or a local ``config.json`` of any architecture (e.g. Llama).
   The vocabulary is always the store's tokenizer, padded to a multiple of 64 (faster matmuls;
   the extra rows are never targets). Initialisation is a pure function of ``seed``.

Which of a model's weight matrices the dynamics read (the monitored layers) is decided in
:mod:`acodm.dynamics.layers`, for these models and any other causal LM.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from acodm.errors import ModelError  # re-exported: its home before acodm.errors

if TYPE_CHECKING:
    from transformers import GPTNeoXConfig, PretrainedConfig, PreTrainedModel

__all__ = [
    "PRESETS",
    "VOCAB_MULTIPLE",
    "ModelError",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "get_preset",
    "gpt_neox_config",
    "micro",
    "model_config",
    "model_summary",
    "padded_vocab_size",
    "pythia_1b",
    "pythia_14m",
    "pythia_31m",
    "pythia_70m",
    "pythia_160m",
    "pythia_410m",
    "tiny",
    "training_state_bytes",
    "transformer_blocks",
]


# Pad the embedding/output matrices so their row count is a multiple of 64: tensor-core
# friendly, and what Pythia did (50,277 tokens -> 50,304 rows).
VOCAB_MULTIPLE = 64


def padded_vocab_size(n: int, multiple: int = VOCAB_MULTIPLE) -> int:
    """``n`` (a tokenizer's vocab size) rounded up to a multiple of ``multiple``.

    >>> padded_vocab_size(50277)
    50304
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ModelError(f"vocab_size must be a positive int, got {n!r}")
    if multiple < 1:
        raise ModelError(f"the padding multiple must be >= 1, got {multiple}")
    return -(-n // multiple) * multiple


# -- shapes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """The shape of a GPT-NeoX decoder (the Pythia family), validated on creation.

    ``layers`` blocks of width ``hidden`` with ``heads`` attention heads and an MLP of width
    ``intermediate``. Rotary embeddings cover ``rotary_pct`` of each head's dimensions (Pythia:
    25%); ``max_seq_len`` only sizes the rotary cache (no learned positions, no parameters).
    Dropout is always 0 (single-epoch pretraining, as Pythia).
    """

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    max_seq_len: int = 2048
    rotary_pct: float = 0.25
    rotary_base: float = 10_000.0
    parallel_residual: bool = True
    tie_embeddings: bool = False
    init_std: float = 0.02
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        where = f"model spec {self.name!r}"
        for field in ("layers", "hidden", "heads", "intermediate", "max_seq_len"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"{where}: {field} must be a positive int, got {value!r}")
        if self.hidden % self.heads:
            raise ModelError(
                f"{where}: hidden ({self.hidden}) must be divisible by heads ({self.heads}); "
                f"each head gets hidden / heads dimensions"
            )
        if not 0.0 < self.rotary_pct <= 1.0:
            raise ModelError(f"{where}: rotary_pct must be in (0, 1], got {self.rotary_pct}")
        rot = self.rotary_dims
        if rot < 2 or rot % 2:
            raise ModelError(
                f"{where}: rotary_pct={self.rotary_pct} of head_dim={self.head_dim} gives {rot} "
                f"rotary dimensions; rotary embeddings rotate pairs, so it must be even and >= 2"
            )
        if self.rotary_base <= 0 or self.init_std <= 0 or self.layer_norm_eps <= 0:
            raise ModelError(f"{where}: rotary_base, init_std and layer_norm_eps must be > 0")

    @property
    def head_dim(self) -> int:
        """Dimensions per attention head."""
        return self.hidden // self.heads

    @property
    def rotary_dims(self) -> int:
        """Dimensions per head that get rotary embeddings (truncated, as transformers does)."""
        return int(self.head_dim * self.rotary_pct)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for a run's config.json)."""
        return asdict(self)


def tiny() -> ModelSpec:
    """Seconds-long CPU preset for tests and smoke runs (~16k non-embedding params per block).

    4 blocks rather than 2, so the default 3 monitored layers are distinct (see
    :func:`select_depths`).
    """
    return ModelSpec("tiny", layers=4, hidden=64, heads=4, intermediate=256, max_seq_len=512)


def micro() -> ModelSpec:
    """The study regime's CPU model: 3 blocks of width 64 (about 412k parameters with a 2k
    vocabulary, most of them embeddings), the ``BENCHMARKS.md`` pilot where mixtures separate:
    200 steps of 32 x 128 tokens take 1-2 minutes on 2 CPU cores."""
    return ModelSpec("micro", layers=3, hidden=64, heads=4, intermediate=256, max_seq_len=512)


def pythia_14m() -> ModelSpec:
    """Pythia-14M: 6 x 128, 4 heads."""
    return ModelSpec("14m", layers=6, hidden=128, heads=4, intermediate=512)


def pythia_31m() -> ModelSpec:
    """Pythia-31M: 6 x 256, 8 heads."""
    return ModelSpec("31m", layers=6, hidden=256, heads=8, intermediate=1024)


def pythia_70m() -> ModelSpec:
    """Pythia-70M: 6 x 512, 8 heads."""
    return ModelSpec("70m", layers=6, hidden=512, heads=8, intermediate=2048)


def pythia_160m() -> ModelSpec:
    """Pythia-160M: 12 x 768, 12 heads."""
    return ModelSpec("160m", layers=12, hidden=768, heads=12, intermediate=3072)


def pythia_410m() -> ModelSpec:
    """Pythia-410M: 24 x 1024, 16 heads (the paper's proxy)."""
    return ModelSpec("410m", layers=24, hidden=1024, heads=16, intermediate=4096)


def pythia_1b() -> ModelSpec:
    """Pythia-1B: 16 x 2048, 8 heads (the paper's target)."""
    return ModelSpec("1b", layers=16, hidden=2048, heads=8, intermediate=8192)


PRESETS: Mapping[str, Callable[[], ModelSpec]] = MappingProxyType(
    {
        "tiny": tiny,
        "micro": micro,
        "14m": pythia_14m,
        "31m": pythia_31m,
        "70m": pythia_70m,
        "160m": pythia_160m,
        "410m": pythia_410m,
        "1b": pythia_1b,
    }
)


def _preset_key(name: str) -> str:
    """Accept ``70m``, ``70M``, ``pythia-70m`` and ``pythia_70m`` for the same preset."""
    key = name.strip().lower()
    for prefix in ("pythia-", "pythia_"):
        key = key.removeprefix(prefix)
    return key


def get_preset(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a named preset (``pythia-`` prefix optional)."""
    key = _preset_key(name)
    if key not in PRESETS:
        raise ModelError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[key]()


def gpt_neox_config(spec: ModelSpec, vocab_size: int) -> GPTNeoXConfig:
    """The ``transformers`` config of ``spec``; ``vocab_size`` (the tokenizer's) is padded here."""
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=padded_vocab_size(vocab_size),
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        intermediate_size=spec.intermediate,
        hidden_act="gelu",
        max_position_embeddings=spec.max_seq_len,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(spec.rotary_base),
            "partial_rotary_factor": float(spec.rotary_pct),
        },
        use_parallel_residual=spec.parallel_residual,
        tie_word_embeddings=spec.tie_embeddings,
        initializer_range=spec.init_std,
        layer_norm_eps=spec.layer_norm_eps,
        attention_dropout=0.0,
        hidden_dropout=0.0,
    )


# -- building ---------------------------------------------------------------------------------
def _config_from_path(path: Path) -> PretrainedConfig:
    """Load a local config folder or ``config.json``; never touches the network."""
    from transformers import AutoConfig

    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelError(f"model folder {str(path)!r} has no config.json")
    try:
        return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot read a transformers config from {str(path)!r}: {e}") from e


def model_config(
    model: str | Path | ModelSpec, vocab_size: int, *, max_seq_len: int | None = None
) -> PretrainedConfig:
    """The ``transformers`` config :func:`build_model` would instantiate (nothing allocated).

    ``model``: a :class:`ModelSpec`, a preset name, or a local config folder / ``config.json``
    path. The config's vocabulary is replaced by ``padded_vocab_size(vocab_size)``: the model
    is trained from scratch on the store's tokenizer, whatever the file said.
    """
    if max_seq_len is not None and (isinstance(max_seq_len, bool) or max_seq_len < 1):
        raise ModelError(f"max_seq_len must be a positive int or None, got {max_seq_len!r}")
    if isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, str) and _preset_key(model) in PRESETS:
        spec = get_preset(model)
    else:
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelError(
                f"model {str(model)!r} is neither a preset ({', '.join(PRESETS)}) nor an "
                f"existing config folder or config.json file"
            )
        config = _config_from_path(path)
        config.vocab_size = padded_vocab_size(vocab_size)
        if max_seq_len is not None:
            config.max_position_embeddings = max_seq_len
        return config
    if max_seq_len is not None:
        spec = replace(spec, max_seq_len=max_seq_len)
    return gpt_neox_config(spec, vocab_size)


def _seeded_from_config(config: PretrainedConfig, seed: int, attn: str) -> PreTrainedModel:
    """Instantiate under a forked RNG seeded with ``seed``, so init is a function of ``seed``.

    transformers initialises weights from torch's global generators and takes no generator
    argument; ``fork_rng`` restores the CPU and CUDA states afterwards, so building a model
    never shifts the random stream of the caller (data order, dropout, the agent).
    """
    from transformers import AutoModelForCausalLM

    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        try:
            # fp32 master weights whatever the config file says (saved configs often carry
            # "dtype": "bfloat16"); mixed precision is the trainer's job (autocast).
            return AutoModelForCausalLM.from_config(
                config, attn_implementation=attn, dtype=torch.float32
            )
        except (ValueError, ImportError) as e:
            raise ModelError(f"cannot build a causal LM from this config: {e}") from e


def build_model(
    model: str | Path | ModelSpec,
    vocab_size: int,
    *,
    max_seq_len: int | None = None,
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """A randomly initialised causal LM, ready to train from scratch.

    Args:
        model: a preset name (``tiny``, ``14m``, ``31m``, ``70m``, ``160m``, ``410m``, ``1b``;
            ``pythia-`` prefix optional), a :class:`ModelSpec`, or a local config folder /
            ``config.json`` of any ``AutoModelForCausalLM`` architecture.
        vocab_size: the tokenizer's vocabulary size; the model gets ``padded_vocab_size`` rows.
        max_seq_len: overrides the preset's / config's maximum sequence length.
        seed: the initialisation depends only on this (same seed -> identical weights);
            the caller's global RNG state is left unchanged.
        attn_implementation: ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``, ...

    The model is fp32 and in training mode. ``config.use_cache`` is off (a training forward
    would otherwise build a KV cache it never uses); ``generation_config.use_cache`` stays on,
    so ``generate()`` for evaluation is still cached. Under ``with torch.device("meta"):``
    nothing is allocated, which is how the big presets are inspected on a laptop.
    """
    config = model_config(model, vocab_size, max_seq_len=max_seq_len)
    config.use_cache = False
    lm = _seeded_from_config(config, seed, attn_implementation)
    lm.generation_config.use_cache = True
    lm.train()
    return lm


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks (what FSDP shards one by one, and activation checkpointing
    recomputes): the modules whose class a ``transformers`` model names in
    ``_no_split_modules`` (``GPTNeoXLayer``, ``LlamaDecoderLayer``, ...), in module order."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ModelError(
            f"cannot find the transformer blocks of {type(model).__name__}: it names none in "
            "_no_split_modules; use a transformers causal LM, or --parallel ddp"
        )
    return blocks


# -- accounting -------------------------------------------------------------------------------
def _embedding_params(model: nn.Module) -> set[int]:
    """Ids of the input embedding and output head parameters (the vocab-sized matrices)."""
    ids: set[int] = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if isinstance(module, nn.Module):
            ids.update(id(p) for p in module.parameters())
    return ids


def count_parameters(model: nn.Module, *, non_embedding: bool = False) -> int:
    """Number of parameters, each shared (tied) tensor counted once. Works on the meta device.

    ``non_embedding=True`` leaves out the input embedding and the output head, as Pythia's
    tables and scaling-law papers do (they dominate small models: 51.5M of the 70M's 70.4M).
    """
    skip = _embedding_params(model) if non_embedding else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def training_state_bytes(
    model: nn.Module, *, world_size: int = 1, parallel: str = "ddp", param_dtype: str = "fp32"
) -> dict[str, int]:
    """Bytes per GPU of the training state of ``model`` under acodm's loop, before
    activations: arithmetic on the parameter counts (works on the meta device), not a
    measurement.

    fp32 weights, fp32 gradients and AdamW's two fp32 moments are 16 bytes per parameter.
    ``"ddp"`` holds all of them on every rank plus DDP's fp32 gradient buckets (4 bytes per
    parameter). ``"fsdp"`` (FSDP2, one ``fully_shard`` per block) holds ``1 / world_size`` of
    them plus, while a block runs, its gathered parameters and unsharded gradients: counted
    as two blocks' worth (the running one and the prefetched one) of the largest sharded unit
    (a block, or the root's embeddings and head) at 4 bytes (``param_dtype="bf16"``: 2) for
    the parameters and 4 for the gradients. Returns ``{"state", "transient", "total"}``.
    """
    if world_size < 1:
        raise ModelError(f"world_size must be >= 1, got {world_size}")
    params = count_parameters(model)
    if parallel == "ddp":
        state, transient = 16 * params, 4 * params
    elif parallel == "fsdp":
        blocks = transformer_blocks(model)
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        root = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
        unit = max([root, *(count_parameters(b) for b in blocks)])
        state = -(-16 * params // world_size)
        transient = 2 * unit * ((2 if param_dtype == "bf16" else 4) + 4)
    else:
        raise ModelError(f"parallel must be ddp or fsdp, got {parallel!r}")
    return {"state": state, "transient": transient, "total": state + transient}


def model_summary(model: PreTrainedModel, *, preset: str | None = None) -> dict[str, Any]:
    """A JSON-ready description of ``model`` for a run's ``config.json``.

    ``preset``: the name or path the model was built from (recorded as given).
    """
    config = model.config
    return {
        "preset": preset,
        "model_type": getattr(config, "model_type", None),
        "params": count_parameters(model),
        "non_embedding_params": count_parameters(model, non_embedding=True),
        "layers": getattr(config, "num_hidden_layers", None),
        "hidden": getattr(config, "hidden_size", None),
        "heads": getattr(config, "num_attention_heads", None),
        "intermediate": getattr(config, "intermediate_size", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "max_seq_len": getattr(config, "max_position_embeddings", None),
        "tie_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "attn_implementation": getattr(config, "_attn_implementation", None),
    }
