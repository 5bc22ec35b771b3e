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

Format version 3 names the action mapping's kind (:class:`acodm.spaces.ActionMapping`):
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
:func:`acodm.spaces.action_to_weights` (its inverse :func:`~acodm.spaces.weights_to_action`
beside it; both are importable from here too), or the residual one around the target's own
prior, :func:`acodm.spaces.residual_weights` (:class:`~acodm.policies.transfer.MixingController`
computes the prior and the caps of the run it drives).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from acodm.io import atomic_directory, sha256_bytes

# the format, its checks and the torch-free reader live in acodm.policies.files (re-exported
# here, their old home); so does the action -> weights map every loaded policy shares
from acodm.policies.files import (
    ACTIVATION_NAMES,
    ACTOR_FILE,
    CHECKPOINT_ACTOR_FILE,
    CHECKPOINT_ACTOR_FORMAT,
    CHECKPOINT_ACTOR_SPEC,
    CHECKPOINT_ACTOR_VERSION,
    DIGEST_KEYS,
    ENSEMBLE_SEPARATOR,
    FORMAT,
    FORMAT_VERSION,
    FREE_KEYS,
    HASHED_KEYS,
    READ_VERSIONS,
    SPEC_FILE,
    PolicyBase,
    PolicyError,
    _check_mapping,
    _read_blob,
    _validate_spec,
    canonical_json,
    check_domains,
    check_tensor_shapes,
    ensemble_spec,
    read_json,
    read_policy,
    spec_digest,
    split_policy_paths,
)

# the one mapping and its inverse, shared with the env (re-exported here: their old home)
from acodm.spaces import ActionMapping, action_to_weights
from acodm.spaces import weights_to_action as weights_to_action

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_NAMES",
    "ACTOR_FILE",
    "DIGEST_KEYS",
    "ENSEMBLE_SEPARATOR",
    "FORMAT",
    "FORMAT_VERSION",
    "FREE_KEYS",
    "HASHED_KEYS",
    "READ_VERSIONS",
    "SPEC_FILE",
    "ActorParts",
    "MixingPolicy",
    "PolicyEnsemble",
    "PolicyError",
    "action_to_weights",
    "actor_parts",
    "canonical_json",
    "check_domains",
    "export_actor",
    "load_policies",
    "load_policy",
    "read_checkpoint_actor",
    "spec_digest",
    "weights_to_action",
    "write_checkpoint_actor",
    "write_policy",
]

# torch's module for each activation name a policy.json may hold (ACTIVATION_NAMES)
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


# ----------------------------------------------------------------------------- action mapping


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


class MixingPolicy(PolicyBase, nn.Module):
    """The exported deterministic actor: observation -> action in [-1, 1]^k -> domain weights.

    Rebuilt from ``policy.json`` + ``actor.safetensors`` by :meth:`load`. ``act`` gives the
    tanh-squashed action exactly as SB3's ``actor(obs)``; ``weights``
    (:meth:`acodm.policies.files.PolicyBase.weights`) maps it to the simplex with the
    exported mapping (``mapping``: softmax with ``beta``/``eps``, or residual around a prior,
    which needs the run's prior weights and caps). The observation must be built by the same
    feature spec (``spec["observation"]``) and in the domain order ``domains`` (see
    :func:`check_domains`). Without torch: :class:`acodm.policies.files.NumpyPolicy`.
    """

    if TYPE_CHECKING:  # PolicyBase's; mypy cannot follow the editable install's package map
        obs_dim: int

        def _read_spec(self, spec: Mapping[str, Any]) -> None: ...

        def _as_batch(self, observation: np.ndarray) -> tuple[np.ndarray, bool]: ...

    def __init__(self, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self._read_spec(spec)
        net = spec["network"]
        self.mu = _build_mlp(
            self.obs_dim, net["layers"], int(net["output_dim"]), ACTIVATIONS[net["activation"]]
        )
        self.eval()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """obs: (B, obs_dim) float32 -> action (B, k) in [-1, 1]."""
        return self.mu(obs)

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> np.ndarray:
        """Deterministic action(s), float32, shape (k,) or (batch, k)."""
        x, single = self._as_batch(observation)
        a = self.forward(torch.from_numpy(x)).numpy()
        return a[0] if single else a

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

    def __init__(self, members: Sequence[MixingPolicy]) -> None:
        nn.Module.__init__(self)
        # a PolicyError naming the first field in which a member differs
        self._read_spec(ensemble_spec([m.spec for m in members]))
        self.members = nn.ModuleList(members)
        self.eval()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The members' mean action, (B, k) in [-1, 1]."""
        return torch.stack([m(obs) for m in self.members]).mean(dim=0)


def load_policies(paths: str | Path | Sequence[str | Path]) -> MixingPolicy:
    """One policy, or a :class:`PolicyEnsemble` of several: a sequence of paths, or one
    string of paths joined by ``;`` (``runs/a/policy;runs/b/policy``). Never unpickles."""
    policies = [load_policy(p) for p in split_policy_paths(paths)]
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
    meta = read_json(spec_path, "an agent checkpoint of this acodm")
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
    check_tensor_shapes(expected, {name: tuple(t.shape) for name, t in tensors.items()}, what)
    if any(t.dtype != torch.float32 for t in tensors.values()):
        raise PolicyError(f"{what}: tensors must be float32")


def load_policy(path: str | Path) -> MixingPolicy:
    """Load an exported policy (folder or its policy.json). JSON + safetensors only, no pickle.

    Refuses a policy.json edited after export (``spec_sha256``, see the module docstring;
    :func:`acodm.policies.files.read_policy` does every check of the files).
    """
    spec, blob, actor_path = read_policy(path)
    tensors = _parse_tensors(blob, actor_path)
    policy = MixingPolicy(spec)
    _check_tensors(policy, tensors, str(actor_path))
    policy.load_state_dict(tensors, strict=True)
    return policy
