"""TorchRL adapter: :class:`MeanFlowActor`, a ``TensorDictModuleBase`` around a MeanFlowPolicy.

It reads ``in_keys[0]`` (observations ``(*batch, N, obs_dim)``, any batch: a single env, a
vectorised env such as VMAS ``[B]``, a ``ParallelEnv``/``SerialEnv`` of those ``[P, B]``, or a
collector's ``[T]``-stacked data) and, with ``mask_key``, an action mask ``(*batch, N, K)``, and
writes ``out_keys[0]``: continuous ``(*batch, N, D)`` float actions in the policy's bounds, or
discrete ``(*batch, N)`` int64 ids (TorchRL's ``Categorical`` spec; ``MultiAgentMLP`` actors write
the same key). No log-probabilities are written: the policy is trained offline and used as is.

Requires ``tensordict`` (``pip install 'vgm2p_fast[torchrl]'``; TorchRL itself only for the
collectors and environments around it).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..policy import MeanFlowPolicy
from ..policy.sampling import resolve_noise
from . import act_batched, require

_tdnn = require("tensordict.nn", "torchrl", "torchrl", "torchrl")

NestedKey = str | tuple[str, ...]


def _one_key(name: str, keys: NestedKey | Sequence[NestedKey]) -> NestedKey:
    """``keys`` is a sequence of exactly one key; a bare key (a str or a tuple of str) is
    accepted too."""
    if isinstance(keys, str) or (isinstance(keys, tuple) and all(isinstance(k, str)
                                                                  for k in keys)):
        return keys
    keys = list(keys)
    if len(keys) != 1:
        raise ValueError(f"{name}: expected exactly one key, found {keys!r}")
    return keys[0]


class MeanFlowActor(_tdnn.TensorDictModuleBase):
    """A MeanFlowPolicy where TorchRL expects a multi-agent actor.

    Args:
        policy: a MeanFlowPolicy (e.g. ``MeanFlowPolicy.load("policy.pt")``); build/train it with
            the env's ``action_low``/``action_high`` (continuous) so its actions are in the
            env's bounds.
        in_keys: one key, the per-agent observations (default ``("agents", "observation")``).
        out_keys: one key, where the action goes (default ``("agents", "action")``).
        mask_key: the action-mask key of discrete envs that provide one (PettingZoo wrappers:
            ``("agents", "action_mask")``), or None. Unavailable actions are never chosen.
        guidance: test-time guidance w (1 = off: one network evaluation per agent).
        noise: initial noise, ``auto`` (zero for a discrete policy, its mode; sample for a
            continuous one), ``sample`` or ``zero`` (``act_batched``).

    ``forward`` is plain tensor code (no Python loops over agents or envs), so
    ``torch.compile(actor)`` runs it, across batch sizes: one graph for a continuous policy; a
    masked discrete one breaks at the policy's check of the mask (data-dependent).
    """

    def __init__(self, policy: MeanFlowPolicy,
                 in_keys: Sequence[NestedKey] = (("agents", "observation"),),
                 out_keys: Sequence[NestedKey] = (("agents", "action"),),
                 mask_key: NestedKey | None = None, *, guidance: float = 1.0,
                 noise: str = "auto") -> None:
        super().__init__()
        if not isinstance(policy, MeanFlowPolicy):
            raise ValueError(f"policy: expected a vgm2p_fast.MeanFlowPolicy, found "
                             f"{type(policy).__name__}")
        if mask_key is not None and not policy.discrete:
            raise ValueError(f"mask_key: expected None for a continuous policy, found "
                             f"{mask_key!r}")
        self.policy = policy
        self.obs_key = _one_key("in_keys", in_keys)
        self.action_key = _one_key("out_keys", out_keys)
        self.mask_key = mask_key
        self.guidance = float(guidance)
        resolve_noise(noise, policy.discrete)
        self.noise = noise
        self.in_keys = [self.obs_key] + ([] if mask_key is None else [mask_key])
        self.out_keys = [self.action_key]

    def forward(self, tensordict):
        """Writes ``out_keys[0]`` into ``tensordict`` (in place) and returns it."""
        mask = None if self.mask_key is None else tensordict.get(self.mask_key)
        action = act_batched(self.policy, tensordict.get(self.obs_key), mask,
                             guidance=self.guidance, noise=self.noise)
        tensordict.set(self.action_key, action)
        return tensordict

    def check_spec(self, action_spec) -> None:
        """Raise ValueError when the policy cannot produce actions of ``action_spec``
        (``env.full_action_spec[out_key]``): agent count, action size, discrete vs continuous."""
        shape = tuple(action_spec.shape)
        p = self.policy
        want = (p.n_agents,) if p.discrete else (p.n_agents, p.action_dim)
        if shape[-len(want):] != want:
            raise ValueError(f"action_spec: expected trailing shape {want} for this policy "
                             f"(n_agents={p.n_agents}, action_dim={p.action_dim}, "
                             f"discrete={p.discrete}), found {shape}")
        discrete_spec = not action_spec.dtype.is_floating_point
        if discrete_spec != p.discrete:
            raise ValueError(f"action_spec: expected a {'discrete' if p.discrete else 'continuous'}"
                             f" spec, found dtype {action_spec.dtype}")
        if p.discrete and action_spec.space.n != p.action_dim:
            raise ValueError(f"action_spec: expected {p.action_dim} actions, found "
                             f"{action_spec.space.n}")
