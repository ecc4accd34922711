"""Advantage estimators: the centralised critics that give every dataset transition its global
advantage (design 1.1), behind one interface and a registry.

An estimator is an ``nn.Module`` with four methods the trainer calls, and nothing else:

- ``init_stats(ds)``: input standardisation and output scale from the dataset;
- ``refresh(ds) -> adv [T]``: the advantages of the **whole dataset** (every ``refresh_every``
  iterations; also re-derives any regression targets it keeps);
- ``loss(batch, idx) -> (loss, info)``: the critic loss on a batch of dataset rows ``idx``;
- ``after_step()``: bookkeeping after each optimiser step (e.g. Polyak targets).

Registered estimators (:data:`ESTIMATORS`):

- ``gae``: ``V(s)`` by expectile regression (tau) towards TD(lambda) returns of a target copy
  synced at each refresh; ``A_t`` = GAE(lambda) of the target V over the whole dataset
  (``ops.gae``, one pass).
- ``iql``: twin ``Q(s, a_joint)`` + ``V(s)`` (IQL), ``A = min(Q1, Q2)(s, a) - V(s)``.

Losses are in units of the Monte-Carlo return's std, so they are O(1) for any reward scale.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .datasets import OfflineDataset
from .ops import gae
from .value import Normalised, batched, discounted_returns, expectile_loss


def joint_actions(ds: OfflineDataset, actions: torch.Tensor) -> torch.Tensor:
    """[B, N, D] or [B, N] ids -> [B, N * D] (discrete: one-hot) for Q(s, a_joint)."""
    if ds.discrete:
        actions = F.one_hot(actions.long(), ds.n_actions).float()
    return actions.reshape(actions.shape[0], -1)


class AdvantageEstimator(nn.Module):
    """The interface (module docstring). ``hidden``: critic MLP sizes; ``gamma``, ``lam``:
    discount and GAE lambda; ``tau``: expectile of V."""

    def __init__(self, ds: OfflineDataset, *, hidden: tuple[int, ...], gamma: float,
                 lam: float, tau: float) -> None:
        super().__init__()
        self.gamma, self.lam, self.tau = gamma, lam, tau
        self.v = Normalised(ds.state_dim, hidden, 1)

    def init_stats(self, ds: OfflineDataset) -> None:
        raise NotImplementedError

    def refresh(self, ds: OfflineDataset) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, batch: dict[str, torch.Tensor], idx: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Nothing by default."""


class GAEEstimator(AdvantageEstimator):
    """V + GAE (module docstring); the lambda-returns are a buffer, so a checkpoint of the
    module resumes exactly."""

    def __init__(self, ds: OfflineDataset, **kw) -> None:
        super().__init__(ds, **kw)
        self.v_target = copy.deepcopy(self.v).requires_grad_(False)
        self.register_buffer("returns", torch.zeros(ds.n_transitions))

    def init_stats(self, ds: OfflineDataset) -> None:
        self.v.set_stats(ds.states, discounted_returns(ds, self.gamma))
        self.v_target.load_state_dict(self.v.state_dict())

    @torch.no_grad()
    def refresh(self, ds: OfflineDataset) -> torch.Tensor:
        """Sync the target V, then ``(advantage, lambda-return)`` of every row in one pass."""
        self.v_target.load_state_dict(self.v.state_dict())
        value = batched(self.v_target, ds.states).squeeze(-1)
        next_value = batched(self.v_target, ds.next_states).squeeze(-1)
        adv, ret = gae(ds.rewards, value, next_value, ds.dones, ds.terminals, self.gamma,
                       self.lam)
        self.returns.copy_(ret)
        return adv

    def loss(self, batch, idx):
        v = self.v(batch["states"]).squeeze(-1)
        loss = expectile_loss((self.returns[idx] - v) / self.v.out_scale, self.tau)
        return loss, {"value_loss": loss.detach()}


class IQLEstimator(AdvantageEstimator):
    """Twin Q(s, a_joint) + V(s) with Polyak targets (decay ``target_decay`` per step)."""

    target_decay = 0.995

    def __init__(self, ds: OfflineDataset, **kw) -> None:
        super().__init__(ds, **kw)
        # non-persistent: derived from the dataset, not state
        self.register_buffer("joint", joint_actions(ds, ds.actions), persistent=False)
        self.q = Normalised(ds.state_dim + self.joint.shape[1], kw["hidden"], 2)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)

    def init_stats(self, ds: OfflineDataset) -> None:
        mc = discounted_returns(ds, self.gamma)
        self.v.set_stats(ds.states, mc)
        self.q.set_stats(torch.cat([ds.states, self.joint], -1), mc)
        self.q_target.load_state_dict(self.q.state_dict())

    @torch.no_grad()
    def refresh(self, ds: OfflineDataset) -> torch.Tensor:
        """``min(Q1, Q2)(s, a) - V(s)`` per row with the target Q."""
        q = batched(self.q_target, torch.cat([ds.states, self.joint], -1))
        return q.min(-1).values - batched(self.v, ds.states).squeeze(-1)

    def loss(self, batch, idx):
        v = self.v(batch["states"]).squeeze(-1)
        scale = self.v.out_scale
        sa = torch.cat([batch["states"], self.joint[idx]], -1)
        with torch.no_grad():
            q_t = self.q_target(sa).min(-1).values
            target = batch["rewards"] + self.gamma * (~batch["terminals"]).float() * \
                self.v(batch["next_states"]).squeeze(-1)
        v_loss = expectile_loss((q_t - v) / scale, self.tau)
        q_loss = ((self.q(sa) - target.unsqueeze(-1)) / scale).square().mean()
        return v_loss + q_loss, {"value_loss": v_loss.detach(), "q_loss": q_loss.detach()}

    @torch.no_grad()
    def after_step(self) -> None:
        for pt, ps in zip(self.q_target.parameters(), self.q.parameters()):
            pt.lerp_(ps, 1.0 - self.target_decay)


ESTIMATORS: dict[str, Callable[..., AdvantageEstimator]] = {
    "gae": GAEEstimator,
    "iql": IQLEstimator,
}


def make_estimator(name: str, ds: OfflineDataset, *, hidden: tuple[int, ...], gamma: float,
                   lam: float, tau: float) -> AdvantageEstimator:
    """The registered estimator ``name`` for ``ds``, with its statistics initialised."""
    if name not in ESTIMATORS:
        raise ValueError(f"advantage: expected one of {sorted(ESTIMATORS)}, found {name!r}")
    est = ESTIMATORS[name](ds, hidden=hidden, gamma=gamma, lam=lam, tau=tau)
    est.init_stats(ds)
    return est
