"""Fixtures for the agent/export tests: one torch thread (2 shared CPU cores)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    yield
