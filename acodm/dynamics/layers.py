"""Which weight matrices the dynamics read: the monitored layers, found in any causal LM.

The reward (gradient alignment, :mod:`acodm.dynamics.alignment`) and the observation's layer
statistics (:mod:`acodm.dynamics.features`) read a *fixed number* of weight matrices chosen by
*relative depth*, so a 70M proxy and a 1B target produce vectors of the same length. The rule
(:func:`monitored_layers`) does not depend on GPT-NeoX internals:

* blocks = the longest ``nn.ModuleList`` of same-class modules that is not nested inside
  another such list (:func:`find_blocks`; nested lists are e.g. MoE experts);
* depths = ``count`` blocks evenly spaced over a region of relative depth, both ends included
  (:func:`select_depths`; the upper half by default, since the paper monitors 3 upper layers);
* matrix = each chosen block's MLP output ("down") projection (:func:`mlp_output_projection`).

``patterns`` (fnmatch globs over ``named_modules()`` names) replace the rule when it guesses
wrong for an architecture. Errors are :class:`~acodm.errors.ModelError`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

import torch
from torch import nn

from acodm.errors import ModelError

__all__ = [
    "ALL_DEPTHS",
    "UPPER_HALF",
    "distinct_layers",
    "find_blocks",
    "mlp_output_projection",
    "monitored_layers",
    "select_depths",
]

# Regions of relative depth for select_depths: (lowest, highest], as fractions of the stack.
UPPER_HALF: tuple[float, float] = (0.5, 1.0)  # alignment reward: the paper's "upper layers"
ALL_DEPTHS: tuple[float, float] = (0.0, 1.0)  # layer statistics: bottom to top


def _inside(name: str, outer: str) -> bool:
    """Whether module ``name`` is a descendant of module ``outer`` (dotted names)."""
    return outer == "" or name.startswith(outer + ".")


def _block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(name, list)`` of the decoder blocks; the rule is documented in :func:`find_blocks`."""
    outermost: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():  # pre-order: outer lists come first
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if any(_inside(name, outer) for outer, _ in outermost):
            continue  # e.g. the experts of an MoE block: never the blocks themselves
        outermost.append((name, module))
    if not outermost:
        raise ModelError(
            f"{type(model).__name__} has no nn.ModuleList of same-class modules, so its "
            f"transformer blocks cannot be found; pass patterns= to name the layers"
        )
    return max(outermost, key=lambda item: len(item[1]))  # ties: the first in module order


def find_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of ``model``, bottom to top.

    Rule: the longest ``nn.ModuleList`` whose entries all have the same class, among those not
    nested inside another such list (ties: the first in ``named_modules()`` order). Every HF
    decoder keeps its blocks this way (``gpt_neox.layers``, ``model.layers``,
    ``transformer.h``), whatever the blocks are called; the nesting guard stops a list of MoE
    experts (often longer than the stack) from being taken for the blocks.
    """
    return list(_block_list(model)[1])


def select_depths(
    num_blocks: int, count: int, *, region: tuple[float, float] = UPPER_HALF
) -> list[int]:
    """``count`` distinct block indices, evenly spaced by relative depth; always ``count`` long.

    The region ``(lo, hi]`` of relative depth covers blocks ``floor(lo * n)`` to
    ``ceil(hi * n) - 1``; the indices are evenly spaced from its first to its last block, both
    included, rounded half up. If the region holds fewer than ``count`` blocks it is extended
    downwards, so the length never depends on the model (proxy and target observations must
    match). Upper half, count 3: 6 blocks -> [3, 4, 5]; 16 -> [8, 12, 15]; 24 -> [12, 18, 23].
    All depths, count 4: 6 -> [0, 2, 3, 5]; 16 -> [0, 5, 10, 15].

    A model with fewer blocks than ``count`` (a 2-layer proxy): every block, evenly spread
    over ``count`` slots, rounded half up, so the upper blocks repeat: 2 blocks, count 3 ->
    [0, 1, 1]; 1 -> [0, 0, 0]. The list keeps its length (the observation too) and stays
    sorted; only then does an index appear twice.
    """
    lo, hi = region
    if not 0.0 <= lo < hi <= 1.0:
        raise ModelError(f"depth region must satisfy 0 <= lo < hi <= 1, got {region}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ModelError(f"count must be a positive int, got {count!r}")
    if num_blocks < 1:
        raise ModelError(f"a model needs at least one block to monitor, got {num_blocks}")
    if count > num_blocks:  # monitor what exists: all blocks, the upper ones repeated
        top = num_blocks - 1
        return [(2 * j * top + count - 1) // (2 * (count - 1)) for j in range(count)]
    last = max(math.ceil(hi * num_blocks) - 1, 0)
    first = max(min(math.floor(lo * num_blocks), last - count + 1), 0)
    if count == 1:
        return [last]
    span, gaps = last - first, count - 1
    # first + round_half_up(j * span / gaps), in integers so no float rounding can bite
    return [first + (2 * j * span + gaps) // (2 * gaps) for j in range(count)]


def distinct_layers(layers: Sequence[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """``layers`` without repeats (first occurrence kept): what the gradient hooks watch."""
    out: dict[str, nn.Module] = {}
    for name, module in layers:
        out.setdefault(name, module)
    return list(out.items())


# Known names of an MLP's output ("down") projection, relative to its block, checked in order.
_KNOWN_DOWN_PROJ = (
    "mlp.dense_4h_to_h",  # GPT-NeoX / Pythia, Falcon, BLOOM
    "mlp.down_proj",  # Llama, Mistral, Qwen, Gemma, OLMo
    "mlp.fc2",  # Phi
    "mlp.fc_out",  # GPT-J
    "mlp.c_proj",  # StarCoder2 (GPT-2's is a Conv1D, not an nn.Linear)
    "mlp.w2",
    "feed_forward.down_proj",
    "feed_forward.w2",  # InternLM, old Mistral ports
    "ffn.down_proj",  # MPT
    "fc2",  # OPT (MLP directly on the block)
)
_MLP_CHILD_HINTS = ("mlp", "feed_forward", "feedforward", "ffn")


def _fallback_down_proj(block: nn.Module) -> tuple[str, nn.Linear] | None:
    """The last Linear in an MLP-like child that narrows back to the MLP's input width.

    "Back to the input width" (``out_features`` equals the ``in_features`` of the child's first
    Linear) excludes a router ``hidden -> num_experts``, which also narrows.
    """
    for child_name, child in block.named_children():
        if not any(hint in child_name.lower() for hint in _MLP_CHILD_HINTS):
            continue
        linears = [(n, m) for n, m in child.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            continue
        width = linears[0][1].in_features
        downs = [
            (n, m) for n, m in linears if m.in_features > m.out_features and m.out_features == width
        ]
        if downs:
            name, linear = downs[-1]
            return f"{child_name}.{name}", linear
    return None


def mlp_output_projection(block: nn.Module) -> tuple[str, nn.Linear]:
    """``(name relative to block, layer)`` of the block's MLP output projection.

    Why this matrix: the paper computes gradient alignment on the MLP output projections, which
    write straight into the residual stream. Known names first (:data:`_KNOWN_DOWN_PROJ`), then
    the last narrowing ``nn.Linear`` of a child named like ``mlp``/``feed_forward``/``ffn``.
    """
    modules = dict(block.named_modules())
    for name in _KNOWN_DOWN_PROJ:
        module = modules.get(name)
        if isinstance(module, nn.Linear):
            return name, module
    found = _fallback_down_proj(block)
    if found is None:
        raise ModelError(
            f"cannot find the MLP output projection (an nn.Linear) in {type(block).__name__}; "
            f"known names: {', '.join(_KNOWN_DOWN_PROJ)}. Pass patterns= to name the layers"
        )
    return found


def weight_io(module: nn.Module) -> tuple[int, int] | None:
    """``(in, out)`` widths of a module whose 2-D ``weight`` maps its input's last dimension
    to its output's, or None for a module without one.

    ``nn.Linear`` and any module with an ``(out, in)`` weight (``y = x W^T``: the tensor- and
    sequence-parallel linear layers of Megatron-style frameworks, whose local shard is what
    the rank computes with); transformers' ``Conv1D`` (GPT-2) keeps ``(in, out)`` (``y = x W``,
    recognised by its ``nf`` attribute, the output width). The monitoring hooks check the
    widths against the activations at the first forward.
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    if getattr(module, "nf", None) == w.shape[1]:  # transformers.pytorch_utils.Conv1D
        return int(w.shape[0]), int(w.shape[1])
    return int(w.shape[1]), int(w.shape[0])


def _match_patterns(model: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    """The modules with a 2-D weight (:func:`weight_io`) whose names match any glob, in module
    order, each once."""
    if isinstance(patterns, str) or not patterns:
        raise ModelError(f"patterns must be a non-empty list of globs, got {patterns!r}")
    named = list(model.named_modules())
    chosen: dict[str, nn.Linear] = {}
    for pattern in patterns:
        hits = [(n, m) for n, m in named if n and fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ModelError(f"layer pattern {pattern!r} matches no module of the model")
        for name, module in hits:
            if weight_io(module) is None:
                raise ModelError(
                    f"layer pattern {pattern!r} matches {name!r}, a {type(module).__name__} "
                    "without a 2-D weight; monitored layers are linear maps (nn.Linear, a "
                    "parallel linear layer, transformers' Conv1D)"
                )
            chosen[name] = module
    order = {n: i for i, (n, _) in enumerate(named)}
    return sorted(chosen.items(), key=lambda item: order[item[0]])


def monitored_layers(
    model: nn.Module,
    count: int = 3,
    patterns: Sequence[str] | None = None,
    *,
    region: tuple[float, float] = UPPER_HALF,
) -> list[tuple[str, nn.Linear]]:
    """``(full module name, layer)`` of the weight matrices the reward and observation read.

    Default rule: the MLP output projections of ``count`` blocks chosen by
    :func:`select_depths` over ``region`` (upper half: the paper's 3 upper layers). GPT-NeoX
    gives ``gpt_neox.layers.{i}.mlp.dense_4h_to_h``, Llama ``model.layers.{i}.mlp.down_proj``.

    ``patterns``: fnmatch globs over ``named_modules()`` names that replace the rule (``count``
    and ``region`` are then ignored); each must match at least one module, and only
    ``nn.Linear`` modules, e.g. ``["model.layers.*.mlp.down_proj"]``.

    With fewer blocks than ``count`` the same layer is listed more than once (see
    :func:`select_depths`): its statistics fill several slots of the per-layer observation.
    Hooks go on :func:`distinct_layers` of the list, so each layer is measured once.
    """
    if patterns is not None:
        return _match_patterns(model, patterns)
    prefix, blocks = _block_list(model)
    chosen = []
    for i in select_depths(len(blocks), count, region=region):
        name, linear = mlp_output_projection(blocks[i])
        chosen.append((f"{prefix}.{i}.{name}" if prefix else f"{i}.{name}", linear))
    return chosen
