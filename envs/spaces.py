"""``acodm.envs.spaces`` is :mod:`acodm.spaces`, the same module object (its old home).

The MDP's pure parts (action mapping, observation, reward) moved out of this package so that
an exported policy can be loaded and driven without importing gymnasium or the trainer
(:mod:`acodm.policies.mixing`); code that imports them from here keeps working, and a
``monkeypatch`` of either name patches both.
"""

import sys

from acodm import spaces as _spaces

sys.modules[__name__] = _spaces
