"""PyMARL / EPyMARL-style controller: :class:`MeanFlowMAC`, over plain tensors.

PyMARL's runners talk to a multi-agent controller (``mac``) through ``init_hidden`` and
``select_actions``; this class offers those with a trained MeanFlowPolicy behind them, so an
evaluation or fine-tuning script swaps its ``mac`` and keeps its runner. Where it goes, e.g. in
EPyMARL's ``src/run.py`` (or a ``controllers/`` entry registered as ``mac: meanflow``)::

    from vgm2p_fast import MeanFlowPolicy
    from vgm2p_fast.integrations.pymarl import MeanFlowMAC

    mac = MeanFlowMAC(MeanFlowPolicy.load("policy.pt", map_location=args.device))
    # EpisodeRunner.run:
    #     actions = mac.select_actions(batch["obs"][:, t], batch["avail_actions"][:, t],
    #                                  t_env=self.t_env, test_mode=test_mode)

``ep_batch[...]`` slices are plain tensors, so the controller needs no PyMARL import.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ..policy import MeanFlowPolicy
from ..policy.sampling import resolve_noise
from . import act_batched

_MODEL_FILE = "policy.pt"


class MeanFlowMAC:
    """Multi-agent controller with PyMARL's ``select_actions`` semantics.

    Args:
        policy: the trained MeanFlowPolicy (shared or per-agent parameters).
        guidance: test-time guidance w (1 = off: one network evaluation per agent).
        noise: initial noise, ``auto`` (zero for a discrete policy, its mode; sample for a
            continuous one), ``sample`` or ``zero`` (``act_batched``).
    """

    def __init__(self, policy: MeanFlowPolicy, *, guidance: float = 1.0,
                 noise: str = "auto") -> None:
        if not isinstance(policy, MeanFlowPolicy):
            raise ValueError(f"policy: expected a vgm2p_fast.MeanFlowPolicy, found "
                             f"{type(policy).__name__}")
        self.policy = policy.eval()
        self.n_agents = policy.n_agents
        self.guidance = float(guidance)
        resolve_noise(noise, policy.discrete)
        self.noise = noise

    def select_actions(self, obs: torch.Tensor, avail_actions: torch.Tensor | None = None,
                       t_env: int = 0, test_mode: bool = False,
                       bs: slice | Sequence[int] | torch.Tensor = slice(None)) -> torch.Tensor:
        """Actions of the batch entries ``bs`` (PyMARL's ParallelRunner passes the running envs).

        Args:
            obs: [B, N, obs_dim] float (``ep_batch["obs"][:, t_ep]``).
            avail_actions: [B, N, K] 0/1 ints or bool (``ep_batch["avail_actions"][:, t_ep]``),
                discrete policies; an unavailable action is never chosen. None: all available.
            t_env, test_mode: accepted for drop-in compatibility; they change nothing: the
                policy was trained offline and has no exploration schedule (its ``noise`` option
                applies in training and in test runs alike).
            bs: batch entries to act for.

        Returns:
            discrete: [len(bs), N] int64 action ids (PyMARL's ``chosen_actions``); continuous:
            [len(bs), N, D] float in the policy's bounds. On ``obs``'s device.
        """
        del t_env, test_mode  # see the docstring: no exploration schedule to apply
        avail = None if avail_actions is None else avail_actions[bs]
        return act_batched(self.policy, obs[bs], avail, guidance=self.guidance, noise=self.noise)

    def init_hidden(self, batch_size: int) -> None:
        """No-op: the MeanFlow policy is feed-forward, it carries no hidden state."""

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """The policy's parameters (PyMARL learners build their optimisers from these)."""
        return self.policy.parameters()

    def cuda(self) -> MeanFlowMAC:
        """Move the policy to the current CUDA device (PyMARL calls ``mac.cuda()``)."""
        self.policy.cuda()
        return self

    def save_models(self, path: str | os.PathLike) -> None:
        """Write ``<path>/policy.pt`` (PyMARL passes a directory)."""
        self.policy.save(Path(path) / _MODEL_FILE)

    def load_models(self, path: str | os.PathLike) -> None:
        """Load ``<path>/policy.pt`` written by :meth:`save_models` (or by ``vgm2p train``)."""
        device = self.policy.obs_mean.device
        self.policy = MeanFlowPolicy.load(Path(path) / _MODEL_FILE, map_location=device).eval()
        self.n_agents = self.policy.n_agents
