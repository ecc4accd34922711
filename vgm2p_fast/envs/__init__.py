"""Evaluation environments, exactly as the datasets record them (docs/design.md section 6).

An environment is named by a spec string, the ``env`` attribute of a dataset:
``<family>/<name>``. Families are records in a small registry (``registry.py``); two are
built in, one file each:

- ``mamujoco/<scenario>-<agent_conf>`` (``mamujoco/HalfCheetah-2x3``, ``mamujoco/Hopper-3x1``):
  multi-agent MuJoCo from gymnasium-robotics (``mamujoco.py``);
- ``smax/<map>`` (``smax/3m``, ``smax/2s3z``): SMAX from jaxmarl, on CPU jax (``smax.py``).

Your own simulator plugs in with :func:`register_family`: a ``make_fn(name, n_envs)`` that
returns an object following :class:`BatchedEnv`; ``evaluate``/``rollout``/``env_info`` then
accept ``"<family>/<name>"``. A dataset may name any environment (``vmas/navigation``,
``my-sim``): training never needs it, and :func:`evaluation_status` says whether evaluation
can run and, if not, why. :func:`check_compatible` compares data sizes with an environment.

``rollout`` (``loop.py``) is the one stepping loop; ``evaluate`` summarises it, and the dataset
generators (``benchmarks/datasets/``) record it in the HDF5 layout of docs/design.md
section 3.
"""

from .base import ActFn, BatchedEnv, episode_seed
from .loop import EnvMismatchError, check_compatible, env_info, evaluate, rollout
from .mamujoco import mamujoco_action_index, quiet_mujoco_compile
from .registry import (
    EnvFamily,
    EnvUnavailableError,
    EvaluationStatus,
    evaluation_status,
    families,
    find_family,
    get_family,
    parse_env_spec,
    register_family,
    spec_help,
)
from .smax import smax_env

__all__ = [
    "ActFn", "BatchedEnv", "EnvFamily", "EnvMismatchError", "EnvUnavailableError",
    "EvaluationStatus", "check_compatible", "env_info", "episode_seed", "evaluate",
    "evaluation_status", "families", "find_family", "get_family", "mamujoco_action_index",
    "parse_env_spec", "quiet_mujoco_compile", "register_family", "rollout", "smax_env",
    "spec_help",
]
