"""acodm: online data mixing for LLM pretraining.

An actor-critic policy learns the domain weights of the next stretch of training on a
small proxy model; its exported actor then drives the sampling when pretraining a larger
target. See README.md for the user story and ``../shared/docs/METHOD.md`` for the method.
"""

from acodm.errors import AcodmError

__version__ = "0.1.0"

__all__ = ["AcodmError", "__version__"]
