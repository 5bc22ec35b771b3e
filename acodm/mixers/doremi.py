"""DoReMi: domain weights by Group DRO on a proxy model (Xie et al. 2023, "DoReMi: Optimizing
Data Mixtures Speeds Up Language Model Pretraining"), as a three-stage baseline.

1. **Reference model.** Any finished ``acodm pretrain`` run (the paper: a fixed mixture, e.g.
   ``--mixer uniform``). :func:`reference_losses` evaluates its last checkpoint once on a
   fixed sample of each domain's *training* windows and writes ``ref_i`` to a JSON file
   (``acodm doremi reference-losses``).
2. **Proxy model.** A pretrain run with ``--mixer doremi:ref=REF.json``. After every interval
   (Xie et al. 2023, Algorithm 1; ``u`` uniform, ``alpha_0 = u``)::

       lambda_i <- max(loss_i - ref_i, 0)                 clipped excess loss; domains not
                                                          sampled keep their last lambda (0 at first;
                                                          the released code: log(vocab size))
       alpha    <- softmax(log alpha + eta * lambda)      exponentiated-gradient ascent
       alpha    <- (1 - c) alpha + c u                    smoothing
       abar     <- sum_t s_t alpha_t / sum_t s_t          average, s_t = optimizer steps of interval t
                                                          (t = 1..T: alpha_0 is not in it, unlike
                                                          the released code; see export_weights)

   Defaults as in the paper: ``eta = 1``, ``c = 1e-3``.
3. **Export.** :func:`export_weights` reads ``abar`` from the proxy run's last checkpoint and
   writes it in the ``file:PATH`` format (``acodm doremi export``); the target run uses
   ``--mixer file:weights.json``.

Spec: ``doremi:ref=REF.json`` or ``doremi:ref=REF.json,eta=1,smooth=0.001`` (any order; the
path may not contain ``,``). The JSON must name exactly the store's domains.

Deviations from the paper (all forced by acodm's mixer interface, which sees per-domain means
of the training losses of an interval, and sets *sampling* weights):

- **Domain-level clipping.** The paper clips per token on the same batch,
  ``max(l_proxy(x) - l_ref(x), 0)``, then averages over the domain's tokens. Here ``ref_i`` is
  the reference model's mean loss on a fixed sample of domain ``i``'s training windows
  (default 64, evenly spaced over the domain, computed once) and the clip is applied to the
  difference of domain means. Clipping the mean is never larger than the mean of the clipped
  values, so excess losses are smaller and less sensitive to per-token noise.
- **Resampling instead of reweighting.** The paper samples the proxy's batches uniformly and
  weights the per-domain losses by ``alpha``; here ``alpha`` is the proxy's sampling
  distribution (the trainer's loss is the batch mean). A domain with a small ``alpha`` may go
  unsampled in an interval; it keeps its last excess loss, so it keeps being pushed up.
- **Update every interval.** One update per ``K = --interval`` optimizer steps from the
  interval's mean losses (``K = 1``, the default, is the paper's every step), and the average
  weights each ``alpha_t`` by the steps of its interval (equal unless the last is shorter).
- **Sequence-mean losses.** ``loss_i`` is the mean over the domain's sequences of each
  sequence's token-mean loss (what the trainer reports); all sequences have ``seq_len``
  tokens, so this equals the token mean the paper normalises by. Reference and proxy runs
  should use the same store and ``seq_len``; the reference JSON records both.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from acodm.errors import AcodmError
from acodm.io import atomic_write_json, read_json
from acodm.mixers.base import (
    IntervalFeedback,
    Mixer,
    MixerContext,
    MixerError,
    format_number,
    normalize_weights,
)
from acodm.mixers.spec import check_number, parse_number, parse_options, require_arg

REFERENCE_FORMAT = "acodm-doremi-reference"
REFERENCE_VERSION = 1
DEFAULT_ETA = 1.0
DEFAULT_SMOOTH = 1e-3
DEFAULT_WINDOWS = 64
"""Training windows per domain the reference model is evaluated on (fewer if the domain has
fewer). 64 windows of a few hundred tokens put the standard error of a domain's mean loss
well below the excess losses that move the weights."""


# -- the update rule (pure functions) ------------------------------------------------------
def doremi_excess(
    loss: np.ndarray, counts: np.ndarray, reference: np.ndarray, last: np.ndarray
) -> np.ndarray:
    """``lambda_i = max(loss_i - ref_i, 0)`` where domain ``i`` was sampled, else ``last_i``.

    All arrays ``(k,)``; a domain counts as sampled when ``counts_i > 0`` and its loss is
    finite. Returns a new array.
    """
    seen = (counts > 0) & np.isfinite(loss)
    out = np.array(last, dtype=np.float64)
    out[seen] = np.maximum(loss[seen] - reference[seen], 0.0)
    return out


def doremi_update(alpha: np.ndarray, excess: np.ndarray, eta: float, smooth: float) -> np.ndarray:
    """``(1 - c) softmax(log alpha + eta lambda) + c / k`` (Xie et al. 2023, Algorithm 1).

    ``alpha`` ``(k,)`` on the simplex (zeros allowed when ``c = 0``), ``excess`` ``(k,)``.
    The softmax subtracts its maximum, so large ``eta * lambda`` cannot overflow.
    """
    with np.errstate(divide="ignore"):  # log 0 = -inf: a zero weight stays zero
        logits = np.log(alpha) + eta * excess
    logits -= logits.max()
    w = np.exp(logits)
    w /= w.sum()
    return (1.0 - smooth) * w + smooth / alpha.size


# -- the reference file ---------------------------------------------------------------------
def read_reference(path: str | Path) -> dict[str, float]:
    """The ``{domain: reference loss}`` of a file written by :func:`reference_losses`.

    Every problem (missing file, not JSON, wrong format or version, a loss that is not a
    finite number ``>= 0``) is a :class:`MixerError` naming the file.
    """
    where = f"DoReMi reference file {str(path)!r}"
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise MixerError(
            f"{where} does not exist; write it with `acodm doremi reference-losses`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MixerError(f"{where} is not readable JSON ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != REFERENCE_FORMAT:
        raise MixerError(
            f'{where} is not a DoReMi reference file (no "format": {REFERENCE_FORMAT!r}); '
            "write it with `acodm doremi reference-losses`"
        )
    if obj.get("version") != REFERENCE_VERSION:
        raise MixerError(
            f"{where} has version {obj.get('version')!r}; this acodm reads {REFERENCE_VERSION}"
        )
    losses = obj.get("losses")
    if not isinstance(losses, dict) or not losses:
        raise MixerError(f'{where}: "losses" must be a non-empty object {{"domain": loss}}')
    bad = {
        d: v
        for d, v in losses.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0
    }
    if bad:
        raise MixerError(f"{where}: losses must be finite numbers >= 0, got {bad}")
    return {d: float(v) for d, v in losses.items()}


# -- the mixer ------------------------------------------------------------------------------
class DoReMiMixer(Mixer):
    """The DoReMi proxy run's mixer; see the module docstring for the formulas."""

    name = "doremi"
    usage = "doremi:ref=REF.json[,eta=E,smooth=C]"
    example = "doremi:ref={ref}"
    OPTIONS = ("ref", "eta", "smooth")

    def __init__(
        self, ref: str | Path, eta: float = DEFAULT_ETA, smooth: float = DEFAULT_SMOOTH
    ) -> None:
        super().__init__()
        self.eta = check_number(eta, "DoReMi eta", positive=True)
        self.smooth = check_number(smooth, "DoReMi smooth", at_most=1.0)
        if self.smooth < 0:
            raise MixerError(f"DoReMi smooth must be in [0, 1], got {smooth!r}")
        self.ref_path = str(ref)
        self.ref_losses = read_reference(self.ref_path)  # a bad file fails before training
        self._ref = np.zeros(0)
        self._alpha = np.zeros(0)  # (k,) current weights
        self._excess = np.zeros(0)  # (k,) last clipped excess loss per domain
        self._alpha_sum = np.zeros(0)  # (k,) sum_t s_t alpha_t
        self._steps = 0  # sum_t s_t: optimizer steps covered by the average
        self._updates = 0
        self._step = 0  # optimizer steps done, from the last feedback

    @classmethod
    def from_spec_arg(cls, arg: str | None) -> Mixer:
        opts = parse_options(require_arg(cls.name, arg, "doremi:ref=REF.json"), cls.OPTIONS)
        if "ref" not in opts:
            raise MixerError("'doremi' needs ref=PATH, e.g. 'doremi:ref=REF.json,eta=1'")
        kwargs = {k: parse_number(opts[k], f"DoReMi {k}") for k in ("eta", "smooth") if k in opts}
        return cls(opts["ref"], **kwargs)

    def describe(self) -> str:
        return (
            f"{self.name}:ref={self.ref_path},eta={format_number(self.eta)},"
            f"smooth={format_number(self.smooth)}"
        )

    def _prepare(self, ctx: MixerContext) -> None:
        unknown = sorted(set(self.ref_losses) - set(ctx.domains))
        missing = [d for d in ctx.domains if d not in self.ref_losses]
        if unknown or missing:
            parts = [f"unknown domains {unknown}"] if unknown else []
            parts += [f"missing domains {missing}"] if missing else []
            raise MixerError(
                f"DoReMi reference file {self.ref_path!r}: {'; '.join(parts)}; the run has "
                f"{list(ctx.domains)}. Compute the reference losses on the same store"
            )
        self._ref = np.array([self.ref_losses[d] for d in ctx.domains])
        self._alpha = np.full(ctx.k, 1.0 / ctx.k)
        self._excess = np.zeros(ctx.k)
        self._alpha_sum = np.zeros(ctx.k)
        self._steps = self._updates = self._step = 0

    def _weights(self) -> np.ndarray:
        return self._alpha

    def _update(self, feedback: IntervalFeedback) -> None:
        self._excess = doremi_excess(feedback.loss, feedback.counts, self._ref, self._excess)
        self._alpha = doremi_update(self._alpha, self._excess, self.eta, self.smooth)
        steps = max(int(feedback.step) - self._step, 0)
        self._alpha_sum = self._alpha_sum + steps * self._alpha
        self._steps += steps
        self._updates += 1
        self._step = int(feedback.step)

    def average_weights(self) -> np.ndarray:
        """``(k,)`` the step-weighted mean of ``alpha`` over the updates so far (uniform
        before the first): what the proxy run exports."""
        if self._steps == 0:
            return self._alpha.copy()
        return self._alpha_sum / self._steps

    @property
    def excess(self) -> np.ndarray:
        """``(k,)`` the last clipped excess loss per domain (a copy)."""
        return self._excess.copy()

    def _state(self) -> dict[str, Any]:
        return {
            "alpha": self._alpha.tolist(),
            "alpha_sum": self._alpha_sum.tolist(),
            "steps": self._steps,
            "updates": self._updates,
            "step": self._step,
            "excess": self._excess.tolist(),
            "reference": self._ref.tolist(),
            "average": self.average_weights().tolist(),
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        k = self.ctx.k
        arrays = {key: _array(state, key, k) for key in ("alpha", "alpha_sum", "excess")}
        counters = {key: state.get(key) for key in ("steps", "updates", "step")}
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counters.values()
        ):
            raise MixerError(f"DoReMi state steps/updates/step must be integers >= 0: {counters}")
        if np.any(arrays["alpha"] < 0) or np.any(arrays["alpha_sum"] < 0):
            raise MixerError("DoReMi state alpha and alpha_sum must be >= 0")
        saved_ref = _array(state, "reference", k)
        if not np.array_equal(saved_ref, self._ref):
            raise MixerError(
                f"DoReMi reference file {self.ref_path!r} changed since the checkpoint: saved "
                f"{saved_ref.tolist()}, now {self._ref.tolist()}. Restore the file, or start a "
                "new proxy run"
            )
        self._alpha, self._alpha_sum = arrays["alpha"], arrays["alpha_sum"]
        self._excess = arrays["excess"]
        self._steps = int(state["steps"])
        self._updates = int(state["updates"])
        self._step = int(state["step"])


def _array(state: Mapping[str, Any], key: str, k: int) -> np.ndarray:
    try:
        a = np.asarray(state.get(key), dtype=np.float64)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.shape != (k,) or not np.all(np.isfinite(a)):
        raise MixerError(f"DoReMi state {key!r} must be {k} finite numbers, got {state.get(key)!r}")
    return a


# -- stage 1: reference losses --------------------------------------------------------------
def config_hash(train: Mapping[str, Any]) -> str:
    """sha256 of a run's ``train`` config as canonical JSON (sorted keys): names the run's
    settings independently of formatting."""
    text = json.dumps(dict(train), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sample_windows(n_windows: int, count: int) -> np.ndarray:
    """``min(count, n_windows)`` window indices evenly spaced over ``[0, n_windows)``,
    strictly increasing: ``floor(j n / m)`` for ``j < m``."""
    m = min(int(count), int(n_windows))
    return (np.arange(m, dtype=np.int64) * int(n_windows)) // max(m, 1)


def reference_losses(
    run: str | Path,
    out: str | Path,
    *,
    windows: int = DEFAULT_WINDOWS,
    store: str | Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate a finished pretrain run's last checkpoint on each domain's training windows
    and write the DoReMi reference file ``out`` (atomically); returns what it wrote.

    Args:
        run: the reference run directory (``config.json`` and ``checkpoints/``).
        out: the JSON file to write (``doremi:ref=OUT`` reads it).
        windows: training windows per domain, evenly spaced over the domain (all of them if
            the domain has fewer), each ``seq_len + 1`` tokens as the sampler cuts them.
        store: the token store; default the one in the run's config.
        device: ``auto``, ``cpu`` or ``cuda[:N]``; bf16 autocast follows the run's precision
            setting, as in training.
        batch_size: windows per forward pass (default the run's micro-batch size).
    """
    import torch

    from acodm.checkpoint import latest_checkpoint, load_checkpoint
    from acodm.config import TrainConfig
    from acodm.data.store import open_store
    from acodm.devices import resolve_device
    from acodm.dynamics.probe import window_losses
    from acodm.models import build_model

    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise AcodmError(f"windows must be an integer >= 1, got {windows!r}")
    run = Path(run)
    if not (run / "config.json").is_file():
        raise AcodmError(f"{run} is not a pretrain run directory (no config.json)")
    saved = read_json(run / "config.json", "run config")
    cfg = TrainConfig.from_dict(saved["train"])
    ckpt_path = latest_checkpoint(run)
    if ckpt_path is None:
        raise AcodmError(f"{run} has no checkpoint; finish the reference run first")
    st = open_store(store if store is not None else cfg.store)
    want_tok = saved.get("store", {}).get("tokenizer_sha256")
    if want_tok is not None and st.tokenizer_sha256 != want_tok:
        raise AcodmError(
            f"store {st.path} has another tokenizer than the one {run} was trained with; "
            "use the run's store"
        )
    dev = resolve_device(device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
    model = build_model(cfg.model, st.vocab_size, max_seq_len=cfg.seq_len, seed=cfg.seed)
    ckpt = load_checkpoint(ckpt_path)
    try:
        model.load_state_dict(ckpt.model, strict=True)
    except RuntimeError as e:
        raise AcodmError(f"checkpoint {ckpt_path} does not fit the run's model ({e})") from e
    model.to(dev)  # type: ignore[arg-type]  # transformers' typed wrapper
    model.eval()
    bs = batch_size or cfg.micro_batch_size
    losses: dict[str, float] = {}
    used: dict[str, int] = {}
    width = cfg.seq_len + 1
    with torch.no_grad():
        for d in st.domains:
            arr = st.tokens(d, "train")
            n = (arr.size - 1) // cfg.seq_len  # the sampler's training windows
            if n < 1:
                raise AcodmError(f"domain {d!r} has fewer than {width} training tokens")
            idx = sample_windows(n, windows)
            batch = np.stack([arr[w * cfg.seq_len : w * cfg.seq_len + width] for w in idx])
            tokens = torch.from_numpy(batch.astype(np.int64))
            total = 0.0
            for s in range(0, tokens.shape[0], bs):
                chunk = tokens[s : s + bs].to(dev)
                total += float(window_losses(model, chunk, bf16=bf16).double().sum())
            losses[d], used[d] = total / idx.size, int(idx.size)
    result = {
        "format": REFERENCE_FORMAT,
        "version": REFERENCE_VERSION,
        "domains": list(st.domains),
        "losses": losses,
        "windows": used,
        "seq_len": cfg.seq_len,
        "reference_run": {
            "path": str(run.resolve()),
            "step": ckpt.step,
            "finished": (run / "summary.json").is_file(),
            "config_sha256": config_hash(saved["train"]),
            "mixer": saved.get("mixer"),
            "model": cfg.model,
        },
        "store": {
            "path": str(st.path.resolve()),
            "tokenizer_sha256": st.tokenizer_sha256,
            "corpus_hash": st.corpus_hash,
        },
    }
    atomic_write_json(out, result)
    return result


# -- stage 3: export ------------------------------------------------------------------------
def average_weights_of_run(run: str | Path, *, partial: bool = False) -> dict[str, float]:
    """``{domain: weight}``: the averaged DoReMi weights in a proxy run's last checkpoint.

    The run must have used the ``doremi`` mixer and be finished (its last checkpoint at the
    run's total steps) unless ``partial``.
    """
    from acodm.checkpoint import latest_checkpoint

    run = Path(run)
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise AcodmError(f"{run} has no checkpoint; is it a pretrain run directory?")
    state = read_json(ckpt / "state.json", "checkpoint state")
    mixer = state.get("mixer") or {}
    if mixer.get("mixer") != DoReMiMixer.name:
        raise AcodmError(
            f"{run} was not trained with the doremi mixer (its mixer is "
            f"{mixer.get('spec', mixer.get('mixer'))!r}); export needs a DoReMi proxy run"
        )
    config = run / "config.json"
    total = read_json(config, "run config").get("total_steps") if config.is_file() else None
    step = int(state.get("step", -1))
    if not partial and (total is None or step < int(total)):
        raise AcodmError(
            f"proxy run {run} is not finished (last checkpoint at step {step} of {total}); "
            "finish it with `acodm pretrain --out RUN --resume`, or export anyway with --partial"
        )
    domains = list(mixer.get("domains", []))
    inner = mixer.get("state", {})
    try:
        alpha_sum = np.asarray(inner["alpha_sum"], dtype=np.float64)
        steps = int(inner["steps"])
        alpha = np.asarray(inner["alpha"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise AcodmError(f"checkpoint {ckpt}: the DoReMi state is damaged ({e})") from e
    avg = alpha_sum / steps if steps > 0 else alpha
    try:
        w = normalize_weights(avg, len(domains), f"DoReMi average weights in {ckpt}")
    except MixerError as e:
        raise AcodmError(str(e)) from e
    return dict(zip(domains, w.tolist(), strict=True))


def export_weights(run: str | Path, out: str | Path, *, partial: bool = False) -> dict[str, float]:
    """Write :func:`average_weights_of_run` to ``out`` as ``{"domain": weight}``, the format
    the ``file:PATH`` mixer reads (atomically); returns the weights.

    The average is Algorithm 1's ``abar = sum_{t=1..T} s_t alpha_t / sum_t s_t`` over the ``T``
    updates (``s_t = 1`` at ``--interval 1``): the initial weights ``alpha_0 = u`` are not in it.
    The released DoReMi code's average (``avg_domain_weights``) starts at ``alpha_0`` with a
    count of 1, so it averages ``T + 1`` weight vectors: after ``T`` one-step updates it is
    ``(u + T abar) / (T + 1)``, ``1 / (T + 1)`` of the way from ``abar`` back to uniform.
    """
    weights = average_weights_of_run(run, partial=partial)
    atomic_write_json(out, weights)
    return weights


__all__ = [
    "DoReMiMixer",
    "average_weights_of_run",
    "doremi_excess",
    "doremi_update",
    "export_weights",
    "read_reference",
    "reference_losses",
]
