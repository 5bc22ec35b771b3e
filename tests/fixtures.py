"""Test fixtures shared across test modules (no network, everything generated here)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import numpy as np

from acodm.data.store import StoreWriter, TokenStore


def word_level_tokenizer_json(vocab_size: int) -> str:
    """A real `tokenizers` word-level tokenizer with ids 0..vocab_size-1 (id 0 = EOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return str(tok.to_str())


def make_position_store(
    path: Path,
    sizes: dict[str, int],
    *,
    val_tokens: int = 600,
    vocab_size: int = 1 << 16,
) -> TokenStore:
    """A store whose training tokens encode their own position: token at offset p is p % V.

    With domains shorter than V tokens, a window's first token is its start offset, which
    lets tests recover exactly which windows the sampler served. Each domain is one document
    (the writer appends one EOS, so the domain has ``n + 1`` tokens).
    """
    with StoreWriter(
        path, tokenizer_json=word_level_tokenizer_json(vocab_size), eos_id=0, corpus_hash="fake"
    ) as w:
        for i, (name, n) in enumerate(sizes.items()):
            w.write_split(name, "train", [(f"{name}/0", np.arange(n) % vocab_size)])
            val = (np.arange(val_tokens) * (i + 3)) % vocab_size
            w.write_split(name, "val", [(f"{name}/v", val)])
    return TokenStore(path)


def synthetic_corpus(path: Path, *, docs_per_domain: int = 40, seed: int = 0) -> Path:
    """A small real-text corpus with 3 domains of clearly different statistics.

    ``prose``: comment and docstring lines of the standard library; ``numbers``: arithmetic
    lines; ``code``: standard-library source. Text already on the machine, no download (the
    same builder as the environment's default store).
    """
    from acodm.envs.default_store import write_stdlib_corpus

    return write_stdlib_corpus(path, docs_per_domain=docs_per_domain, seed=seed)


def make_text_store(
    path: Path, *, vocab_size: int = 512, seed: int = 0, reward_fraction: float = 0.05
) -> TokenStore:
    """A real BPE-tokenized store of :func:`synthetic_corpus` (a second or two), with a
    reward split (``reward_fraction=0``: none, the store tests written before it used)."""
    from acodm.data.prepare import prepare_store

    corpus = synthetic_corpus(path.parent / f"{path.name}-corpus", seed=seed)
    prepare_store(
        corpus,
        path,
        vocab_size=vocab_size,
        val_fraction=0.1,
        min_val_tokens=512,
        reward_fraction=reward_fraction,
        min_reward_tokens=512 if reward_fraction else 0,
        progress=False,
    )
    return TokenStore(path)


def free_port() -> int:
    """A free TCP port on localhost (for a gloo process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ddp_environment(rank: int, world: int, port: int) -> None:
    """Inside a spawned test worker: torchrun's environment variables and one torch thread,
    so that ``acodm.distributed.init_distributed`` joins a gloo group on localhost."""
    import torch

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


class SimulatedCrash(RuntimeError):
    """Raised by :func:`interrupted_then_resumed` to interrupt a run (a named fake failure)."""


def comparable_metrics(run: Path) -> list[dict[str, Any]]:
    """A run's metrics lines without the timing ones (``perf/``), for exact comparisons."""
    from acodm.metrics import read_metrics

    return [
        {k: v for k, v in r.items() if not k.startswith("perf/")}
        for r in read_metrics(run / "metrics.jsonl")
    ]


def interrupted_then_resumed(
    config: Any, full: Path, cut: Path, crash_step: int, monkeypatch: Any
) -> Path:
    """``pretrain(config)`` into ``full``; then into ``cut``, crashing when the trainer is about
    to train from step ``crash_step``, and ``--resume`` it. Returns the checkpoint the resume
    started from."""
    from acodm.checkpoint import latest_checkpoint
    from acodm.pretrain import pretrain
    from acodm.trainer import Trainer

    pretrain(config, full, progress=False)
    real = Trainer.train_interval

    def crash(self: Trainer, weights: Any, steps: int | None = None) -> Any:
        if self.step == crash_step:
            raise SimulatedCrash(f"simulated crash at step {crash_step}")
        return real(self, weights, steps)

    monkeypatch.setattr(Trainer, "train_interval", crash)
    try:
        pretrain(config, cut, progress=False)
    except SimulatedCrash:
        pass
    else:
        raise AssertionError(f"the run never reached step {crash_step}")
    finally:
        monkeypatch.setattr(Trainer, "train_interval", real)
    start = latest_checkpoint(cut)
    assert start is not None, "the interrupted run wrote no checkpoint"
    pretrain(config, cut, resume=True, progress=False)
    return start
