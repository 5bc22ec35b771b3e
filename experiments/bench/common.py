"""Shared pieces of the benchmark scripts: machine description and a real offline store."""

from __future__ import annotations

import os
import platform
import sysconfig
from pathlib import Path

import numpy as np

from acodm.data.corpus import CorpusWriter, Document
from acodm.data.prepare import prepare_store
from acodm.data.store import TokenStore, open_store


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores_visible": os.cpu_count(),
        "cores_used": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        **_torch_info(),
    }


def _torch_info() -> dict[str, object]:
    try:
        import torch
    except ImportError:
        return {}
    info: dict[str, object] = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_stdlib_store(root: Path, max_mb: float, vocab_size: int = 4096) -> TokenStore:
    """A real multi-domain store from standard-library sources (offline, on every machine)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    groups: dict[str, list[Path]] = {"asyncio": [], "email": [], "test": [], "other": []}
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" in path.parts:
            continue
        top = path.relative_to(stdlib).parts[0]
        groups[top if top in groups else "other"].append(path)
    budget = int(max_mb * 1e6 / len(groups))
    with CorpusWriter(root / "corpus", meta={"builder": "bench/sampler stdlib"}) as w:
        for domain, paths in groups.items():
            used = 0
            for p in paths:
                if used > budget:
                    break
                text = p.read_text(encoding="utf-8", errors="replace")
                if w.add(Document(text, domain, "python-stdlib", f"{domain}/{p.name}/{used}")):
                    used += len(text)
    prepare_store(root / "corpus", root / "store", vocab_size=vocab_size, progress=False)
    return open_store(root / "store")


def split_store(src: TokenStore, k: int, out: Path) -> TokenStore:
    """A k-domain store cut from the (real) token streams of ``src``, equal slices per domain.

    Used to vary the number of domains with everything else fixed (overhead benchmark).
    """
    from acodm.data.store import StoreWriter

    train = np.concatenate([np.asarray(src.tokens(d)) for d in src.domains])
    val = np.concatenate([np.asarray(src.tokens(d, "val")) for d in src.domains])
    tok_json = (src.path / "tokenizer.json").read_text(encoding="utf-8")
    with StoreWriter(
        out, tokenizer_json=tok_json, eos_id=src.eos_id, corpus_hash=f"split{k}:{src.corpus_hash}"
    ) as w:
        for i, (tr, va) in enumerate(
            zip(np.array_split(train, k), np.array_split(val, k), strict=True)
        ):
            w.write_split(f"d{i:02d}", "train", [(f"d{i}/train", tr)])
            w.write_split(f"d{i:02d}", "val", [(f"d{i}/val", va)])
    return open_store(out)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory(device: str) -> float | None:
    """Peak allocated GPU memory in GiB since the last reset (None on the CPU)."""
    import torch

    if not device.startswith("cuda"):
        return None
    return float(torch.cuda.max_memory_allocated()) / 2**30


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
