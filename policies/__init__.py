"""acodm.policies: the DDPG/TD3 agent, actor export and loading.

The agent arrives with the environment issue; this package is installed as
``acodm.policies`` (never as a top-level ``policies``) so that its import path is stable.
"""
