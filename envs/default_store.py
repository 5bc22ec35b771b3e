"""A small token store built from text already on the machine, for the no-argument env.

``gymnasium.make("acodm/DataMixing-v0")`` must work offline and in seconds, so the default
store is three domains of clearly different statistics taken from the Python standard
library (``code``: module source, ``prose``: its comments and docstring lines, ``numbers``:
generated arithmetic), tokenized with a small trained BPE. It is built once and cached under
``acodm.paths.cache_dir("envs")``; the build is atomic (an interrupted build leaves nothing),
and concurrent builders both end up with a complete store.
"""

from __future__ import annotations

import random
import shutil
import sysconfig
import tempfile
from pathlib import Path

from acodm.data.corpus import CorpusWriter, Document
from acodm.data.prepare import prepare_store
from acodm.data.store import MANIFEST, STORE_SCHEMA_VERSION
from acodm.paths import cache_dir

#: Bump when the builder's output would change (it names the cached folder).
DEFAULT_STORE_VERSION = 1
DOCS_PER_DOMAIN = 40
VOCAB_SIZE = 512


def write_stdlib_corpus(
    path: Path, *, docs_per_domain: int = DOCS_PER_DOMAIN, seed: int = 0
) -> Path:
    """Write a 3-domain corpus (``code``, ``prose``, ``numbers``) from the standard library."""
    rng = random.Random(seed)  # a private generator: no global random state in library code
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 4000)[:docs_per_domain]
    with CorpusWriter(path, meta={"builder": "acodm.envs.default_store"}) as w:
        for i, p in enumerate(sources):
            text = p.read_text(encoding="utf-8", errors="replace")
            w.add(Document(text[:3000], "code", "python-stdlib", f"code/{i}"))
            lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("#", '"'))]
            w.add(
                Document(
                    " ".join(lines)[:2000] or f"empty module {i}",
                    "prose",
                    "python-stdlib",
                    f"prose/{i}",
                )
            )
            nums = [
                f"{a} + {b} = {a + b}."
                for a, b in ((rng.randint(0, 999), rng.randint(0, 999)) for _ in range(60))
            ]
            w.add(Document(" ".join(nums), "numbers", "generated", f"numbers/{i}"))
    return path


def default_store() -> Path:
    """The cached default store (built on first use, about a second)."""
    root = cache_dir("envs")
    # The store schema is in the name too: a store cached by an older acodm is rebuilt, not
    # refused.
    out = root / f"default-store-v{DEFAULT_STORE_VERSION}-schema{STORE_SCHEMA_VERSION}"
    if (out / MANIFEST).exists():
        return out
    work = Path(tempfile.mkdtemp(prefix=".default-store.", dir=root))
    try:
        corpus = write_stdlib_corpus(work / "corpus")
        built = prepare_store(
            corpus,
            work / "store",
            vocab_size=VOCAB_SIZE,
            val_fraction=0.1,
            min_val_tokens=512,
            # probe-reward windows: 4 of 64 + 1 tokens per domain, the built-in seq_len
            reward_fraction=0.05,
            min_reward_tokens=512,
            progress=False,
        )
        try:
            built.rename(out)  # atomic; fails if another process got there first
        except OSError:
            if not (out / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
