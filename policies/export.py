"""Export the actor as ``actor.safetensors`` + ``policy.json``; load it back without SB3 or pickle.

METHOD.md, "Proxy mode and transfer": the agent learns on a proxy run, then only its **actor**
is exported (weights + a JSON spec: domain names in order, observation feature spec, action
mapping ``beta``/``eps``, interval K, network shape, versions) and drives the target's mixture.
STYLE.md: artifacts a user may share are safetensors + JSON, never pickle. Loading therefore
reads JSON and safetensors only, verifies hashes, and rebuilds a plain ``torch.nn.Module``
(:class:`MixingPolicy`); stable-baselines3 is not imported here.

Hashes (format versions 2 and 3). ``actor_sha256`` is the sha256 of ``actor.safetensors``.
``spec_sha256`` covers everything that changes what the policy does, together with the
weights: the sha256 of the canonical JSON (``json.dumps(obj, sort_keys=True,
separators=(",", ":"))``) of the keys in :data:`HASHED_KEYS` (format, domains and their order,
the observation feature spec with its normalisation, the action mapping, the interval, the
network, the observation/action space bounds), followed by the bytes of
``actor.safetensors``. A policy.json edited after export (two features swapped, another
``beta``, domains reordered) is refused. Not hashed, free to edit: ``extra`` and ``versions``
(information only; nothing reads them to act). Any other key is refused, so every key a
loader reads is hashed. The hashes detect edits and corruption; they do not authenticate the
sender (whoever sends a policy can re-hash it). Loading one is still safe, since no code runs:
a foreign policy can at worst choose bad mixtures. Version-1 exports (``actor_sha256`` only)
are refused, not accepted with a warning: a v2 file edited back to ``"format_version": 1``
would otherwise skip the check; re-export with ``acodm export RUN``.

Format version 3 names the action mapping's kind (:class:`acodm.envs.spaces.ActionMapping`):
``softmax`` (``beta``, ``eps``) or ``residual`` (``beta``, the ``prior`` rule, which the target
computes from its own run, and the projection), with the epoch cap ``max_epochs`` (or null);
all of it is inside the hashed ``action_mapping``. Version-2 files (no kind) still load, as the
softmax mapping they were trained with.

The writer (:func:`write_policy`) takes :class:`ActorParts` (the actor's MLP tensors, network
shape, spaces): from a live SB3 agent (:func:`actor_parts`, used by :func:`export_actor`) or
from the pickle-free copy that every agent checkpoint holds (:func:`write_checkpoint_actor`,
:func:`read_checkpoint_actor`), so re-exporting a run never unpickles its ``agent.zip``.

The loaded policy maps its actions to weights with the env's own mapping (METHOD.md, "The
environment", Action): ``w = (1 - eps) * softmax(beta * a) + eps / k``,
:func:`acodm.envs.spaces.action_to_weights` (its inverse :func:`~acodm.envs.spaces.weights_to_action`
beside it; both are importable from here too), or the residual one around the target's own
prior, :func:`acodm.envs.spaces.residual_weights` (:class:`~acodm.policies.transfer.MixingController`
computes the prior and the caps of the run it drives).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# the one mapping and its inverse, shared with the env (re-exported here: their old home)
from acodm.envs.spaces import ActionMapping, SpaceError, action_to_weights, check_mapping
from acodm.envs.spaces import weights_to_action as weights_to_action
from acodm.errors import AcodmError
from acodm.io import atomic_directory, member_path, sha256_bytes

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

# Activations a policy.json may name; an unknown name is a PolicyError, never an import.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class PolicyError(AcodmError):
    """An exported policy is missing, tampered with, malformed, or does not fit this run."""


# ----------------------------------------------------------------------------- action mapping


def _check_mapping(beta: float, eps: float) -> None:
    """:func:`~acodm.envs.spaces.check_mapping` (the one check), as a :class:`PolicyError`."""
    try:
        check_mapping(beta, eps)
    except SpaceError as e:
        raise PolicyError(str(e)) from e


# ----------------------------------------------------------------------------- the module


def _build_mlp(
    input_dim: int, layers: Sequence[int], output_dim: int, activation: type[nn.Module]
) -> nn.Sequential:
    """The same ``nn.Sequential`` as SB3's ``create_mlp(..., squash_output=True)``.

    Same module order, so the SB3 actor's ``mu.<i>.weight`` names map one to one.
    """
    mods: list[nn.Module] = []
    sizes = [input_dim, *layers]
    for i in range(len(layers)):
        mods += [nn.Linear(sizes[i], sizes[i + 1]), activation()]
    mods += [nn.Linear(sizes[-1], output_dim), nn.Tanh()]
    return nn.Sequential(*mods)


def _mapping(spec: Mapping[str, Any]) -> ActionMapping:
    """The spec's action mapping (version 2: the softmax one), as a :class:`PolicyError`."""
    try:
        return ActionMapping.from_dict(
            spec["action_mapping"], legacy=spec.get("format_version") == 2
        )
    except (SpaceError, TypeError, AttributeError) as e:
        raise PolicyError(f"the policy's action mapping is invalid: {e}") from e


class MixingPolicy(nn.Module):
    """The exported deterministic actor: observation -> action in [-1, 1]^k -> domain weights.

    Rebuilt from ``policy.json`` + ``actor.safetensors`` by :meth:`load`. ``act`` gives the
    tanh-squashed action exactly as SB3's ``actor(obs)``; ``weights`` maps it to the simplex
    with the exported mapping (``mapping``: softmax with ``beta``/``eps``, or residual around a
    prior, which needs the run's prior weights and caps). The observation must be built by the
    same feature spec (``spec["observation"]``) and in the domain order ``domains`` (see
    :func:`check_domains`).
    """

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        net = spec["network"]
        self.spec: dict[str, Any] = dict(spec)
        self.domains: tuple[str, ...] = tuple(spec["domains"])
        self.mapping: ActionMapping = _mapping(spec)
        self.beta = self.mapping.beta
        self.eps = self.mapping.eps
        self.interval = int(spec["interval"])
        self.obs_dim = int(net["input_dim"])
        self.mu = _build_mlp(
            self.obs_dim, net["layers"], int(net["output_dim"]), ACTIVATIONS[net["activation"]]
        )
        self.eval()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (B, obs_dim) float32 -> action (B, k) in [-1, 1]."""
        return self.mu(obs)

    def _as_batch(self, observation: np.ndarray) -> tuple[torch.Tensor, bool]:
        x = np.asarray(observation, dtype=np.float32)
        single = x.ndim == 1
        x = x.reshape(1, -1) if single else x
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise PolicyError(
                f"observation has shape {np.shape(observation)}; this policy "
                f"expects ({self.obs_dim},) or (batch, {self.obs_dim})"
            )
        return torch.from_numpy(np.ascontiguousarray(x)), single

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> np.ndarray:
        """Deterministic action(s), float32, shape (k,) or (batch, k)."""
        x, single = self._as_batch(observation)
        a = self.forward(x).numpy()
        return a[0] if single else a

    def weights(
        self,
        observation: np.ndarray,
        *,
        prior: np.ndarray | None = None,
        caps: np.ndarray | None = None,
    ) -> np.ndarray:
        """Domain weights (float64, on the simplex), shape (k,) or (batch, k), ``domains`` order.

        ``prior``: the run's prior weights (the residual mapping needs them); ``caps``: its
        live epoch caps (:func:`acodm.envs.spaces.run_caps`), if any. Both in ``domains``
        order; :class:`~acodm.policies.transfer.MixingController` computes them for a run.
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

    @classmethod
    def load(cls, path: str | Path) -> MixingPolicy:
        """Load from an export folder or its ``policy.json``. Never unpickles anything."""
        return load_policy(path)


class PolicyEnsemble(MixingPolicy):
    """Several exported actors of one spec acting as one: the mean of their actions.

    For policies trained by the same recipe with different agent seeds (bagging): where they
    disagree the mean action shrinks towards 0 (with the residual action, the prior), where
    they agree it keeps their move. The members must agree on everything but their weights
    (domains and order, observation spec, action mapping, interval, network input and output
    sizes); anything else is an error naming the field. ``spec`` is the first member's, with
    ``ensemble`` listing every member's ``spec_sha256``. Load with :func:`load_policies`.
    """

    _SAME = ("domains", "observation", "action_mapping", "interval")

    def __init__(self, members: Sequence[MixingPolicy]) -> None:
        nn.Module.__init__(self)
        if len(members) < 2:
            raise PolicyError(f"an ensemble needs at least 2 policies, got {len(members)}")
        first = members[0]
        for i, m in enumerate(members[1:], start=2):
            for key in self._SAME:
                if m.spec.get(key) != first.spec.get(key):
                    raise PolicyError(
                        f"policy {i} of the ensemble differs from policy 1 in {key!r}: "
                        "ensemble only policies trained for the same domains, observation, "
                        "action mapping and interval"
                    )
            if (
                m.obs_dim != first.obs_dim
                or m.spec["network"]["output_dim"] != (first.spec["network"]["output_dim"])
            ):
                raise PolicyError(f"policy {i} of the ensemble has another network input/output")
        self.members = nn.ModuleList(members)
        self.spec = dict(first.spec)
        self.spec["ensemble"] = [m.spec.get("spec_sha256") for m in members]
        self.domains = first.domains
        self.mapping = first.mapping
        self.beta, self.eps = first.beta, first.eps
        self.interval = first.interval
        self.obs_dim = first.obs_dim
        self.eval()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The members' mean action, (B, k) in [-1, 1]."""
        return torch.stack([m(obs) for m in self.members]).mean(dim=0)


ENSEMBLE_SEPARATOR = ";"


def load_policies(paths: str | Path | Sequence[str | Path]) -> MixingPolicy:
    """One policy, or a :class:`PolicyEnsemble` of several: a sequence of paths, or one
    string of paths joined by ``;`` (``runs/a/policy;runs/b/policy``). Never unpickles."""
    if isinstance(paths, str | Path):
        items = [p.strip() for p in str(paths).split(ENSEMBLE_SEPARATOR)]
    else:
        items = [str(p).strip() for p in paths]
    if not items or any(not p for p in items):
        raise PolicyError(f"empty policy path in {paths!r}; join several with ';'")
    policies = [load_policy(p) for p in items]
    return policies[0] if len(policies) == 1 else PolicyEnsemble(policies)


# ----------------------------------------------------------------------------- export


def _activation_name(module_cls: type[nn.Module]) -> str:
    for name, cls in ACTIVATIONS.items():
        if module_cls is cls:
            return name
    raise PolicyError(
        f"activation {module_cls.__name__} cannot be exported; use one of {sorted(ACTIVATIONS)}"
    )


def _versions() -> dict[str, str]:
    import acodm

    out = {"acodm": acodm.__version__, "torch": torch.__version__}
    try:
        import stable_baselines3

        out["stable_baselines3"] = stable_baselines3.__version__
    except ImportError:  # pragma: no cover - export is always called with SB3 present
        pass
    return out


def _box_bounds(space: Any) -> dict[str, Any]:
    return {
        "shape": list(space.shape),
        "low": np.asarray(space.low, np.float64).tolist(),
        "high": np.asarray(space.high, np.float64).tolist(),
    }


def _plain_json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, keys -> str), so hashes agree."""
    return json.loads(json.dumps(obj))


def canonical_json(obj: Any) -> bytes:
    """The serialization that :func:`spec_digest` hashes: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


def spec_digest(spec: Mapping[str, Any], actor_bytes: bytes) -> str:
    """sha256 of the canonical JSON of ``spec``'s :data:`HASHED_KEYS`, then the weights' bytes
    (a JSON object is self-delimiting, so the concatenation is unambiguous)."""
    h = hashlib.sha256(canonical_json({key: spec.get(key) for key in HASHED_KEYS}))
    h.update(actor_bytes)
    return h.hexdigest()


@dataclass(frozen=True)
class ActorParts:
    """What an export takes from a trained actor, with no SB3 object: the MLP's tensors
    (``mu.<i>.weight|bias``, float32 CPU, as :class:`MixingPolicy` names them), the network
    entry of policy.json, the observation/action space bounds, and the versions that trained it.
    """

    tensors: dict[str, torch.Tensor]
    network: dict[str, Any]
    observation_space: dict[str, Any]
    action_space: dict[str, Any]
    versions: dict[str, str]


def actor_parts(agent: Any) -> ActorParts:
    """The :class:`ActorParts` of an SB3 DDPG/TD3 with an MLP actor (no critic, no optimizer)."""
    actor = agent.actor
    tensors = {
        name: t.detach().to("cpu", torch.float32).contiguous()
        for name, t in actor.state_dict().items()
        if name.startswith("mu.")
    }
    network = {
        "input_dim": int(actor.features_dim),
        "layers": [int(x) for x in actor.net_arch],
        "output_dim": int(agent.action_space.shape[0]),
        "activation": _activation_name(actor.activation_fn),
        "output_activation": "tanh",
    }
    return ActorParts(
        tensors,
        network,
        _box_bounds(agent.observation_space),
        _box_bounds(agent.action_space),
        _versions(),
    )


def write_policy(
    parts: ActorParts,
    out_dir: str | Path,
    *,
    domains: Sequence[str],
    observation: Mapping[str, Any],
    beta: float | None = None,
    eps: float | None = None,
    interval: int,
    action: ActionMapping | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``out_dir/actor.safetensors`` + ``out_dir/policy.json`` (atomically); return out_dir.

    The one writer of exported policies. ``observation``: the env's feature spec (opaque JSON,
    stored verbatim). ``action``: the env's action mapping (``env.action_mapping``); without
    it, the softmax mapping of ``beta``/``eps`` (give one or the other). The spec and tensors
    are checked as :func:`load_policy` checks them before anything is written, so an export
    that would not load is never written.
    """
    from safetensors.torch import save as st_save

    mapping = _export_mapping(action, beta, eps)
    domains = [str(d) for d in domains]
    if len(set(domains)) != len(domains):
        raise PolicyError(f"domain names must be unique, got {domains}")
    k = int(parts.network.get("output_dim", -1))
    if k != len(domains):
        raise PolicyError(f"{len(domains)} domain names for an action space of size {k}")
    blob = st_save(parts.tensors)
    spec: dict[str, Any] = _plain_json(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "domains": domains,
            "observation": dict(observation),  # must be plain JSON
            "action_mapping": mapping.to_dict(),
            "interval": int(interval),
            "network": dict(parts.network),
            "observation_space": dict(parts.observation_space),
            "action_space": dict(parts.action_space),
            "versions": dict(parts.versions),
            "extra": dict(extra or {}),
        }
    )
    spec["actor_sha256"] = sha256_bytes(blob)
    spec["spec_sha256"] = spec_digest(spec, blob)
    where = Path(out_dir) / SPEC_FILE
    _validate_spec(spec, where)
    _check_tensors(MixingPolicy(spec), parts.tensors, "the actor's tensors")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / ACTOR_FILE).write_bytes(blob)
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return Path(out_dir)


def _export_mapping(
    action: ActionMapping | None, beta: float | None, eps: float | None
) -> ActionMapping:
    if action is not None:
        if (beta is not None and beta != action.beta) or (eps is not None and eps != action.eps):
            raise PolicyError(
                f"beta={beta}, eps={eps} disagree with the action mapping {action}; give one"
            )
        return action
    if beta is None or eps is None:
        raise PolicyError("give the action mapping (action=env.action_mapping) or beta and eps")
    _check_mapping(beta, eps)
    return ActionMapping("softmax", float(beta), float(eps))


def export_actor(
    agent: Any,
    out_dir: str | Path,
    *,
    domains: Sequence[str],
    observation: Mapping[str, Any],
    beta: float | None = None,
    eps: float | None = None,
    interval: int,
    action: ActionMapping | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """:func:`write_policy` of a live SB3 agent's actor; return out_dir.

    ``agent``: an SB3 DDPG/TD3 with an MLP actor and a Box(-1, 1, (k,)) action space.
    Only the actor's weights are written (no critic, no optimizer, no buffer).
    """
    return write_policy(
        actor_parts(agent),
        out_dir,
        domains=domains,
        observation=observation,
        beta=beta,
        eps=eps,
        interval=interval,
        action=action,
        extra=extra,
        overwrite=overwrite,
    )


# ----------------------------------------------------------------------------- checkpoint copy


def write_checkpoint_actor(
    parts: ActorParts, folder: Path, *, algorithm: str, num_timesteps: int
) -> None:
    """Write the actor's pickle-free copy into an agent checkpoint being built (``folder``):
    ``actor.safetensors`` + ``actor.json`` (network, spaces, algorithm, timesteps, versions)."""
    from safetensors.torch import save as st_save

    blob = st_save(parts.tensors)
    meta = {
        "format": CHECKPOINT_ACTOR_FORMAT,
        "format_version": CHECKPOINT_ACTOR_VERSION,
        "algorithm": str(algorithm),
        "num_timesteps": int(num_timesteps),
        "network": parts.network,
        "observation_space": parts.observation_space,
        "action_space": parts.action_space,
        "versions": parts.versions,
        "actor_sha256": sha256_bytes(blob),
    }
    (folder / CHECKPOINT_ACTOR_FILE).write_bytes(blob)
    (folder / CHECKPOINT_ACTOR_SPEC).write_text(json.dumps(meta, indent=2) + "\n", "utf-8")


def read_checkpoint_actor(folder: Path) -> tuple[ActorParts, dict[str, Any]]:
    """Read the copy written by :func:`write_checkpoint_actor` (JSON + safetensors only):
    the parts and ``actor.json``. The result is checked again by :func:`write_policy`."""
    spec_path = folder / CHECKPOINT_ACTOR_SPEC
    try:
        meta = json.loads(spec_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PolicyError(f"{spec_path} not found: not an agent checkpoint of this acodm") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{spec_path} is not valid JSON ({e}); truncated or edited?") from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_ACTOR_FORMAT:
        raise PolicyError(f"{spec_path} is not an acodm checkpoint actor")
    if meta.get("format_version") != CHECKPOINT_ACTOR_VERSION:
        raise PolicyError(
            f"{spec_path} has format_version {meta.get('format_version')!r}; this acodm "
            f"reads version {CHECKPOINT_ACTOR_VERSION}"
        )
    try:
        network = dict(meta["network"])
        spaces = dict(meta["observation_space"]), dict(meta["action_space"])
        versions = {str(k): str(v) for k, v in dict(meta.get("versions", {})).items()}
        int(meta["num_timesteps"])
    except (KeyError, TypeError, ValueError) as e:
        raise PolicyError(f"{spec_path}: malformed entry ({e!r})") from e
    tensors = _read_tensors(folder / CHECKPOINT_ACTOR_FILE, str(meta.get("actor_sha256")))
    return ActorParts(tensors, network, *spaces, versions), meta


# ----------------------------------------------------------------------------- load


def _read_spec(spec_path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise PolicyError(f"{spec_path} not found: not an exported acodm policy folder") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"{spec_path} is not valid JSON ({e}); truncated or edited?") from e
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
    if act not in ACTIVATIONS:
        raise PolicyError(f"{where}: unknown activation {act!r}; known: {sorted(ACTIVATIONS)}")
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


def _parse_tensors(blob: bytes, path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load as st_load

    try:
        return st_load(blob)  # parses the bytes we hashed: no check-then-read race
    except Exception as e:  # safetensors raises its own SafetensorError
        raise PolicyError(f"{path} is not a valid safetensors file ({e})") from e


def _read_tensors(path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    return _parse_tensors(_read_blob(path, expected_sha), path)


def _check_tensors(policy: MixingPolicy, tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """The tensors are exactly the network's, by name, shape and dtype (float32)."""
    expected = {name: tuple(t.shape) for name, t in policy.state_dict().items()}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
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
    if any(t.dtype != torch.float32 for t in tensors.values()):
        raise PolicyError(f"{what}: tensors must be float32")


def load_policy(path: str | Path) -> MixingPolicy:
    """Load an exported policy (folder or its policy.json). JSON + safetensors only, no pickle.

    Refuses a policy.json edited after export (``spec_sha256``, see the module docstring).
    """
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
    tensors = _parse_tensors(blob, actor_path)
    policy = MixingPolicy(spec)
    _check_tensors(policy, tensors, str(actor_path))
    policy.load_state_dict(tensors, strict=True)
    return policy


# ----------------------------------------------------------------------------- domains


def check_domains(
    policy: MixingPolicy, domains: Sequence[str], *, allow_reorder: bool = False
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
