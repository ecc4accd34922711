"""What the stepping loop needs from an environment: the :class:`BatchedEnv` protocol.

The built-in families (``mamujoco.py``, ``smax.py``) follow it; so must the object a
user's ``make_fn`` returns (``register_family``). Arrays are numpy, batch-first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

ActFn = Callable[..., torch.Tensor]


class BatchedEnv(Protocol):
    """A batch of ``B`` environments that ``rollout`` steps together (``B = n_envs``).

    Sizes: ``n_agents`` N; ``obs_dim`` (per agent, padded to the largest agent); ``state_dim``;
    ``action_dim`` (continuous: per agent, padded to the largest agent; discrete: K);
    ``n_actions`` (discrete: K; continuous: None); ``episode_limit`` (the environment's own
    step limit: an episode cut there is a truncation). ``discrete``: the action space.
    ``action_low``/``action_high``: continuous, float arrays ``[action_dim]`` (all agents) or
    ``[N, action_dim]`` (per agent), the bounds actions are clipped to and recorded relative
    to; discrete, None.

    ``obs [B, N, obs_dim]`` float32, ``state [B, state_dim]`` float32 and ``avail [B, N, K]``
    bool (discrete; None for continuous) hold the current step of every slot; ``reset`` and
    ``step`` update them (in place or by rebinding). Rows of slots that are not running are
    never read.

    Optional: ``act_dims`` (continuous), the list of each agent's own action size when agents
    differ; the padded trailing dims of an agent are then recorded as 0.
    """

    discrete: bool
    n_agents: int
    obs_dim: int
    state_dim: int
    action_dim: int
    n_actions: int | None
    episode_limit: int
    action_low: np.ndarray | None
    action_high: np.ndarray | None
    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray | None

    def reset(self, slots: list[int], seeds: list[tuple[int, int]]) -> None:
        """Start a new episode in each of ``slots``; ``seeds[j] = (run seed, episode index)``.

        The episode must depend on that pair only (not on the slot or the batch size), e.g.
        through :func:`episode_seed`, so that results do not depend on ``n_envs``.
        """

    def step(self, actions: np.ndarray, active: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step the ``active`` slots (``[B]`` bool) with ``actions`` (``[B, N, action_dim]``
        float in bounds, or ``[B, N]`` int ids); other slots' rows are filler.

        Returns ``(rewards, terminals, truncations, wins)``, each ``[B]`` (float team reward;
        bool flags; ``wins`` all False where the notion does not apply); outputs of inactive
        slots are ignored.
        """


def episode_seed(seed: int, episode: int) -> int:
    """A 32-bit environment seed for episode ``episode`` of a run seeded ``seed``.

    ``SeedSequence([seed, episode])``: independent of the batch an episode runs in.
    """
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])
