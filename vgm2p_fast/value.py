"""Critic building blocks and condition tokens (design 1.1); the estimators that use them are
in ``advantage.py``.

- ``Normalised``: ``f(x) = out_mean + out_scale * mlp((x - in_mean) / in_std)``; the affine
  output keeps the network's targets O(1) whatever the reward scale (HalfCheetah returns reach
  ~1000 at gamma = 0.99, SMAX ones ~20).
- ``expectile_loss``, ``discounted_returns`` (Monte-Carlo, for the output scale).
- Tokens: ``binary`` ``c = 1[A >= 0]`` (CFGRL), ``quantile`` K bins of A (top bin = most
  advantageous), ``none`` (plain behaviour cloning: no tokens).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .datasets import OfflineDataset
from .ops import gae

CONDITIONS = ("binary", "quantile", "none")


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """SiLU MLP ``in_dim -> hidden... -> out_dim``."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.SiLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """``mean(|tau - 1[diff < 0]| diff^2)`` with ``diff = target - prediction``."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return (weight * diff.square()).mean()


class Normalised(nn.Module):
    """Input standardisation and output affine map around an MLP (constants, not trained)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.net = mlp(in_dim, hidden, out_dim)
        self.register_buffer("in_mean", torch.zeros(in_dim))
        self.register_buffer("in_std", torch.ones(in_dim))
        self.register_buffer("out_mean", torch.zeros(()))
        self.register_buffer("out_scale", torch.ones(()))

    def set_stats(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Standardise inputs with x's statistics and outputs to y's mean and std."""
        self.in_mean.copy_(x.mean(0))
        self.in_std.copy_(x.std(0).clamp_min(1e-6))
        self.out_mean.copy_(y.mean())
        self.out_scale.copy_(y.std().clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net((x - self.in_mean) / self.in_std)
        return self.out_mean + self.out_scale * h


def discounted_returns(ds: OfflineDataset, gamma: float) -> torch.Tensor:
    """Monte-Carlo discounted returns-to-go per row (``gae`` with V = 0 and lambda = 1); only
    used to set V's output scale before any V exists."""
    zeros = torch.zeros_like(ds.rewards)
    return gae(ds.rewards, zeros, zeros, ds.dones, ds.terminals, gamma, 1.0)[1]


def batched(net: nn.Module, x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """``net`` on ``x`` in chunks of rows (whole-dataset passes without a 1M-row activation)."""
    return torch.cat([net(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


def quantiles(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``torch.quantile(x, q)`` in float64 for any size: torch.quantile takes at most 2^24
    elements, so larger inputs use an even subsample (every k-th element)."""
    return torch.quantile(x.double()[:: -(-x.numel() // 2**24)], q.to(torch.float64))


def tokens_from_advantage(adv: torch.Tensor, condition: str, n_bins: int = 2
                          ) -> torch.Tensor | None:
    """Condition tokens ``[T]`` long from advantages ``[T]``.

    ``binary``: ``1[A >= 0]``. ``quantile``: bin k of the K quantiles of A (ties broken by
    ``bucketize``; token K-1 is the top bin). ``none``: None (no conditioning).
    """
    if condition == "none":
        return None
    if condition == "binary":
        return (adv >= 0).long()
    if condition == "quantile":
        if n_bins < 2:
            raise ValueError(f"n_bins: expected >= 2 quantile bins, found {n_bins}")
        qs = quantiles(adv, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1])
        return torch.bucketize(adv.double(), qs, right=True)
    raise ValueError(f"condition: expected one of {CONDITIONS}, found {condition!r}")
