"""UniMax (Chung et al. 2023, "UniMax: Fairer and More Effective Language Sampling for
Large-Scale Multilingual Pretraining", ICLR 2023, Algorithm 1), over domains.

Spread the run's token budget uniformly over the domains, but give no domain more than
``N`` epochs of its data; what a capped domain cannot take is spread uniformly over the
others. Static over the run. In the pilot of BENCHMARKS.md (``unimax:4``) it is the
strongest baseline: small domains stop overfitting, large ones are not starved.
"""

from __future__ import annotations

import warnings

import numpy as np

from acodm.mixers.base import MixerContext, format_number
from acodm.mixers.spec import check_number, parse_number, require_arg
from acodm.mixers.static import StaticMixer


def unimax_allocation(domain_tokens: np.ndarray, budget: float, max_epochs: float) -> np.ndarray:
    """Tokens given to each domain: ``(k,)``, summing to ``budget`` unless all are capped.

    Water-filling as in Chung et al. (2023), Algorithm 1: visit domains from smallest to
    largest; each gets ``min(remaining / domains_left, max_epochs * n_i)``. Since the caps
    grow along the visit order, once a domain is uncapped all later ones get the same share:
    one pass is the fixed point. If every domain is capped, the result sums to less than
    ``budget`` (the caller decides what to do).
    """
    n = np.asarray(domain_tokens, dtype=np.float64)
    alloc = np.zeros_like(n)
    remaining = float(budget)
    order = np.argsort(n, kind="stable")
    for j, i in enumerate(order.tolist()):
        share = remaining / (n.size - j)
        alloc[i] = min(share, max_epochs * n[i])
        remaining -= alloc[i]
    return alloc


class UniMaxMixer(StaticMixer):
    """``w_i = tokens allocated to i / budget`` with ``budget = total_steps * tokens_per_step``.

    When the budget exceeds ``N`` epochs of all the data, every domain is capped: the mixer
    warns and falls back to weights proportional to the caps (that is, natural weights), so
    every domain is repeated ``budget / sum(n)`` times (> N).
    """

    name = "unimax"
    usage = "unimax:N"
    example = "unimax:4"

    def __init__(self, max_epochs: float) -> None:
        super().__init__()
        self.max_epochs = check_number(max_epochs, "UniMax epoch cap N", positive=True)
        self._w: np.ndarray | None = None

    @classmethod
    def from_spec_arg(cls, arg: str | None) -> StaticMixer:
        text = require_arg(cls.name, arg, "unimax:4")
        return cls(parse_number(text, "UniMax epoch cap N", positive=True))

    def describe(self) -> str:
        return f"{self.name}:{format_number(self.max_epochs)}"

    def _prepare(self, ctx: MixerContext) -> None:
        budget = float(ctx.total_tokens)
        alloc = unimax_allocation(ctx.domain_tokens, budget, self.max_epochs)
        if budget - alloc.sum() > 1e-9 * budget:
            data = float(ctx.domain_tokens.sum())
            warnings.warn(
                f"UniMax: the run's {budget:.4g} tokens exceed {format_number(self.max_epochs)} "
                f"epochs of all {data:.4g} training tokens, so every domain is capped; falling "
                f"back to weights proportional to the caps (natural weights), i.e. about "
                f"{budget / data:.3g} epochs of every domain",
                stacklevel=3,
            )
            self._w = alloc / alloc.sum()
        else:
            self._w = alloc / budget

    def _weights(self) -> np.ndarray:
        assert self._w is not None  # set in _prepare, which setup() runs before self.ctx exists
        return self._w
