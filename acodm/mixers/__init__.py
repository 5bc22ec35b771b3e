"""Mixers: every data-mixing strategy behind one interface.

A :class:`Mixer` gives the domain weights for the next interval and receives the interval's
feedback. Build one from a spec string with :func:`make_mixer`:

===========================================  ===============================================
spec                                         weights
===========================================  ===============================================
``uniform``                                  ``1/k`` each
``natural``                                  proportional to training tokens
``temperature:T``                            natural ** T, renormalised (T > 0)
``file:PATH``                                JSON ``{"domain": weight}`` naming every domain
``unimax:N``                                 UniMax, each domain capped at N epochs
``odm[:warmup=W,alpha=A,static=SPEC]``       the ODM bandit (defaults 0.02, 0.5, uniform)
``doremi:ref=REF[,eta=E,smooth=C]``          DoReMi proxy run (defaults 1, 0.001)
===========================================  ===============================================

Other components add names with :func:`register_mixer` (the learned actor, DDPG).
"""

from acodm.mixers.base import (
    IntervalFeedback,
    Mixer,
    MixerContext,
    MixerError,
    normalize_weights,
)
from acodm.mixers.doremi import DoReMiMixer
from acodm.mixers.odm import ODMMixer
from acodm.mixers.spec import (
    MixerFactory,
    known_mixers,
    make_mixer,
    mixer_example,
    mixer_usage,
    register_mixer,
)
from acodm.mixers.static import (
    FileMixer,
    NaturalMixer,
    StaticMixer,
    TemperatureMixer,
    UniformMixer,
)
from acodm.mixers.unimax import UniMaxMixer

for _cls in (
    UniformMixer,
    NaturalMixer,
    TemperatureMixer,
    FileMixer,
    UniMaxMixer,
    ODMMixer,
    DoReMiMixer,
):
    register_mixer(
        _cls.name, _cls.from_spec_arg, replace=True, usage=_cls.usage, example=_cls.example
    )
del _cls

__all__ = [
    "DoReMiMixer",
    "FileMixer",
    "IntervalFeedback",
    "Mixer",
    "MixerContext",
    "MixerError",
    "MixerFactory",
    "NaturalMixer",
    "ODMMixer",
    "StaticMixer",
    "TemperatureMixer",
    "UniMaxMixer",
    "UniformMixer",
    "known_mixers",
    "make_mixer",
    "mixer_example",
    "mixer_usage",
    "normalize_weights",
    "register_mixer",
]
