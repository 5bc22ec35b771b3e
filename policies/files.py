"""An exported policy's files, read and checked without torch; the actor as a numpy function.

:mod:`acodm.policies.export` writes ``actor.safetensors`` + ``policy.json`` and loads them as
a torch module (:class:`~acodm.policies.export.MixingPolicy`); this module holds what both a
torch and a torch-free reader need: the format's constants, :func:`read_policy` (the JSON
spec, every check of its keys and shapes, the weights' sha256 and the ``spec_sha256`` over
spec and weights; JSON and safetensors only, never a pickle), :func:`check_domains`, and
:class:`NumpyPolicy`, the same actor evaluated in numpy (float32), for loops that do not use
torch (:mod:`acodm.policies.mixing`). Importing it imports neither torch nor gymnasium.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from acodm.errors import AcodmError
from acodm.io import member_path, sha256_bytes
from acodm.spaces import ActionMapping, SpaceError, action_to_weights, check_mapping

FORMAT = "acodm-policy"
# 3: the action mapping names its kind (softmax or residual) and the epoch cap;
# 2: spec_sha256 over the spec and the weights (1: actor_sha256 only)
FORMAT_VERSION = 3
READ_VERSIONS = (2, 3)  # a version-2 policy is the softmax mapping
ACTOR_FILE = "actor.safetensors"
SPEC_FILE = "policy.json"
# policy.json keys covered by spec_sha256 (with the weights), and those that are not
HASHED_KEYS = (
    "format",
    "format_version",
    "domains",
    "observation",
    "action_mapping",
    "interval",
    "network",
    "observation_space",
    "action_space",
)
FREE_KEYS = ("versions", "extra")  # information only
DIGEST_KEYS = ("actor_sha256", "spec_sha256")

# The pickle-free copy of the actor inside an agent checkpoint (policies/agent.py)
CHECKPOINT_ACTOR_FILE = "actor.safetensors"
CHECKPOINT_ACTOR_SPEC = "actor.json"
CHECKPOINT_ACTOR_FORMAT = "acodm-checkpoint-actor"
CHECKPOINT_ACTOR_VERSION = 1

#: Activations a policy.json may name; an unknown name is a PolicyError, never an import.
ACTIVATION_NAMES = ("relu", "tanh", "elu", "leaky_relu", "gelu", "silu")
#: Several policy paths in one string (an ensemble): ``runs/a/policy;runs/b/policy``.
ENSEMBLE_SEPARATOR = ";"


class PolicyError(AcodmError):
    """An exported policy is missing, tampered with, malformed, or does not fit this run."""


def _check_mapping(beta: float, eps: float) -> None:
    """:func:`~acodm.spaces.check_mapping` (the one check), as a :class:`PolicyError`."""
    try:
        check_mapping(beta, eps)
    except SpaceError as e:
        raise PolicyError(str(e)) from e


def _mapping(spec: Mapping[str, Any]) -> ActionMapping:
    """The spec's action mapping (version 2: the softmax one), as a :class:`PolicyError`."""
    try:
        return ActionMapping.from_dict(
            spec["action_mapping"], legacy=spec.get("format_version") == 2
        )
    except (SpaceError, TypeError, AttributeError) as e:
        raise PolicyError(f"the policy's action mapping is invalid: {e}") from e


def canonical_json(obj: Any) -> bytes:
    """The serialization that :func:`spec_digest` hashes: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


def spec_digest(spec: Mapping[str, Any], actor_bytes: bytes) -> str:
    """sha256 of the canonical JSON of ``spec``'s :data:`HASHED_KEYS`, then the weights' bytes
    (a JSON object is self-delimiting, so the concatenation is unambiguous)."""
    h = hashlib.sha256(canonical_json({key: spec.get(key) for key in HASHED_KEYS}))
    h.update(actor_bytes)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the actor


class PolicyBase:
    """What every loaded policy offers, torch or numpy: its spec and the action -> weights map.

    ``spec`` (policy.json as read), ``domains`` (their order is the action's), ``mapping``
    (softmax or residual, :class:`acodm.spaces.ActionMapping`), ``beta`` / ``eps``,
    ``interval`` (K), ``obs_dim``. Subclasses give :meth:`act`.
    """

    spec: dict[str, Any]
    domains: tuple[str, ...]
    mapping: ActionMapping
    beta: float
    eps: float
    interval: int
    obs_dim: int

    def _read_spec(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self.domains = tuple(spec["domains"])
        self.mapping = _mapping(spec)
        self.beta = self.mapping.beta
        self.eps = self.mapping.eps
        self.interval = int(spec["interval"])
        self.obs_dim = int(spec["network"]["input_dim"])

    def _as_batch(self, observation: np.ndarray) -> tuple[np.ndarray, bool]:
        """``observation`` as a contiguous float32 ``(B, obs_dim)`` array, and whether it was
        one vector."""
        x = np.asarray(observation, dtype=np.float32)
        single = x.ndim == 1
        x = x.reshape(1, -1) if single else x
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise PolicyError(
                f"observation has shape {np.shape(observation)}; this policy "
                f"expects ({self.obs_dim},) or (batch, {self.obs_dim})"
            )
        return np.ascontiguousarray(x), single

    def act(self, observation: np.ndarray) -> np.ndarray:
        """Deterministic action(s) in [-1, 1], float32, shape (k,) or (batch, k)."""
        raise NotImplementedError

    def weights(
        self,
        observation: np.ndarray,
        *,
        prior: np.ndarray | None = None,
        caps: np.ndarray | None = None,
    ) -> np.ndarray:
        """Domain weights (float64, on the simplex), shape (k,) or (batch, k), ``domains`` order.

        ``prior``: the run's prior weights (the residual mapping needs them); ``caps``: its
        live epoch caps (:func:`acodm.spaces.run_caps`), if any. Both in ``domains``
        order; :class:`~acodm.policies.mixing.MixingController` computes them for a run.
        """
        a = self.act(observation)
        if self.mapping.residual and prior is None:
            raise PolicyError(
                f"this policy's action is a residual around the prior {self.mapping.prior!r}: "
                "give the run's prior weights (MixingController computes them from the run)"
            )
        if not self.mapping.residual and caps is None:  # the v2 path, exactly
            if a.ndim == 1:
                return action_to_weights(a, self.beta, self.eps)
            return np.stack([action_to_weights(row, self.beta, self.eps) for row in a])
        rows = [a] if a.ndim == 1 else list(a)
        out = np.stack([self.mapping.weights(row, prior, caps) for row in rows])
        return out[0] if a.ndim == 1 else out


def expected_tensors(network: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The actor's tensor names and shapes for a spec's ``network`` (SB3's ``mu`` MLP:
    ``mu.<2i>.weight|bias`` for each linear layer, activations between, tanh last)."""
    sizes = [int(network["input_dim"]), *map(int, network["layers"]), int(network["output_dim"])]
    out: dict[str, tuple[int, ...]] = {}
    for i in range(len(sizes) - 1):
        out[f"mu.{2 * i}.weight"] = (sizes[i + 1], sizes[i])
        out[f"mu.{2 * i}.bias"] = (sizes[i + 1],)
    return out


def check_tensor_shapes(
    expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """The tensors are exactly the network's, by name and shape."""
    if set(got) != set(expected):
        raise PolicyError(
            f"{what}: missing tensors {sorted(set(expected) - set(got))}, "
            f"unexpected tensors {sorted(set(got) - set(expected))} for the network in the spec"
        )
    wrong = {n: (got[n], expected[n]) for n in expected if got[n] != expected[n]}
    if wrong:
        raise PolicyError(
            f"{what}: shapes (found, expected) {wrong} do not match the network in the spec"
        )


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return (0.5 * x * (1.0 + erf(x.astype(np.float64) / math.sqrt(2.0)))).astype(x.dtype)


#: torch's activations in numpy (float32 in, float32 out; LeakyReLU's default slope 0.01).
_NUMPY_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, np.float32(0.0)),
    "tanh": np.tanh,
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)).astype(x.dtype),
    "leaky_relu": lambda x: np.where(x >= 0, x, np.float32(0.01) * x),
    "gelu": _gelu,
    "silu": lambda x: x / (np.float32(1.0) + np.exp(-x)),
}

Layers = list[tuple[np.ndarray, np.ndarray]]


class NumpyPolicy(PolicyBase):
    """The exported actor evaluated with numpy (float32): no torch, no SB3, no pickle.

    Same spec, checks and action -> weights map as the torch
    :class:`~acodm.policies.export.MixingPolicy`; its actions agree with it to float32
    rounding (about 1e-7; matrix products round differently in numpy and torch). Several
    members (:func:`load_numpy_policies`) act as the mean of their actions, as
    :class:`~acodm.policies.export.PolicyEnsemble` does. Load with :meth:`load`.
    """

    def __init__(self, spec: Mapping[str, Any], members: Sequence[Layers]) -> None:
        if not members:
            raise PolicyError("a policy needs the weights of at least one actor")
        self._read_spec(spec)
        self.members = [list(m) for m in members]
        self._activation = _NUMPY_ACTIVATIONS[str(spec["network"]["activation"])]

    def _one(self, layers: Layers, x: np.ndarray) -> np.ndarray:
        h = x
        for i, (w, b) in enumerate(layers):
            h = h @ w.T + b
            h = np.tanh(h) if i == len(layers) - 1 else self._activation(h)
        return h

    def act(self, observation: np.ndarray) -> np.ndarray:
        x, single = self._as_batch(observation)
        outs = [self._one(m, x) for m in self.members]
        a = (outs[0] if len(outs) == 1 else np.mean(np.stack(outs), axis=0)).astype(np.float32)
        return a[0] if single else a

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path]) -> NumpyPolicy:
        """:func:`load_numpy_policies`: one folder / policy.json, or several (an ensemble)."""
        return load_numpy_policies(path)


# ----------------------------------------------------------------------------- load


def read_policy(path: str | Path) -> tuple[dict[str, Any], bytes, Path]:
    """Read and verify an export (folder or its policy.json): ``(spec, weights' bytes,
    path of actor.safetensors)``. JSON only, never a pickle; refuses a policy.json edited
    after export (``spec_sha256``) and weights that do not match their hash."""
    path = Path(path)
    spec_path = path / SPEC_FILE if path.is_dir() else path
    spec = _read_spec(spec_path)
    actor_path = spec_path.parent / ACTOR_FILE
    blob = _read_blob(actor_path, str(spec["actor_sha256"]))
    if spec_digest(spec, blob) != spec["spec_sha256"]:
        raise PolicyError(
            f"{spec_path} was edited after export: its spec_sha256 does not match its "
            "domains, observation, action mapping, interval, network, spaces and weights; "
            're-export the policy with `acodm export RUN` (only "extra" and "versions" may '
            "be edited)"
        )
    return spec, blob, actor_path


def load_numpy_policy(path: str | Path) -> NumpyPolicy:
    """One export as a :class:`NumpyPolicy` (the checks of :func:`read_policy`, then the
    tensors' names, shapes and float32 dtype against the spec's network)."""
    from safetensors.numpy import load as st_load  # numpy only

    spec, blob, actor_path = read_policy(path)
    try:
        arrays = st_load(blob)  # parses the bytes we hashed: no check-then-read race
    except Exception as e:  # safetensors raises its own SafetensorError
        raise PolicyError(f"{actor_path} is not a valid safetensors file ({e})") from e
    expected = expected_tensors(spec["network"])
    check_tensor_shapes(expected, {n: tuple(a.shape) for n, a in arrays.items()}, str(actor_path))
    if any(a.dtype != np.float32 for a in arrays.values()):
        raise PolicyError(f"{actor_path}: tensors must be float32")
    n_linear = len(expected) // 2
    layers = [(arrays[f"mu.{2 * i}.weight"], arrays[f"mu.{2 * i}.bias"]) for i in range(n_linear)]
    return NumpyPolicy(spec, [layers])


def split_policy_paths(paths: str | Path | Sequence[str | Path]) -> list[str]:
    """A sequence of paths, or one string of paths joined by ``;``, as a list (none empty)."""
    if isinstance(paths, str | Path):
        items = [p.strip() for p in str(paths).split(ENSEMBLE_SEPARATOR)]
    else:
        items = [str(p).strip() for p in paths]
    if not items or any(not p for p in items):
        raise PolicyError(f"empty policy path in {paths!r}; join several with ';'")
    return items


#: What the members of an ensemble must share (besides the network's input and output sizes).
ENSEMBLE_SAME = ("domains", "observation", "action_mapping", "interval")


def ensemble_spec(specs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The spec of an ensemble of policies with ``specs``: the first one's, with ``ensemble``
    listing every member's ``spec_sha256``; a :class:`PolicyError` naming the first field in
    which a member differs from the first (they must differ in their weights only)."""
    if len(specs) < 2:
        raise PolicyError(f"an ensemble needs at least 2 policies, got {len(specs)}")
    first = specs[0]
    for i, s in enumerate(specs[1:], start=2):
        for key in ENSEMBLE_SAME:
            if s.get(key) != first.get(key):
                raise PolicyError(
                    f"policy {i} of the ensemble differs from policy 1 in {key!r}: "
                    "ensemble only policies trained for the same domains, observation, "
                    "action mapping and interval"
                )
        a, b = s["network"], first["network"]
        if a["input_dim"] != b["input_dim"] or a["output_dim"] != b["output_dim"]:
            raise PolicyError(f"policy {i} of the ensemble has another network input/output")
    spec = dict(first)
    spec["ensemble"] = [s.get("spec_sha256") for s in specs]
    return spec


def load_numpy_policies(paths: str | Path | Sequence[str | Path]) -> NumpyPolicy:
    """One :class:`NumpyPolicy`, or the ensemble of several (the mean of their actions):
    a sequence of paths or one string of paths joined by ``;``. Never unpickles."""
    policies = [load_numpy_policy(p) for p in split_policy_paths(paths)]
    if len(policies) == 1:
        return policies[0]
    activations = {p.spec["network"]["activation"] for p in policies}
    if len(activations) > 1:
        raise PolicyError(f"the ensemble's members use different activations {activations}")
    spec = ensemble_spec([p.spec for p in policies])
    return NumpyPolicy(spec, [m for p in policies for m in p.members])


def read_json(path: Path, what: str) -> Any:
    """``path``'s JSON, or a :class:`PolicyError`: missing (``not found: not WHAT``) or not
    valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PolicyError(f"{path} not found: not {what}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path} is not valid JSON ({e}); truncated or edited?") from e


def _read_spec(spec_path: Path) -> dict[str, Any]:
    spec = read_json(spec_path, "an exported acodm policy folder")
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise PolicyError(
            f'{spec_path} is not an acodm policy spec (expected "format": "{FORMAT}")'
        )
    version = spec.get("format_version")
    if version == 1:
        raise PolicyError(
            f"{spec_path} has format_version 1, whose spec is not covered by a hash; "
            "re-export it with `acodm export RUN` (RUN: the train-policy run folder)"
        )
    if version not in READ_VERSIONS:
        raise PolicyError(
            f"{spec_path} has format_version {version!r}; this acodm reads versions "
            f"{', '.join(map(str, READ_VERSIONS))} (a newer acodm wrote it? upgrade acodm)"
        )
    unknown = sorted(set(spec) - set(HASHED_KEYS) - set(FREE_KEYS) - set(DIGEST_KEYS))
    if unknown:
        raise PolicyError(
            f"{spec_path} has unknown keys {unknown}; free-form information goes under "
            '"extra" (the only key besides "versions" that is not hashed)'
        )
    _validate_spec(spec, spec_path)
    return spec


def _validate_spec(spec: dict[str, Any], where: Path) -> None:
    required = (*HASHED_KEYS, *DIGEST_KEYS)
    missing = [key for key in required if key not in spec]
    if missing:
        raise PolicyError(f"{where} lacks the keys {missing}")
    try:
        net = spec["network"]
        k = int(net["output_dim"])
        ok = (
            int(net["input_dim"]) > 0
            and all(int(n) > 0 for n in net["layers"])
            and k == len(spec["domains"])
            and int(spec["interval"]) > 0
            and list(spec["observation_space"]["shape"]) == [int(net["input_dim"])]
            and list(spec["action_space"]["shape"]) == [k]
        )
        act = net["activation"]
        _mapping(spec)  # a PolicyError naming what is wrong
    except (KeyError, TypeError, ValueError) as e:
        raise PolicyError(f"{where}: malformed network/action_mapping entry ({e!r})") from e
    if not ok:
        raise PolicyError(f"{where}: inconsistent network shape, spaces, domains or interval")
    if act not in ACTIVATION_NAMES:
        raise PolicyError(f"{where}: unknown activation {act!r}; known: {sorted(ACTIVATION_NAMES)}")
    if len(set(spec["domains"])) != len(spec["domains"]):
        raise PolicyError(f"{where}: duplicate domain names {spec['domains']}")


def _read_blob(path: Path, expected_sha: str) -> bytes:
    # a symlink must not make a shared folder read a file elsewhere (e.g. /dev/zero)
    member_path(
        path.parent,
        path.name,
        what=f"the weights file of {path.parent}",
        error=PolicyError,
        fix="copy the real file into the policy folder or re-export the policy",
    )
    if path.exists() and not path.is_file():
        raise PolicyError(f"{path} is not a regular file; re-export the policy")
    try:
        blob = path.read_bytes()
    except FileNotFoundError as e:
        raise PolicyError(f"{path} not found (the weights belong beside their JSON spec)") from e
    if sha256_bytes(blob) != expected_sha:
        raise PolicyError(
            f"{path}: sha256 does not match its spec (truncated, corrupted or "
            "replaced); re-export the policy"
        )
    return blob


# ----------------------------------------------------------------------------- domains


def check_domains(
    policy: PolicyBase, domains: Sequence[str], *, allow_reorder: bool = False
) -> tuple[int, ...]:
    """Check that a run's domains are the policy's; return ``order`` with ``domains[order[i]] ==
    policy.domains[i]`` (the identity when the names match exactly).

    METHOD.md, "Proxy mode and transfer": domains must match by name. A missing or extra domain
    is always an error naming them. A pure reordering is an error unless ``allow_reorder``.

    Why this never permutes an observation vector for you: the actor is an MLP over the
    concatenated features, **not** permutation-equivariant, so feeding domain groups in another
    order gives different (wrong) weights, not permuted ones; and the observation layout is the
    env's opaque spec, not known here. With ``allow_reorder=True`` the safe remap is to run the
    target *in the policy's order*: build the observation with the domains listed as
    ``policy.domains`` (i.e. ``[domains[j] for j in order]``), and read ``weights()[i]`` as the
    weight of ``policy.domains[i]``.
    """
    given = [str(d) for d in domains]
    if given == list(policy.domains):
        return tuple(range(len(given)))
    missing = [d for d in policy.domains if d not in given]
    extra = [d for d in given if d not in policy.domains]
    if missing or extra or len(given) != len(policy.domains):
        raise PolicyError(
            f"domains do not match the policy: missing {missing}, extra {extra} "
            f"(policy: {list(policy.domains)}); a policy only transfers to runs "
            "with the same domain names"
        )
    if not allow_reorder:
        raise PolicyError(
            f"domains {given} are the policy's {list(policy.domains)} in another "
            "order; let acodm map them by name with `--mixer actor:PATH,reorder=1` on the "
            "command line (Python: MixingController(..., allow_reorder=True)), or build "
            "the run in the policy's order"
        )
    return tuple(given.index(d) for d in policy.domains)
