"""The average-velocity network ``u(z, r, t | o^i, id_i, c)`` of a MeanFlow policy (design 1.2).

Per agent ``i`` an MLP over

    [ z (D) | emb(t) (E) | emb(t - r) (E) | o^i (obs_dim) | one-hot id (N, shared only) | c (C) ]

with sinusoidal time embeddings and a learned condition embedding whose last row is the null
token of classifier-free guidance. Parameters are shared across agents (the one-hot id tells them
apart) or separate per agent (weights ``(N, out, in)``, one batched matmul). Besides the primal
the network propagates the forward-mode tangent ``(v, dt = 1)`` of ``(z, t)`` layer by layer
(``ops.linear_jvp``): MeanFlow's target needs ``du/dt = v . d_z u + d_t u``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from .. import ops
from .._checks import FLOAT_DTYPES, check_tensor
from ..ops.linear_jvp import ACTIVATIONS
from .config import JVP_MODES, PolicyConfig


def _bounds(low, high, dim: int, n_agents: int, discrete: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous action bounds as ``(D,)`` or per agent ``(N, D)`` tensors."""
    if discrete:
        if low is not None or high is not None:
            raise ValueError("action_low/action_high: expected None for discrete actions")
        return torch.empty(0), torch.empty(0)
    low_t = -torch.ones(dim) if low is None else torch.as_tensor(low, dtype=torch.float32)
    high_t = torch.ones(dim) if high is None else torch.as_tensor(high, dtype=torch.float32)
    for name, b in (("action_low", low_t), ("action_high", high_t)):
        if tuple(b.shape) not in ((dim,), (n_agents, dim)) or not torch.isfinite(b).all():
            raise ValueError(f"{name}: expected {dim} finite values or {n_agents} x {dim} "
                             f"(per agent), found shape {tuple(b.shape)}: {b.tolist()}")
    if low_t.shape != high_t.shape:
        raise ValueError(f"action_low, action_high: expected the same shape, found "
                         f"{tuple(low_t.shape)} and {tuple(high_t.shape)}")
    if not (low_t < high_t).all():
        raise ValueError(f"action_low < action_high expected, found {low_t.tolist()} and "
                         f"{high_t.tolist()}")
    return low_t, high_t


class VelocityNetwork(nn.Module):
    """Parameters and forward math of ``u``; :class:`MeanFlowPolicy` adds losses and sampling.

    Args: the fields of :class:`PolicyConfig`, plus ``action_low``/``action_high``
    (``(D,)``, or ``(N, D)`` for agents with different bounds; continuous actions in
    ``[-1, 1]`` are rescaled to them), ``jvp`` (``fused``: the analytic layer-by-layer tangent;
    ``func``: ``torch.func.jvp``, the reference) and ``backend`` (op backend of the layers:
    ``auto``, ``torch``, ``triton``).
    """

    def __init__(self, cfg: PolicyConfig, action_low=None, action_high=None, *,
                 jvp: str = "fused", backend: str = "auto") -> None:
        super().__init__()
        for name in ("obs_dim", "action_dim", "n_agents", "cond_dim"):
            val = getattr(cfg, name)
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"{name}: expected a positive int, found {val!r}")
        if not isinstance(cfg.n_tokens, int) or cfg.n_tokens < 0:
            raise ValueError(f"n_tokens: expected an int >= 0 (0 = unconditional), found "
                             f"{cfg.n_tokens!r}")
        if cfg.discrete and cfg.action_dim < 2:
            raise ValueError(f"action_dim: expected >= 2 discrete actions, found "
                             f"{cfg.action_dim}")
        if cfg.time_dim < 2 or cfg.time_dim % 2:
            raise ValueError(f"time_dim: expected an even int >= 2, found {cfg.time_dim}")
        if cfg.activation not in ACTIVATIONS or cfg.activation == "identity":
            raise ValueError(f"activation: expected one of {ACTIVATIONS[:-1]}, "
                             f"found {cfg.activation!r}")
        if not cfg.hidden_dims or any(h < 1 for h in cfg.hidden_dims):
            raise ValueError(f"hidden_dims: expected positive sizes, found {cfg.hidden_dims}")
        if not cfg.max_freq >= 1.0:
            raise ValueError(f"max_freq: expected >= 1, found {cfg.max_freq}")
        if jvp not in JVP_MODES:
            raise ValueError(f"jvp: expected one of {JVP_MODES}, found {jvp!r}")
        if backend not in ("auto", *ops.REGISTRY["linear_jvp"]):
            raise ValueError(f"backend: expected one of {('auto', *ops.REGISTRY['linear_jvp'])}, "
                             f"found {backend!r}")
        self.arch = cfg
        self.obs_dim, self.action_dim, self.n_agents = cfg.obs_dim, cfg.action_dim, cfg.n_agents
        self.discrete, self.share_parameters = cfg.discrete, cfg.share_parameters
        self.activation, self.n_tokens, self.time_dim = cfg.activation, cfg.n_tokens, cfg.time_dim
        self.jvp, self.backend = jvp, backend

        half = cfg.time_dim // 2
        self.register_buffer("freqs", torch.logspace(0.0, math.log10(cfg.max_freq), half))
        low, high = _bounds(action_low, action_high, cfg.action_dim, cfg.n_agents, cfg.discrete)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.cond_embed = nn.Embedding(cfg.n_tokens + 1, cfg.cond_dim)
        nn.init.normal_(self.cond_embed.weight, std=1.0)

        # The first `tangent_dim` input columns (z and both time embeddings) carry the tangent.
        self.tangent_dim = cfg.action_dim + 2 * cfg.time_dim
        in_dim = (self.tangent_dim + cfg.obs_dim + cfg.cond_dim
                  + (cfg.n_agents if cfg.share_parameters else 0))
        sizes = [in_dim, *cfg.hidden_dims, cfg.action_dim]
        group = () if cfg.share_parameters else (cfg.n_agents,)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            w = torch.empty(*group, fan_out, fan_in).uniform_(-bound, bound)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.empty(*group, fan_out).uniform_(-bound, bound)))
        self.register_buffer("agent_ids", torch.eye(cfg.n_agents))
        # Observation standardisation (identity until set_obs_normalization): part of the saved
        # module, so that a policy dropped into another codebase takes raw observations.
        self.register_buffer("obs_mean", torch.zeros(cfg.obs_dim))
        self.register_buffer("obs_std", torch.ones(cfg.obs_dim))

    @torch.no_grad()
    def set_obs_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise observations as ``(obs - mean) / std`` inside the policy.

        Args: mean, std: (obs_dim,) (e.g. the dataset's per-feature statistics; std is floored
        at 1e-6 so constant features, such as zero padding, stay finite).
        """
        for name, x in (("mean", mean), ("std", std)):
            check_tensor(name, x, shape=(self.obs_dim,), dtypes=FLOAT_DTYPES)
            if not torch.isfinite(x).all():
                raise ValueError(f"{name}: expected finite observation statistics, found "
                                 f"NaN or inf")
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std.clamp_min(1e-6))

    # ------------------------------------------------------------------ tokens
    @property
    def null_token(self) -> int:
        """Token id of the unconditional (CFG null) input."""
        return self.n_tokens

    @property
    def exec_token(self) -> int:
        """Token used at execution: the most advantageous one; the null token for an
        unconditional policy (``n_tokens = 0``), the only one it was trained on."""
        return self.n_tokens - 1 if self.n_tokens else self.null_token

    # ------------------------------------------------------------------ input checks
    def _check_obs(self, obs: torch.Tensor) -> torch.Tensor:
        # inputs must match the parameters' dtype and device; the first weight is read from the
        # module dict, not as self.weights[0] (~3 us of ParameterList indexing per act call)
        w = self._modules["weights"]._parameters["0"]
        return check_tensor("obs", obs, shape=(None, self.n_agents, self.obs_dim),
                            dtypes=(w.dtype,), device=w.device)

    def _check_times(self, name: str, x: torch.Tensor, batch: int) -> torch.Tensor:
        check_tensor(name, x, dtypes=FLOAT_DTYPES, device=self.weights[0].device)
        if tuple(x.shape) == (batch,):
            return x.unsqueeze(1).expand(batch, self.n_agents)
        if tuple(x.shape) != (batch, self.n_agents):
            raise ValueError(f"{name}: expected shape ({batch},) or ({batch}, {self.n_agents}), "
                             f"found {tuple(x.shape)}")
        return x

    def _check_cond(self, cond: torch.Tensor, batch: int) -> torch.Tensor:
        check_tensor("cond", cond, dtypes=(torch.int64, torch.int32), device=self.weights[0].device)
        if tuple(cond.shape) not in ((batch,), (batch, self.n_agents)):
            raise ValueError(f"cond: expected shape ({batch},) or ({batch}, {self.n_agents}), "
                             f"found {tuple(cond.shape)}")
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) > self.null_token):
            raise ValueError(f"cond: expected token ids in [0, {self.null_token}] "
                             f"({self.null_token} = null), found values in "
                             f"[{int(cond.min())}, {int(cond.max())}]")
        return cond

    def _check_velocity_inputs(self, z, r, t, obs, cond):
        obs = self._check_obs(obs)
        batch = obs.shape[0]
        check_tensor("z", z, shape=(batch, self.n_agents, self.action_dim),
                     dtypes=(obs.dtype,), device=obs.device)
        return (z, self._check_times("r", r, batch), self._check_times("t", t, batch), obs,
                self._check_cond(cond, batch))

    # ------------------------------------------------------------------ forward math
    def _op_backend(self) -> str | None:
        return None if self.backend == "auto" else self.backend

    def _layer_fn(self, device: torch.device, backend: str | None = None):
        """The unchecked ``linear_jvp`` of the resolved backend (resolved once per forward)."""
        return ops.unchecked("linear_jvp", device, backend or self._op_backend())

    def _time_embed(self, x: torch.Tensor, tangent: bool
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """emb(x) = [sin(f x), cos(f x)] and, if asked, d emb / dx = [f cos(f x), -f sin(f x)]."""
        arg = x.unsqueeze(-1) * self.freqs.to(x.dtype)
        sin, cos = torch.sin(arg), torch.cos(arg)
        emb = torch.cat([sin, cos], dim=-1)
        if not tangent:
            return emb, None
        f = self.freqs.to(x.dtype)
        return emb, torch.cat([f * cos, -f * sin], dim=-1)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, F] -> the matmul layout: (B*N, F) shared, (N, B, F) per agent."""
        return x.reshape(-1, x.shape[-1]) if self.share_parameters else x.transpose(0, 1)

    def _unlayout(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        if self.share_parameters:
            return y.reshape(batch, self.n_agents, y.shape[-1])
        return y.transpose(0, 1)

    def _inputs(self, z, r, t, obs, cond, tangent: bool = False):
        """The first layer's input [B, N, in] = [z | emb(t) | emb(t - r) | normalised obs |
        one-hot id (shared weights) | cond embedding], and, if ``tangent``, d emb / dt of both
        time embeddings (else None)."""
        batch = obs.shape[0]
        emb_t, demb_t = self._time_embed(t, tangent)
        emb_h, demb_h = self._time_embed(t - r, tangent)
        c = self.cond_embed(cond.long())
        if c.dim() == 2:
            c = c.unsqueeze(1).expand(batch, self.n_agents, c.shape[-1])
        obs = (obs - self.obs_mean.to(obs.dtype)) / self.obs_std.to(obs.dtype)
        parts = [z, emb_t, emb_h, obs]
        if self.share_parameters:
            parts.append(self.agent_ids.to(obs.dtype).expand(batch, -1, -1))
        parts.append(c.to(obs.dtype))
        return torch.cat(parts, dim=-1), demb_t, demb_h

    def _layers(self, h: torch.Tensor, dh: torch.Tensor | None, layer, start: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layers ``start..`` on inputs already in the matmul layout (see ``_layout``)."""
        weights = list(self.weights._parameters.values())  # cheaper than ParameterList[i]
        biases = list(self.biases._parameters.values())
        last = len(weights) - 1
        for i in range(start, last + 1):
            act = "identity" if i == last else self.activation
            h, dh = layer(h, weights[i], biases[i], dh, act)
        return h, dh

    def _mlp(self, x: torch.Tensor, dx: torch.Tensor | None, layer
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layers on [B, N, in] (and the tangent's first columns [B, N, k]) -> [B, N, D]."""
        batch = x.shape[0]
        h, dh = self._layers(self._layout(x), None if dx is None else self._layout(dx), layer)
        return self._unlayout(h, batch), (None if dh is None else self._unlayout(dh, batch))

    def _run(self, z, r, t, obs, cond, v=None, backend: str | None = None):
        """The MLP on [B, N, *] inputs: u [B, N, D] and, when a tangent v [m, N, D] is given
        for the first m <= B rows, their du/dt [m, N, D] (tangent (v, 1) on (z, t)).

        The tangent rows and the others go through the layers as two batches: MeanFlow training
        only needs du/dt where r < t (its target multiplies it by t - r), which the time
        sampler puts first, so the tangent matmuls cover 25% of the rows, not all.
        """
        batch = obs.shape[0]
        x, demb_t, demb_h = self._inputs(z, r, t, obs, cond, v is not None)
        layer = self._layer_fn(obs.device, backend)
        if v is None:
            return self._mlp(x, None, layer)[0], None
        m = v.shape[0]
        u, dudt = self._mlp(x[:m], torch.cat([v, demb_t[:m], demb_h[:m]], dim=-1), layer)
        if m < batch:
            u = torch.cat([u, self._mlp(x[m:], None, layer)[0]])
        return u, dudt

    def _func_jvp(self, z, r, t, obs, cond, v) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference: ``torch.func.jvp`` of the network in (z, t) with tangents (v, 1)."""
        def fn(z_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
            return self._run(z_, r, t_, obs, cond, backend="torch")[0]

        u, dudt = torch.func.jvp(fn, (z, t), (v, torch.ones_like(t)))
        return u, dudt.detach()

    # ------------------------------------------------------------------ public
    def average_velocity(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                         obs: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """u(z, r, t | obs, id, cond).

        Args:
            z: [B, N, D] noisy actions; r, t: [B, N] or [B] times (r <= t);
            obs: [B, N, obs_dim]; cond: [B] or [B, N] token ids (``null_token`` = unconditional).

        Returns:
            u: [B, N, D].
        """
        z, r, t, obs, cond = self._check_velocity_inputs(z, r, t, obs, cond)
        return self._run(z, r, t, obs, cond)[0]

    def average_velocity_jvp(self, z: torch.Tensor, r: torch.Tensor, t: torch.Tensor,
                             obs: torch.Tensor, cond: torch.Tensor, v: torch.Tensor,
                             jvp: str | None = None, backend: str | None = None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """u and its total derivative du/dt = v . d_z u + d_t u (tangents (v, 1) on (z, t)).

        ``jvp="fused"`` propagates primal and tangent layer by layer (``ops.linear_jvp``); the
        tangent never enters autograd, ``u`` does. ``jvp="func"`` uses ``torch.func.jvp`` of
        :meth:`average_velocity` instead (the reference). Default: the policy's ``jvp``.
        ``backend``: op backend of the fused layers for this call (``auto``, ``torch``,
        ``triton``); ``backend="func"`` is the earlier spelling of ``jvp="func"``.

        Args: as :meth:`average_velocity`, plus ``v``: [B, N, D] tangent of ``z``.
        Returns: ``u`` [B, N, D] (with autograd) and ``dudt`` [B, N, D] (detached).
        """
        z, r, t, obs, cond = self._check_velocity_inputs(z, r, t, obs, cond)
        check_tensor("v", v, shape=tuple(z.shape), dtypes=(z.dtype,), device=z.device)
        if backend == "func":
            jvp, backend = "func", None
        jvp = jvp or self.jvp
        if jvp not in JVP_MODES:
            raise ValueError(f"jvp: expected one of {JVP_MODES}, found {jvp!r}")
        if backend not in (None, "auto", *ops.REGISTRY["linear_jvp"]):
            raise ValueError(f"backend: expected one of {('auto', *ops.REGISTRY['linear_jvp'])}"
                             f" or 'func', found {backend!r}")
        if jvp == "func":
            return self._func_jvp(z, r, t, obs, cond, v)
        return self._run(z, r, t, obs, cond, v, None if backend == "auto" else backend)

    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Dataset actions -> generated vector x: continuous as is, discrete as 2 one-hot - 1."""
        if self.discrete:
            oh = torch.nn.functional.one_hot(actions.long(), self.action_dim)
            return oh.to(self.weights[0].dtype) * 2 - 1
        return actions
