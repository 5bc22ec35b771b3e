"""Run configuration: one frozen, validated dataclass, and named presets as functions.

A run directory gets the resolved configuration as ``config.json``; ``--resume`` reads it
back and refuses to continue with settings that would change the numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from acodm.errors import AcodmError


class ConfigError(AcodmError):
    """A configuration value is invalid."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a pretraining run (the mixer is given as a spec string).

    Batch geometry: each optimizer step consumes ``micro_batch_size * grad_accum *
    world_size`` sequences of ``seq_len`` tokens. The run lasts ``steps`` optimizer steps,
    or as many as ``tokens`` allows.

    ``console``: drive the order of documents *inside* each domain by the multi-agent console
    (quality, domain and topic agents; needs ``acodm annotate`` on the store, see
    :mod:`acodm.agents.online`); ``console_temperature`` is its sampling temperature and
    ``console_reference`` the reference-quality domains of its feedback (empty: those the
    annotations were trained with).

    ``parallel``: how several processes (``torchrun``) share the model: ``"ddp"`` (a full copy
    per rank, the default for small models) or ``"fsdp"`` (FSDP2: parameters, gradients and
    AdamW state sharded over the ranks, one ``fully_shard`` per transformer block; checkpoints
    then go through ``torch.distributed.checkpoint``, every rank writing its shard).
    ``param_dtype="bf16"`` (fsdp only) computes with bf16 parameters and reduces gradients in
    fp32 (the sharded master copy stays fp32). ``activation_checkpointing`` recomputes each
    block's activations in the backward pass (less memory, about a third more compute).

    ``max_epochs``: cap every domain at this many epochs of its training tokens, whatever the
    mixer (None, the default: no cap). Before each interval the trainer projects the mixer's
    weights onto the capped simplex of the run's live epochs and remaining budget
    (:func:`acodm.data.weights.project_capped`); weights already within the caps pass
    unchanged. When the remaining budget exceeds what every domain has left under the cap,
    the cap is raised for all domains alike to the smallest level that fits (UniMax's rule,
    :func:`acodm.data.weights.feasible_caps`) and the trainer warns.
    """

    store: str
    model: str = "tiny"
    mixer: str = "uniform"
    seq_len: int = 256
    micro_batch_size: int = 8
    grad_accum: int = 1
    steps: int | None = 1000
    tokens: int | None = None
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    interval: int = 1
    eval_every: int = 100
    eval_windows: int = 16
    checkpoint_every: int = 500
    keep_last: int = 2
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    parallel: str = "ddp"
    param_dtype: str = "fp32"
    activation_checkpointing: bool = False
    dynamics: bool = True
    alignment_rank: int | None = 256
    monitored_layers: int = 3
    monitored_patterns: tuple[str, ...] = ()
    max_bad_steps: int = 5
    console: bool = False
    console_temperature: float = 1.0
    console_reference: tuple[str, ...] = ()
    max_epochs: float | None = None
    wandb: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        need(bool(self.store), "store is required: the folder written by `acodm prepare`")
        need(self.seq_len >= 8, f"seq_len must be >= 8, got {self.seq_len}")
        need(self.micro_batch_size >= 1, "micro_batch_size must be >= 1")
        need(self.grad_accum >= 1, "grad_accum must be >= 1")
        need(
            (self.steps is None) != (self.tokens is None),
            "give exactly one of steps and tokens (the run's length)",
        )
        need(self.steps is None or self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.tokens is None or self.tokens >= 1, f"tokens must be >= 1, got {self.tokens}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]")
        need(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        need(self.grad_clip >= 0, "grad_clip must be >= 0 (0 disables clipping)")
        need(self.interval >= 1, f"interval must be >= 1 optimizer step, got {self.interval}")
        need(
            self.eval_every >= 0 and self.checkpoint_every >= 0,
            "eval_every and checkpoint_every must be >= 0 (0: only at the end)",
        )
        need(self.eval_windows >= 1, "eval_windows must be >= 1")
        need(self.keep_last >= 1, "keep_last must be >= 1")
        need(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"device must be auto, cpu or cuda[:N], got {self.device!r}",
        )
        need(
            self.precision in ("auto", "fp32", "bf16"),
            f"precision must be auto, fp32 or bf16, got {self.precision!r}",
        )
        need(
            self.parallel in ("ddp", "fsdp"),
            f"parallel must be ddp or fsdp, got {self.parallel!r}",
        )
        need(
            self.param_dtype in ("fp32", "bf16"),
            f"param_dtype must be fp32 or bf16, got {self.param_dtype!r}",
        )
        need(
            self.param_dtype == "fp32" or self.parallel == "fsdp",
            "param_dtype=bf16 needs parallel=fsdp (DDP keeps fp32 weights; use precision=bf16 "
            "for bf16 compute)",
        )
        need(
            self.alignment_rank is None or self.alignment_rank >= 1,
            "alignment_rank must be >= 1, or None for the exact (unprojected) path",
        )
        need(self.monitored_layers >= 1, "monitored_layers must be >= 1")
        need(self.max_bad_steps >= 1, "max_bad_steps must be >= 1")
        need(
            self.console_temperature > 0,
            f"console_temperature must be > 0, got {self.console_temperature}",
        )
        need(
            self.max_epochs is None
            or (
                not isinstance(self.max_epochs, bool)
                and isinstance(self.max_epochs, int | float)
                and math.isfinite(self.max_epochs)
                and self.max_epochs > 0
            ),
            f"max_epochs must be a finite number > 0 (epochs of a domain's tokens), or None "
            f"for no cap; got {self.max_epochs!r}",
        )
        need(
            not self.console or self.dynamics,
            "console=True needs dynamics=True: the console's feedback reuses the gradient hooks",
        )

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.seq_len * self.micro_batch_size * self.grad_accum * world_size

    def total_steps(self, world_size: int = 1) -> int:
        if self.steps is not None:
            return self.steps
        assert self.tokens is not None
        return max(1, self.tokens // self.tokens_per_step(world_size))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["monitored_patterns"] = list(self.monitored_patterns)
        d["console_reference"] = list(self.console_reference)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        for key in ("monitored_patterns", "console_reference"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Settings that may differ on --resume. The length of the run is not among them: it shapes
# the learning-rate schedule (and UniMax's budget), so changing it would change the numbers.
RESUMABLE_CHANGES = frozenset(
    {"eval_every", "checkpoint_every", "keep_last", "wandb", "device", "compile", "extra"}
)
# How the same global batch is laid out over processes and memory. A resume may change these
# (on another number of GPUs, say) as long as micro_batch_size * grad_accum * world_size, the
# sequences of one optimizer step, stays the same: the trainer checks it against the
# checkpoint and re-deals the sampler (acodm.data.sampler.reshard_states).
LAYOUT_CHANGES = frozenset(
    {"micro_batch_size", "grad_accum", "parallel", "activation_checkpointing"}
)


def debug_cpu(store: str) -> TrainConfig:
    """Seconds on a CPU: the ``tiny`` model, short sequences, a few steps (tests, CI)."""
    return TrainConfig(
        store=store,
        model="tiny",
        seq_len=64,
        micro_batch_size=4,
        steps=20,
        warmup_steps=2,
        eval_every=10,
        eval_windows=2,
        lr=3e-3,
    )


def cpu_small(store: str) -> TrainConfig:
    """Minutes on 2 CPU cores: a 14m model on 128-token sequences."""
    return TrainConfig(
        store=store,
        model="14m",
        seq_len=128,
        micro_batch_size=16,
        steps=300,
        warmup_steps=30,
        eval_every=50,
        eval_windows=8,
        lr=2e-3,
    )


def pythia_160m(store: str) -> TrainConfig:
    """One GPU: Pythia-160M shape, sequence 2048, batch 16 (BENCHMARKS.md settings)."""
    return TrainConfig(
        store=store,
        model="160m",
        seq_len=2048,
        micro_batch_size=16,
        steps=2000,
        warmup_steps=100,
        lr=6e-4,
    )


def pythia_410m(store: str) -> TrainConfig:
    """One GPU: Pythia-410M shape (the paper's proxy), sequence 2048, batch 16."""
    return TrainConfig(
        store=store,
        model="410m",
        seq_len=2048,
        micro_batch_size=16,
        steps=2000,
        warmup_steps=100,
        lr=3e-4,
    )


# The quickstart's runs (acodm.policies.quickstart): one preset per role; the cpu ones are a
# cut of the CPU study regime below (a data-constrained store, the micro model). The proxy trains the
# policy (its only evaluation is at the end); the target runs compare it with the baselines on a
# larger model, with the proxy's sequence length, batch and interval (the policy's K). The
# quickstart sets each run's seed and the target's mixer. Proxy and target monitor the same
# number of layers, so the policy's observation transfers.


def quickstart_cpu_proxy(store: str) -> TrainConfig:
    """The ``cpu`` quickstart's proxy: the CPU study's (``micro``, 100 steps of 32 x 128)."""
    return study_cpu_proxy(store)


def quickstart_cpu_target(store: str) -> TrainConfig:
    """The ``cpu`` quickstart's target runs: a smaller cut of the CPU study's target (same
    model, budget and data-constrained store; evaluation every 20 steps on 16 windows per
    domain instead of every 10 on 32, a quarter of its cost)."""
    return study_cpu_target(store).replace(eval_every=20, eval_windows=16)


def quickstart_gpu_proxy(store: str) -> TrainConfig:
    """The ``gpu`` quickstart's proxy: the 70m model, 1500 steps of 16 x 1024 tokens."""
    return TrainConfig(
        store=store,
        model="70m",
        seq_len=1024,
        micro_batch_size=16,
        steps=1500,
        interval=10,
        warmup_steps=50,
        lr=1e-3,
        eval_every=0,
        eval_windows=4,
    )


def quickstart_gpu_target(store: str) -> TrainConfig:
    """The ``gpu`` quickstart's target runs: the 160m model, 2000 steps of 16 x 1024 tokens."""
    return quickstart_gpu_proxy(store).replace(
        model="160m", steps=2000, warmup_steps=100, lr=6e-4, eval_every=100, eval_windows=16
    )


# The study regime (``acodm study``, acodm.study): a data-constrained store (``acodm prepare
# --doc-chars 3000 --max-train-tokens geometric:6000:789000``, BENCHMARKS.md "A CPU regime where
# mixtures separate") where the smallest domains repeat >= 8 epochs under uniform weights, so
# static mixtures separate by more than their seed spread. The target is the run every arm of a
# study makes; the proxy trains a policy for the ``policy`` arm with the same sequence length,
# batch and interval K (the policy's decision rate) at a fraction of the target's compute. The
# target evaluates on 32 windows per domain (spread over the held-out split) every 10 steps, so
# "steps to reach" a value is resolved to 10 steps.


def study_cpu_target(store: str) -> TrainConfig:
    """The CPU study's target runs: the ``micro`` model, 200 steps of 32 x 128 tokens (819k
    tokens), eval on 32 windows per domain every 10 steps (1-2 minutes on 2 CPU cores)."""
    return TrainConfig(
        store=store,
        model="micro",
        seq_len=128,
        micro_batch_size=32,
        steps=200,
        interval=5,
        warmup_steps=20,
        lr=3e-3,
        eval_every=10,
        eval_windows=32,
        checkpoint_every=100,
        keep_last=1,
    )


def study_cpu_proxy(store: str) -> TrainConfig:
    """The CPU study's proxy (policy training): the ``micro`` model for 100 steps, half the
    target's budget (so a proxy episode costs half a target run); final evaluation only."""
    return study_cpu_target(store).replace(
        steps=100, warmup_steps=10, eval_every=0, eval_windows=8, checkpoint_every=0
    )


def study_gpu_target(store: str) -> TrainConfig:
    """The study protocol at GPU size: the 160m model, 2000 steps of 32 x 1024 tokens (65.5M
    tokens), eval on 32 windows per domain every 50 steps. Use a store capped for that budget
    (e.g. ``--max-train-tokens geometric:500000:60000000``)."""
    return TrainConfig(
        store=store,
        model="160m",
        seq_len=1024,
        micro_batch_size=32,
        steps=2000,
        interval=10,
        warmup_steps=100,
        lr=6e-4,
        eval_every=50,
        eval_windows=32,
        checkpoint_every=500,
        keep_last=1,
    )


def study_gpu_proxy(store: str) -> TrainConfig:
    """The GPU study's proxy: the 70m model for 1000 steps (same sequence, batch and K as the
    target); final evaluation only."""
    return study_gpu_target(store).replace(
        model="70m", steps=1000, warmup_steps=50, lr=1e-3, eval_every=0, eval_windows=8
    )


PRESETS: dict[str, Callable[[str], TrainConfig]] = {
    "debug_cpu": debug_cpu,
    "cpu_small": cpu_small,
    "pythia_160m": pythia_160m,
    "pythia_410m": pythia_410m,
    "study_cpu_proxy": study_cpu_proxy,
    "study_cpu_target": study_cpu_target,
    "study_gpu_proxy": study_gpu_proxy,
    "study_gpu_target": study_gpu_target,
}


def preset(name: str, store: str) -> TrainConfig:
    try:
        return PRESETS[name](store)
    except KeyError:
        raise ConfigError(f"unknown run preset {name!r}; known: {sorted(PRESETS)}") from None


def resolve_config(
    config: TrainConfig | str | None,
    store: str | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    interval: int | None = None,
    default: Callable[[str], TrainConfig] = debug_cpu,
    what: str = "config",
) -> TrainConfig:
    """The one way a run's :class:`TrainConfig` is put together (the env, proxy training).

    ``config``: a TrainConfig (its ``store`` replaced by ``store`` when given), a preset name
    (:data:`PRESETS`), or None for ``default(store)``; a name or None needs ``store``. Then
    ``overrides`` (TrainConfig fields to replace) and ``interval`` (K) are applied. ``what``
    names the config in errors (an unknown field is a :class:`ConfigError`).
    """
    if isinstance(config, TrainConfig):
        cfg = config.replace(store=str(store)) if store is not None else config
    elif config is None or isinstance(config, str):
        if store is None:
            raise ConfigError(f"the {what} needs a store: the folder written by `acodm prepare`")
        cfg = default(str(store)) if config is None else preset(config, str(store))
    else:
        raise ConfigError(f"the {what} must be a preset name or a TrainConfig, got {config!r}")
    try:
        if overrides:
            cfg = cfg.replace(**dict(overrides))
        if interval is not None:
            cfg = cfg.replace(interval=int(interval))
    except TypeError as e:  # an unknown field name
        raise ConfigError(f"bad {what} override: {e}") from e
    return cfg
