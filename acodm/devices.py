"""Which torch device a run uses (the trainer, DoReMi's reference pass, benchmarks)."""

from __future__ import annotations

import torch

from acodm.errors import AcodmError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu`` or ``cuda[:N]`` as a device.

    Asking for CUDA on a machine without it is an :class:`AcodmError` that names ``--device
    cpu``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AcodmError(
            f"device {name!r} was asked for but CUDA is not available; use --device cpu"
        )
    return torch.device(name)
