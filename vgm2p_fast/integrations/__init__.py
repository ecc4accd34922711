"""Drop-in adapters: a trained :class:`~vgm2p_fast.MeanFlowPolicy` as the actor of another codebase.

Each adapter is its own module and imports its framework only there, so ``import vgm2p_fast``
never needs them:

- ``vgm2p_fast.integrations.torchrl.MeanFlowActor``: a ``TensorDictModuleBase`` for TorchRL
  collectors and (batched, parallel) environments (needs ``tensordict``: the ``torchrl`` extra).
- ``vgm2p_fast.integrations.pymarl.MeanFlowMAC``: a PyMARL/EPyMARL-style multi-agent controller
  (``select_actions(obs [B, N, obs], avail_actions [B, N, K], t_env, test_mode)``), plain torch.
- ``vgm2p_fast.integrations.ogmarl.MeanFlowSystem``: OG-MARL-style
  ``select_actions(observations: dict[agent, array], legals) -> dict[agent, array]``, numpy.

All of them act with one network evaluation per agent under the advantageous condition token
(``MeanFlowPolicy.act``). Their ``noise`` option (default ``auto``) acts with e = 0, the mode,
for discrete policies and samples e ~ N(0, I) for continuous ones, from torch's global RNG
unless a generator is given.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from .._checks import FLOAT_DTYPES, check_tensor
from ..policy import MeanFlowPolicy
from ..policy.sampling import resolve_noise

__all__ = ["act_batched", "require"]


def require(module: str, package: str, extra: str, adapter: str) -> ModuleType:
    """Import an optional dependency, or raise ImportError naming the package and the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"vgm2p_fast.integrations.{adapter} needs {package}, which is not importable ({exc}); "
            f"install it with `pip install 'vgm2p_fast[{extra}]'` (or `pip install {package}`)"
        ) from exc


def act_batched(policy: MeanFlowPolicy, obs: torch.Tensor,
                avail_actions: torch.Tensor | None = None, *, guidance: float = 1.0,
                generator: torch.Generator | None = None, noise: str = "auto") -> torch.Tensor:
    """``policy.act`` over any number of leading batch dimensions.

    Args:
        obs: (..., N, obs_dim) float; cast to the policy's dtype and device (a no-op when they
            already match, so a collector that keeps both on one device pays nothing).
        avail_actions: (..., N, K) bool or 0/1 ints (discrete policies), or None.
        guidance: test-time guidance w (1 = off).
        generator: RNG of the noise e ~ N(0, I), on the policy's device (None: torch's global one).
        noise: ``sample`` e ~ N(0, I), ``zero`` e = 0, or ``auto`` (zero for discrete policies:
            their mode, the measured better choice; sample for continuous ones), as
            ``vgm2p train``'s evaluation acts by default.

    Returns:
        continuous: (..., N, D) float actions in the policy's bounds; discrete: (..., N) int64
        ids; on ``obs``'s device.
    """
    check_tensor("obs", obs, min_ndim=2, dtypes=FLOAT_DTYPES)
    n, obs_dim = policy.n_agents, policy.obs_dim
    if tuple(obs.shape[-2:]) != (n, obs_dim):
        raise ValueError(f"obs: expected shape (..., {n}, {obs_dim}) (n_agents, obs_dim of the "
                         f"policy), found {tuple(obs.shape)}")
    lead = obs.shape[:-2]
    ref = policy.obs_mean
    flat = obs.reshape(-1, n, obs_dim).to(device=ref.device, dtype=ref.dtype)
    if avail_actions is not None:
        if not policy.discrete:
            raise ValueError("avail_actions: expected None for a continuous policy, found a mask")
        check_tensor("avail_actions", avail_actions, shape=(*lead, n, policy.action_dim))
        if avail_actions.dtype != torch.bool:
            avail_actions = avail_actions != 0
        avail_actions = avail_actions.reshape(-1, n, policy.action_dim).to(ref.device)
    # The noise is drawn here, as policy.act would draw it (same RNG stream, same values), but
    # without a `generator=None` argument: under torch.compile that argument selects randn's
    # generator overload, which rejects the symbolic batch size of a recompiled graph (torch
    # 2.13: every batch size after the first failed to compile).
    shape = (flat.shape[0], n, policy.action_dim)
    if resolve_noise(noise, policy.discrete) == "zero":
        e = torch.zeros(shape, device=ref.device, dtype=ref.dtype)
    else:
        rng = {} if generator is None else {"generator": generator}
        e = torch.randn(shape, device=ref.device, dtype=ref.dtype, **rng)
    actions = policy.act(flat, avail_actions, guidance=guidance, noise=e)
    return actions.reshape(*lead, *actions.shape[1:]).to(obs.device)
