"""Test-session guards (no network, no wandb, a private acodm cache and config dir) and shared
fixtures."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address: object) -> None:
    """Refuse connections that leave the machine: tests must never need the network."""
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and host not in ("127.0.0.1", "::1", "localhost"):
        raise OSError(f"network access in tests is not allowed (tried {address!r})")
    _real_connect(self, address)  # type: ignore[arg-type]


@pytest.fixture(autouse=True, scope="session")
def _offline_and_private_cache():
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    # a private cache, and a private config dir: the checkpoint key (acodm.trust) is made
    # there, never in the real home
    old = {name: os.environ.get(name) for name in ("ACODM_CACHE", "ACODM_CONFIG")}
    with (
        tempfile.TemporaryDirectory(prefix="acodm-test-cache-") as cache,
        tempfile.TemporaryDirectory(prefix="acodm-test-config-") as config,
    ):
        os.environ["ACODM_CACHE"] = cache
        os.environ["ACODM_CONFIG"] = config
        yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: tiny tensors on 2 shared cores run faster without
    intra-op threads (tests ran up to 3x slower with them on a busy machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _tfidf_topics_unless_asked(monkeypatch):
    """``annotate_store``'s "auto" topic backend uses sentence embeddings where the ``topic``
    extra is installed; tests see no bundled model, so their topic labels do not depend on the
    installed extras (the embedding path is tested with an explicit local model folder)."""
    monkeypatch.setattr("acodm.agents.topic.default_embedding_model", lambda: None)
