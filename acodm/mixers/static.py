"""Static mixers: one weight vector for the whole run (the baselines of METHOD.md).

``uniform``          every domain equally.
``natural``          proportional to the domain's training tokens (sampling the pooled corpus).
``temperature:T``    natural weights to the power ``T``, renormalised (``T`` in (0, 1]
                     flattens towards uniform; ``T = 1`` is natural; ``T -> 0`` uniform).
``file:PATH``        a JSON object ``{"domain": weight, ...}`` naming every domain.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from acodm.mixers.base import Mixer, MixerContext, MixerError, format_number, normalize_weights
from acodm.mixers.spec import check_number, parse_number, require_arg, require_no_arg

FILE_SUM_TOLERANCE = 1e-6
"""A weight file whose values sum to 1 within this is used as is; otherwise it is
normalised with a warning (the file may be counts, or a hand-edited mixture)."""


class StaticMixer(Mixer):
    """A mixer whose weights depend only on the run context, never on feedback."""

    @classmethod
    def from_spec_arg(cls, arg: str | None) -> Mixer:
        """Factory for :func:`~acodm.mixers.register_mixer` (mixers without an argument)."""
        require_no_arg(cls.name, arg)
        return cls()

    def describe(self) -> str:
        return self.name


class UniformMixer(StaticMixer):
    """``w_i = 1 / k``."""

    name = "uniform"
    usage = "uniform"
    example = "uniform"

    def _weights(self) -> np.ndarray:
        return np.full(self.ctx.k, 1.0 / self.ctx.k)


class NaturalMixer(StaticMixer):
    """``w_i = n_i / sum_j n_j`` with ``n_i`` the training tokens of domain ``i``."""

    name = "natural"
    usage = "natural"
    example = "natural"

    def _weights(self) -> np.ndarray:
        return normalize_weights(self.ctx.domain_tokens)


def temperature_weights(domain_tokens: np.ndarray, temperature: float) -> np.ndarray:
    """``w_i ∝ (n_i / sum_j n_j) ** T`` (temperature sampling, e.g. Conneau et al. 2020).

    Computed as ``(n_i / max_j n_j) ** T`` (same ratios) so that a small ``T`` on a skewed
    corpus cannot underflow every weight to zero.
    """
    n = np.asarray(domain_tokens, dtype=np.float64)
    return normalize_weights((n / n.max()) ** temperature)


class TemperatureMixer(StaticMixer):
    """Natural weights to the power ``T``, renormalised; ``T > 0``."""

    name = "temperature"
    usage = "temperature:T"
    example = "temperature:0.5"

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = check_number(temperature, "temperature T", positive=True)

    @classmethod
    def from_spec_arg(cls, arg: str | None) -> Mixer:
        text = require_arg(cls.name, arg, "temperature:0.5")
        return cls(parse_number(text, "temperature T", positive=True))

    def describe(self) -> str:
        return f"{self.name}:{format_number(self.temperature)}"

    def _weights(self) -> np.ndarray:
        return temperature_weights(self.ctx.domain_tokens, self.temperature)


def read_weight_file(path: str | Path) -> dict[str, float]:
    """Parse a JSON object ``{"domain": weight}``; values finite and ``>= 0`` (zero allowed)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise MixerError(f"weight file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MixerError(f"weight file {str(path)!r} is not readable JSON ({e})") from e
    if not isinstance(obj, dict) or not obj:
        raise MixerError(
            f'weight file {str(path)!r} must hold a JSON object {{"domain": weight, ...}}'
        )
    bad = {
        name: value
        for name, value in obj.items()
        if isinstance(value, bool)
        or not isinstance(value, int | float)
        or not np.isfinite(value)
        or value < 0
    }
    if bad:
        raise MixerError(
            f"weight file {str(path)!r}: weights must be finite numbers >= 0, got {bad}"
        )
    return {name: float(value) for name, value in obj.items()}


class FileMixer(StaticMixer):
    """Weights read from a JSON file keyed by domain name (every domain named, no others).

    The file is read when the mixer is built (a missing file fails early); its names are
    checked in :meth:`setup`. A sum off 1 by more than ``FILE_SUM_TOLERANCE`` is normalised
    with a warning. The weights go into the state, so a resumed run detects an edited file.
    """

    name = "file"
    usage = "file:PATH"
    example = "file:{weights}"

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        self.file_weights = read_weight_file(self.path)
        self._w: np.ndarray | None = None

    @classmethod
    def from_spec_arg(cls, arg: str | None) -> Mixer:
        return cls(require_arg(cls.name, arg, "file:weights.json"))

    def describe(self) -> str:
        return f"{self.name}:{self.path}"

    def _prepare(self, ctx: MixerContext) -> None:
        unknown = sorted(set(self.file_weights) - set(ctx.domains))
        missing = [d for d in ctx.domains if d not in self.file_weights]
        if unknown or missing:
            parts = []
            if unknown:
                parts.append(f"unknown domains {unknown}")
            if missing:
                parts.append(f"missing domains {missing} (give 0 to leave one out)")
            raise MixerError(
                f"weight file {self.path!r}: {'; '.join(parts)}; the run has {list(ctx.domains)}"
            )
        raw = np.array([self.file_weights[d] for d in ctx.domains])
        w = normalize_weights(raw, ctx.k, f"weights in {self.path!r}")
        if abs(raw.sum() - 1.0) > FILE_SUM_TOLERANCE:
            warnings.warn(
                f"weights in {self.path!r} sum to {raw.sum():.6g}, not 1; normalised to sum to 1",
                stacklevel=3,
            )
        self._w = w

    def _weights(self) -> np.ndarray:
        assert self._w is not None  # set in _prepare, which setup() runs before self.ctx exists
        return self._w

    def _state(self) -> dict[str, Any]:
        return {"weights": dict(zip(self.ctx.domains, self.weights().tolist(), strict=True))}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        saved = state.get("weights", {})
        now = dict(zip(self.ctx.domains, self.weights().tolist(), strict=True))
        if set(saved) != set(now) or any(abs(saved[d] - now[d]) > 1e-12 for d in now):
            raise MixerError(
                f"weight file {self.path!r} changed since the checkpoint: saved {saved}, "
                f"now {now}. Restore the file, or start a new run to use the new weights"
            )
