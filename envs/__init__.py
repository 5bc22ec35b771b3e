"""acodm.envs: LLM pretraining as a Gymnasium environment (``acodm/DataMixing-v0``).

The environment arrives with the environment issue; this package is installed as
``acodm.envs`` (never as a top-level ``envs``) so that its import path is stable.
"""
