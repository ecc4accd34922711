"""``MLPPolicy``: the deterministic MLP behaviour cloner, the simplest baseline a user tries first.

``a = clip(MLP([normalised o^i | one-hot id_i]), -1, 1)`` rescaled to the bounds (continuous,
trained with the squared error to the dataset action), or the argmax over the available actions
of its K logits (discrete, trained with cross-entropy over the available actions). One network
for all agents, SiLU; the widths of the MeanFlow policy it is compared with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import FLOAT_DTYPES, check_avail, check_tensor
from .network import _bounds

SAVE_FORMAT = "vgm2p_fast.MLPPolicy/1"


class MLPPolicy(nn.Module):
    """Deterministic MLP actor (module docstring).

    Args: obs_dim, action_dim (continuous D or discrete K), n_agents, discrete, hidden_dims,
    action_low / action_high (``(D,)`` or ``(N, D)``; continuous only).
    """

    def __init__(self, obs_dim: int, action_dim: int, n_agents: int, discrete: bool = False,
                 *, hidden_dims: Sequence[int] = (256, 256, 256),
                 action_low: Sequence[float] | torch.Tensor | None = None,
                 action_high: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        for name, val in (("obs_dim", obs_dim), ("action_dim", action_dim),
                          ("n_agents", n_agents)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive int, found {val!r}")
        self.obs_dim, self.action_dim, self.n_agents = obs_dim, action_dim, n_agents
        self.discrete = discrete
        self.config = {"obs_dim": obs_dim, "action_dim": action_dim, "n_agents": n_agents,
                       "discrete": discrete, "hidden_dims": [int(h) for h in hidden_dims]}
        layers: list[nn.Module] = []
        width = obs_dim + n_agents
        for h in hidden_dims:
            layers += [nn.Linear(width, int(h)), nn.SiLU()]
            width = int(h)
        layers.append(nn.Linear(width, action_dim))
        self.net = nn.Sequential(*layers)
        low, high = _bounds(action_low, action_high, action_dim, n_agents, discrete)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.register_buffer("agent_ids", torch.eye(n_agents))
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.metadata: dict = {}

    @torch.no_grad()
    def set_obs_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise observations as ``(obs - mean) / std`` (std floored at 1e-6)."""
        for name, x in (("mean", mean), ("std", std)):
            check_tensor(name, x, shape=(self.obs_dim,), dtypes=FLOAT_DTYPES)
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std.clamp_min(1e-6))

    def _out(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, N, obs_dim] -> [B, N, D] raw outputs (actions in [-1, 1] units, or logits)."""
        x = (obs - self.obs_mean) / self.obs_std
        ids = self.agent_ids.to(obs.dtype).expand(obs.shape[0], -1, -1)
        return self.net(torch.cat([x, ids], dim=-1))

    def bc_loss(self, obs: torch.Tensor, actions: torch.Tensor,
                avail_actions: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over rows and agents of ``sum_d (f(o) - a)^2`` (continuous, a in [-1, 1]) or of
        the cross-entropy of the dataset action over the available ones (discrete)."""
        check_tensor("obs", obs, shape=(None, self.n_agents, self.obs_dim), dtypes=FLOAT_DTYPES)
        out = self._out(obs)
        if self.discrete:
            if avail_actions is not None:
                out = out.masked_fill(~avail_actions, float("-inf"))
            loss = F.cross_entropy(out.reshape(-1, self.action_dim), actions.reshape(-1).long())
        else:
            loss = (out - actions).square().sum(-1).mean()
        return loss, {"loss": loss.detach(), "mse": loss.detach()}

    @torch.no_grad()
    def act(self, obs: torch.Tensor, avail_actions: torch.Tensor | None = None
            ) -> torch.Tensor:
        """[B, N, D] actions in the bounds, or [B, N] ids (never an unavailable one)."""
        check_tensor("obs", obs, shape=(None, self.n_agents, self.obs_dim),
                     dtypes=(self.obs_mean.dtype,), device=self.obs_mean.device)
        if not torch.isfinite(obs).all():
            raise ValueError("obs: expected finite observations, found NaN or inf")
        out = self._out(obs)
        if self.discrete:
            if avail_actions is not None:
                check_tensor("avail_actions", avail_actions, shape=tuple(out.shape),
                             dtypes=(torch.bool,), device=out.device)
                check_avail(avail_actions)
                out = out.masked_fill(~avail_actions, float("-inf"))
            return out.argmax(-1)
        x = out.clamp(-1.0, 1.0)
        return self.action_low + (x + 1.0) * (0.5 * (self.action_high - self.action_low))

    def forward(self, obs: torch.Tensor, avail_actions: torch.Tensor | None = None
                ) -> torch.Tensor:
        return self.act(obs, avail_actions)

    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """``torch.save`` of config + weights (+ metadata), atomically."""
        from ..io import atomic_write

        blob = {"format": SAVE_FORMAT, "config": self.config, "state_dict": self.state_dict(),
                "metadata": metadata or {}}
        atomic_write(Path(path), lambda f: torch.save(blob, f))

    @classmethod
    def from_blob(cls, blob: dict, path: object) -> MLPPolicy:
        """Rebuild from a loaded file (``vgm2p_fast.policy.load_policy`` reads it)."""
        state = blob["state_dict"]
        bounds = ({} if blob["config"].get("discrete") else
                  {"action_low": state["action_low"], "action_high": state["action_high"]})
        policy = cls(**blob["config"], **bounds)
        policy.load_state_dict(state)
        policy.metadata = blob.get("metadata", {})
        return policy
