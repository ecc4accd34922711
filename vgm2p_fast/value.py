"""Value guidance (DESIGN 1.1): a centralised V(s), global GAE advantages, condition tokens.

- ``StateValue``: ``V(s) = mean + scale * mlp((s - s_mean) / s_std)``; the affine output keeps
  the network's targets O(1) whatever the reward scale (HalfCheetah returns reach ~1000 at
  gamma = 0.99, SMAX ones ~20).
- Expectile regression (tau = 0.7) towards TD(lambda) returns ``G^lambda`` computed from a target
  copy of V over the **whole dataset** with ``vgm2p_fast.ops.gae``; the same pass gives the
  GAE advantages ``A_t`` that become the condition tokens. ``refresh`` redoes it, every
  ``refresh_every`` gradient steps of the trainer.
- ``IQLCritic`` (alternative): twin ``Q(s, a_joint)`` heads + ``V(s)``, ``A = min Q - V``.
- Tokens: ``binary`` ``c = 1[A >= 0]`` (CFGRL), ``quantile`` K bins of A (top bin = most
  advantageous), ``none`` (plain behaviour cloning: no tokens).
"""

from __future__ import annotations

import copy
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


class _Normalised(nn.Module):
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


class ValueGuidance(nn.Module):
    """Centralised critic(s) and the whole-dataset advantage refresh.

    Args:
        state_dim: size of the global state (dataset ``states``).
        joint_action_dim: N * act_dim (continuous) or N * K (discrete one-hot); IQL only.
        kind: ``gae`` (V by expectile regression on TD(lambda) returns, GAE advantages) or
            ``iql`` (twin Q(s, a) + V(s), A = min Q - V).
        hidden: critic MLP sizes; gamma, lam: discount and GAE lambda; tau: expectile.
    """

    def __init__(self, state_dim: int, joint_action_dim: int, *, kind: str = "gae",
                 hidden: Sequence[int] = (256, 256), gamma: float = 0.99, lam: float = 0.95,
                 tau: float = 0.7, target_decay: float = 0.995) -> None:
        super().__init__()
        if kind not in ("gae", "iql"):
            raise ValueError(f"kind: expected 'gae' or 'iql', found {kind!r}")
        self.kind, self.gamma, self.lam, self.tau = kind, gamma, lam, tau
        self.target_decay = target_decay
        self.v = _Normalised(state_dim, hidden, 1)
        self.q = _Normalised(state_dim + joint_action_dim, hidden, 2) if kind == "iql" else None
        self.v_target = copy.deepcopy(self.v).requires_grad_(False)
        self.q_target = (copy.deepcopy(self.q).requires_grad_(False) if self.q is not None
                         else None)

    def init_stats(self, ds: OfflineDataset, joint_actions: torch.Tensor | None) -> None:
        """Input standardisation from the dataset, output scale from Monte-Carlo returns."""
        mc = discounted_returns(ds, self.gamma)
        self.v.set_stats(ds.states, mc)
        if self.q is not None:
            self.q.set_stats(torch.cat([ds.states, joint_actions], -1), mc)
        self._sync_targets(1.0)

    @torch.no_grad()
    def _sync_targets(self, rate: float) -> None:
        pairs = [(self.v_target, self.v)] + ([(self.q_target, self.q)] if self.q else [])
        for tgt, src in pairs:
            for pt, ps in zip(tgt.parameters(), src.parameters()):
                pt.lerp_(ps, rate)
            for bt, bs in zip(tgt.buffers(), src.buffers()):
                bt.copy_(bs)

    @torch.no_grad()
    def refresh(self, ds: OfflineDataset, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        """Whole-dataset pass with the target V: ``(advantage [T], lambda_return [T])``.

        The advantage is GAE(lambda) and the return is the V regression target (``gae``
        kind; the ``iql`` kind uses :meth:`iql_advantage` instead).
        """
        value = _batched(self.v_target, ds.states, chunk).squeeze(-1)
        next_value = _batched(self.v_target, ds.next_states, chunk).squeeze(-1)
        adv, ret = gae(ds.rewards, value, next_value, ds.dones, ds.terminals, self.gamma,
                       self.lam)
        return adv, ret

    @torch.no_grad()
    def iql_advantage(self, ds: OfflineDataset, joint_actions: torch.Tensor,
                      chunk: int = 65536) -> torch.Tensor:
        """``min(Q1, Q2)(s, a) - V(s)`` per row with the target Q (IQL)."""
        q = _batched(self.q_target, torch.cat([ds.states, joint_actions], -1), chunk)
        return q.min(-1).values - _batched(self.v, ds.states, chunk).squeeze(-1)

    def loss(self, batch: dict[str, torch.Tensor], returns: torch.Tensor | None,
             joint_actions: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Critic loss on one batch.

        ``gae``: expectile(G^lambda - V(s)). ``iql``: expectile(min Q_target(s, a) - V(s)) plus
        ``(r + gamma (1 - terminal) V(s') - Q_k(s, a))^2`` for both heads.
        """
        v = self.v(batch["states"]).squeeze(-1)
        scale = self.v.out_scale  # losses in units of the return std: O(1) for any reward scale
        if self.kind == "gae":
            loss = expectile_loss((returns - v) / scale, self.tau)
            return loss, {"value_loss": loss.detach()}
        sa = torch.cat([batch["states"], joint_actions], -1)
        with torch.no_grad():
            q_t = self.q_target(sa).min(-1).values
            target = batch["rewards"] + self.gamma * (~batch["terminals"]).float() * \
                self.v(batch["next_states"]).squeeze(-1)
        v_loss = expectile_loss((q_t - v) / scale, self.tau)
        q_loss = ((self.q(sa) - target.unsqueeze(-1)) / scale).square().mean()
        return v_loss + q_loss, {"value_loss": v_loss.detach(), "q_loss": q_loss.detach()}

    def update_targets(self, full: bool = False) -> None:
        """Polyak-average the targets (IQL, every step) or copy them (GAE, at each refresh)."""
        self._sync_targets(1.0 if full else 1.0 - self.target_decay)


def _batched(net: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
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
