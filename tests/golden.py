"""The golden trace: seeded numbers of the whole data path that refactors must not change.

:func:`trace` runs, on the ``debug_cpu`` preset and a store generated here from a seeded numpy
RNG (no tokenizer training, no text of the machine, so it is the same everywhere):

- ``trainer``: three intervals of :class:`acodm.trainer.Trainer` with fixed weights (every
  field of each interval's :class:`Dynamics`, the per-domain training losses) and the final
  evaluation;
- ``env``: ``acodm/DataMixing-v0`` reset and stepped with fixed actions (observation, reward,
  reward terms, weights);
- ``ddpg``: a ``pretrain`` run with the online ``ddpg`` mixer (its weights every interval,
  i.e. its actions mapped to the simplex, and the final evaluation);
- ``console``: a ``pretrain`` run with the agent console on the annotated store (the
  console's agent weights, the per-domain agent features and the window scores).

``tests/test_golden_trace.py`` compares a fresh trace with the stored one recorded on the same
CPU kernel family (``tests/golden/debug_cpu.<capability>.json``, one file per family: AVX2,
AVX512, ...), exactly. When a change alters numbers on purpose, regenerate this machine's file
in the same commit, delete the other families' files (they no longer describe the code; they
are recorded again on such a machine) and say why::

    python -m tests.golden --write
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).parent / "golden"


def golden_path(capability: str) -> Path:
    """The stored trace of one CPU kernel family (``torch.backends.cpu.get_cpu_capability()``)."""
    return GOLDEN_DIR / f"debug_cpu.{capability}.json"


def stored_traces() -> list[Path]:
    """Every stored trace, one per kernel family it was recorded on."""
    return sorted(GOLDEN_DIR.glob("debug_cpu.*.json"))


DOMAINS = ("alpha", "beta", "gamma")
VOCAB = 96


def _tokenizer_json() -> str:
    """A word-level tokenizer over pseudo-words ("bab", "bac", ...: letters, so the topic
    agent's TF-IDF reads them); id 0 is EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    def word(i: int) -> str:
        return "b" + chr(97 + i // 26) + chr(97 + i % 26)

    vocab = {"<|endoftext|>": 0, **{word(i): i for i in range(1, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return str(tok.to_str())


def make_store(path: Path) -> Path:
    """A 3-domain store of word-level tokens: each domain a seeded Zipf law over its own
    permutation of the vocabulary, documents of 40..200 tokens (train 30, val 6 per domain)."""
    from acodm.data.store import StoreWriter

    rng = np.random.default_rng(1234)
    with StoreWriter(path, tokenizer_json=_tokenizer_json(), eos_id=0, corpus_hash="golden") as w:
        for i, name in enumerate(DOMAINS):
            order = rng.permutation(np.arange(1, VOCAB))
            p = 1.0 / np.arange(1, VOCAB) ** (1.0 + 0.3 * i)
            p /= p.sum()
            for split, n_docs in (("train", 30), ("val", 6)):
                docs = [
                    (
                        f"{name}/{split}/{j}",
                        order[rng.choice(VOCAB - 1, rng.integers(40, 200), p=p)],
                    )
                    for j in range(n_docs)
                ]
                w.write_split(name, split, docs)
    return path


def _config(store: Path, **changes: Any) -> Any:
    from acodm.config import debug_cpu

    base = debug_cpu(str(store)).replace(
        device="cpu", steps=12, interval=2, warmup_steps=2, eval_windows=2, eval_every=0
    )
    return base.replace(**changes)


def _floats(x: Any) -> Any:
    """JSON-ready, exact (floats are written with their shortest exact repr)."""
    if isinstance(x, dict):
        return {str(k): _floats(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_floats(v) for v in x]
    if isinstance(x, np.ndarray):
        return _floats(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, (np.integer, int)) and not isinstance(x, bool):
        return int(x)
    return x


def _dynamics(dyn: Any) -> dict[str, Any]:
    fields = (
        "step", "progress", "loss", "loss_change", "share", "epochs", "alignment", "gram",
        "weight_norm", "weight_distance",
    )  # fmt: skip
    out = {f: _floats(getattr(dyn, f)) for f in fields}
    out["agents"] = {k: _floats(v) for k, v in sorted(dyn.agents.items())}
    out["console_alpha"] = {k: float(v) for k, v in sorted(dyn.console_alpha.items())}
    return out


def _trainer_part(store: Path) -> dict[str, Any]:
    from acodm.trainer import Trainer

    tr = Trainer(_config(store, steps=6))
    intervals = []
    for w in ([0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [1 / 3, 1 / 3, 1 / 3]):
        report = tr.train_interval(np.array(w))
        losses = {k: v for k, v in report.metrics.items() if k.startswith("train/loss")}
        intervals.append({"dynamics": _dynamics(report.dynamics), "metrics": _floats(losses)})
    result = {"intervals": intervals, "eval": _floats(tr.evaluate())}
    tr.close()
    return result


def _env_part(store: Path) -> dict[str, Any]:
    from acodm.envs import DataMixingEnv

    env = DataMixingEnv(str(store), _config(store, steps=8))
    obs, _ = env.reset(seed=7)
    steps = [{"obs": _floats(obs)}]
    for a in ([0.5, -0.5, 0.0], [-1.0, 1.0, 0.25], [0.0, 0.0, 0.0]):
        obs, reward, term, _, info = env.step(np.array(a, dtype=np.float32))
        steps.append(
            {
                "obs": _floats(obs),
                "reward": float(reward),
                "terms": _floats(info["reward_terms"]),
                "weights": _floats(info["weights"]),
                "terminated": bool(term),
            }
        )
    env.close()
    return {"steps": steps}


def _run_part(store: Path, out: Path, **changes: Any) -> dict[str, Any]:
    from acodm.metrics import read_metrics
    from acodm.pretrain import pretrain

    summary = pretrain(_config(store, **changes), out, progress=False)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
    keep = ("mix/weight/", "train/loss", "console/", "agents/", "dyn/alignment/")
    return {
        "intervals": [
            {k: _floats(v) for k, v in sorted(r.items()) if k.startswith(keep)} for r in rows
        ],
        "eval": {k: float(v) for k, v in sorted(summary.items()) if k.startswith("eval/")},
    }


def _console_part(store: Path, out: Path) -> dict[str, Any]:
    from acodm.agents.annotate import annotate_store
    from acodm.trainer import Trainer

    annotate_store(store, reference_domains=["alpha"], progress=False, topic_backend="tfidf")
    part = _run_part(store, out, console=True, mixer="uniform")
    tr = Trainer(_config(store, console=True, steps=4))
    tr.train_interval(np.full(3, 1 / 3))
    tr.train_interval(np.array([0.5, 0.25, 0.25]))
    assert tr.console is not None
    part["window_scores"] = [_floats(tr.console.window_scores(i)[:16]) for i in range(3)]
    tr.close()
    return part


def trace() -> dict[str, Any]:
    """The whole trace (about ten seconds on one CPU thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order
    try:
        with tempfile.TemporaryDirectory(prefix="acodm-golden-") as tmp:
            store = make_store(Path(tmp) / "store")
            return {
                "trainer": _trainer_part(store),
                "env": _env_part(store),
                "ddpg": _run_part(store, Path(tmp) / "ddpg", mixer="ddpg:warmup=0.3"),
                "console": _console_part(store, Path(tmp) / "console"),
            }
    finally:
        torch.set_num_threads(old)


def machine() -> dict[str, str]:
    """What the floats may depend on: torch's version and CPU kernels, numpy's version."""
    return {
        "torch": torch.__version__,
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = golden_path(machine()["cpu_capability"])
    parser.add_argument("--write", action="store_true", help=f"(re)write {target}")
    args = parser.parse_args(argv)
    data = {"machine": machine(), "trace": trace()}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if args.write:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
        print(f"wrote {target}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
