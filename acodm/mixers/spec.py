"""Mixer specs: the one-line strings that name a mixer on the command line and in configs.

Grammar (whitespace around the spec is ignored)::

    spec    := NAME | NAME ":" ARG
    NAME    := a registered mixer name: uniform, natural, temperature, file, unimax, odm, ...
    ARG     := everything after the first ":", handed to the mixer's factory as text

Built-in forms: ``uniform``, ``natural``, ``temperature:T``, ``file:PATH``, ``unimax:N``,
``odm`` and ``odm:KEY=VALUE,KEY=VALUE`` (see :mod:`acodm.mixers.odm`),
``doremi:ref=PATH[,eta=E,smooth=C]`` (see :mod:`acodm.mixers.doremi`). Every mixer's
:meth:`~acodm.mixers.base.Mixer.describe` returns a spec that parses back to the same mixer.
Later components add their own names with :func:`register_mixer` (``actor:PATH``, ``ddpg``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection

import numpy as np

from acodm.mixers.base import Mixer, MixerError

MixerFactory = Callable[[str | None], Mixer]
"""Builds a mixer from the text after ``NAME:`` (``None`` when the spec has no ``:``)."""

_REGISTRY: dict[str, MixerFactory] = {}
_USAGE: dict[str, str] = {}  # NAME -> how its spec is written, for help texts
_EXAMPLE: dict[str, str] = {}  # NAME -> a spec that builds it (Mixer.example), for the tests
#: Mixers registered by optional modules, imported on first use (core never imports policies
#: at import time): NAME -> (module whose import calls :func:`register_mixer` for NAME, usage,
#: example).
_PLUGINS: dict[str, tuple[str, str, str]] = {
    "actor": ("acodm.policies.transfer", "actor:PATH[,reorder=1]", "actor:{policy}"),
    "ddpg": (
        "acodm.policies.ddpg",
        "ddpg[:warmup=F,seed=N,beta=B,eps=E,reward=R]",
        "ddpg:seed=1",
    ),
}
_NAME = re.compile(r"[a-z][a-z0-9_\-]*")


def register_mixer(
    name: str,
    factory: MixerFactory,
    *,
    replace: bool = False,
    usage: str | None = None,
    example: str | None = None,
) -> None:
    """Make ``make_mixer("NAME")`` / ``make_mixer("NAME:ARG")`` call ``factory(ARG or None)``.

    The factory raises :class:`MixerError` for a bad argument; :func:`make_mixer` adds the
    spec to the message. Registering a taken name is an error unless ``replace``. ``usage``
    (e.g. ``"unimax:N"``, default ``NAME``) is how help texts show the spec; ``example`` is a
    spec that builds the mixer (:attr:`Mixer.example <acodm.mixers.base.Mixer.example>`), which
    the mixer contract tests run: without one they fail for this mixer.
    """
    if not _NAME.fullmatch(name):
        raise MixerError(f"mixer name {name!r} must be lowercase letters, digits, '_' or '-'")
    if name in _REGISTRY and not replace:
        raise MixerError(f"a mixer named {name!r} is already registered (pass replace=True)")
    plugin = _PLUGINS.get(name)
    _REGISTRY[name] = factory
    _USAGE[name] = usage or (plugin[1] if plugin else name)
    _EXAMPLE[name] = example or (plugin[2] if plugin else "")


def known_mixers() -> list[str]:
    """The mixer names :func:`make_mixer` accepts (registered or importable plugins), sorted."""
    return sorted(set(_REGISTRY) | set(_PLUGINS))


def mixer_usage() -> list[str]:
    """How each known mixer's spec is written, in registration order, plugins last."""
    return [*_USAGE.values(), *(u for n, (_, u, _) in _PLUGINS.items() if n not in _USAGE)]


def mixer_example(name: str) -> str:
    """A spec that builds mixer ``name``, e.g. ``"unimax:4"``; ``{placeholders}`` name the
    files it needs (:attr:`Mixer.example <acodm.mixers.base.Mixer.example>`). A mixer that
    declares none is a :class:`MixerError` saying how to declare one."""
    if name not in _REGISTRY and name not in _PLUGINS:
        raise MixerError(f"unknown mixer {name!r}; known: {known_mixers()}")
    example = _EXAMPLE.get(name) or (_PLUGINS[name][2] if name in _PLUGINS else "")
    if not example:
        raise MixerError(
            f'mixer {name!r} declares no example spec: set `example = "{name}:..."` on its '
            "class next to `usage`, or pass register_mixer(..., example=...)"
        )
    return example


def _import_plugin(name: str) -> None:
    """Import the module that registers mixer ``name`` (see ``_PLUGINS``)."""
    import importlib

    module = _PLUGINS[name][0]
    try:
        importlib.import_module(module)  # registers the name as a side effect
    except ModuleNotFoundError as e:
        if e.name is None or not module.startswith(e.name):
            raise  # a dependency of the plugin is missing: show the real cause
        raise MixerError(f"mixer {name!r} needs the module {module}, which is not installed") from e


def make_mixer(spec: str) -> Mixer:
    """Build a mixer from its spec, e.g. ``"unimax:4"`` or ``"odm:warmup=0.05"``."""
    if not isinstance(spec, str) or not spec.strip():
        raise MixerError(f"a mixer spec must be a non-empty string, got {spec!r}")
    name, sep, arg = spec.strip().partition(":")
    if name not in _REGISTRY and name in _PLUGINS:
        _import_plugin(name)
    if name not in _REGISTRY:
        raise MixerError(f"unknown mixer {name!r} in spec {spec!r}; known: {known_mixers()}")
    try:
        return _REGISTRY[name](arg if sep else None)
    except MixerError as e:
        raise MixerError(f"bad mixer spec {spec!r}: {e}") from e


# -- helpers for factories ----------------------------------------------------------------
def require_no_arg(name: str, arg: str | None) -> None:
    if arg is not None:
        raise MixerError(f"{name!r} takes no argument, got {arg!r}")


def require_arg(name: str, arg: str | None, example: str) -> str:
    if arg is None or not arg.strip():
        raise MixerError(f"{name!r} needs an argument, e.g. {example!r}")
    return arg.strip()


def check_number(
    x: float, what: str, *, positive: bool = False, at_most: float | None = None
) -> float:
    """``x`` as a float if it is finite (and ``> 0`` / ``<= at_most`` when asked)."""
    if isinstance(x, bool) or not isinstance(x, int | float | np.number) or not math.isfinite(x):
        raise MixerError(f"{what} must be a finite number, got {x!r}")
    if positive and x <= 0:
        raise MixerError(f"{what} must be > 0, got {x!r}")
    if at_most is not None and x > at_most:
        raise MixerError(f"{what} must be <= {at_most:g}, got {x!r}")
    return float(x)


def parse_number(
    text: str, what: str, *, positive: bool = False, at_most: float | None = None
) -> float:
    """A finite float from ``text``; ``what`` names it in the error."""
    try:
        x = float(text)
    except ValueError:
        raise MixerError(f"{what} must be a number, got {text!r}") from None
    return check_number(x, what, positive=positive, at_most=at_most)


def parse_options(arg: str | None, known: Collection[str]) -> dict[str, str]:
    """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}``; unknown, repeated or malformed keys are errors.

    A value is everything after the first ``=`` of its item, so it may hold ``:`` and ``=``
    but not ``,``.
    """
    out: dict[str, str] = {}
    if arg is None or not arg.strip():
        return out
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise MixerError(
                f"option {item.strip()!r} is not KEY=VALUE; known keys: {sorted(known)}"
            )
        if key not in known:
            raise MixerError(f"unknown option {key!r}; known keys: {sorted(known)}")
        if key in out:
            raise MixerError(f"option {key!r} is given twice")
        out[key] = value
    return out
