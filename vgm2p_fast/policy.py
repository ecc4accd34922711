"""``MeanFlowPolicy``: the decentralised one-step MeanFlow actor of VGM²P (DESIGN 1.2 and 4).

Per agent ``i`` an average-velocity network ``u(z, r, t | o^i, id_i, c)`` is an MLP over

    [ z (D) | emb(t) (E) | emb(t - r) (E) | o^i (obs_dim) | one-hot id (N, shared only) | c (C) ]

with sinusoidal time embeddings and a learned condition embedding whose last row is the null
token of classifier-free guidance. Parameters are shared across agents (the one-hot id tells them
apart) or separate per agent (weights ``(N, out, in)``, evaluated with one batched matmul).

Training (``meanflow_loss``): ``z_t = (1 - t) x + t e``, ``v = e - x``, the CFG-guided velocity
``v_g = omega v + kappa u(z_t, t, t | c) + (1 - omega - kappa) u(z_t, t, t | null)`` and the JVP
target ``u_tgt = v_g - clip(t - r, 0, 1) (v_g . d_z u + d_t u)``. Execution: ``x = e - u(e, 0, 1 |
o, id, c*)``: one network evaluation per agent.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import _backend
from ._checks import FLOAT_DTYPES, check_avail, check_tensor
from .ops.cfg_sample import IMPLEMENTED as _CFG_BACKENDS
from .ops.cfg_sample import cfg_sample_ref
from .ops.linear_jvp import ACTIVATIONS, activation_fn, linear_jvp_ref
from .ops.linear_jvp import IMPLEMENTED as _LAYER_BACKENDS
from .ops.meanflow_target_loss import IMPLEMENTED as _LOSS_BACKENDS
from .ops.meanflow_target_loss import meanflow_target_loss_ref

JVP_BACKENDS = ("auto", "torch", "triton", "func")
_SAVE_FORMAT = "vgm2p_fast.MeanFlowPolicy/1"


def _safetensors():
    """safetensors.torch, or ImportError with the install command (a .safetensors path)."""
    try:
        return importlib.import_module("safetensors.torch")
    except ImportError as exc:
        raise ImportError(f"a .safetensors policy file needs safetensors ({exc}); "
                          "`pip install safetensors`, or use a .pt path") from exc


class MeanFlowPolicy(nn.Module):
    """Average-velocity MeanFlow policy for ``n_agents`` agents with one-step sampling.

    Args:
        obs_dim: per-agent observation size (pad agents to the largest one).
        action_dim: continuous action size ``D``, or the number of discrete actions ``K``.
        n_agents: ``N``.
        discrete: discrete actions (generated as a {-1, +1}-scaled one-hot, decoded by masked
            argmax) instead of continuous ones in ``[-1, 1]^D``.
        hidden_dims: MLP hidden sizes (default 4 x 256).
        activation: ``silu`` (default), ``relu``, ``gelu_tanh``.
        share_parameters: one network for all agents with a one-hot agent id (default), or
            separate per-agent weights.
        n_tokens: number of condition tokens (2: binary advantageous or not; K: quantile bins;
            0: an unconditional policy, plain MeanFlow behaviour cloning, trained and executed
            with the null token only). Token ``n_tokens - 1`` is the advantageous one used at
            execution; ``n_tokens`` is null.
        time_dim: size of each sinusoidal time embedding (even).
        cond_dim: size of the condition embedding.
        max_freq: highest angular frequency of the time embedding; frequencies are geometric in
            ``[1, max_freq]``. d emb / dt scales with it, and so does the JVP term of the target:
            on the bimodal toy of tests/test_policy.py, 100 made training oscillate (the share of
            samples near a mode swung 0.15 -> 0.01 -> 0.46 over 1500 steps at 10), while 3
            converged steadily (0.34 -> 0.48 -> 0.67).
        action_low, action_high: (D,) environment bounds the continuous actions are rescaled to.
        omega, kappa: CFG-in-the-target coefficients (effective guidance omega / (1 - kappa)).
        cond_dropout: probability that a training row's condition is replaced by null.
        ratio_r_neq_t: fraction of training rows with r < t (the rest use r = t).
        time_mu, time_sigma: logit-normal parameters of the (t, r) sampler.
        norm_p, norm_eps: adaptive loss weight ``1 / (L + eps)^p``. Default p = 0 (plain squared
            error), not MeanFlow's p = 1: with p > 0 the minimiser is no longer the conditional
            mean of the velocity target but leans to its mode, so the flow drops minority modes
            (toy, 0.7/0.3 mixture: P(majority) = 1.0 with p = 1, 0.85 with p = 0.5, 0.69 with
            p = 0), and multi-modal behaviour is why a flow policy is used at all.
        backend: backend of the fused ops (``auto``, ``torch``, ``triton``), or ``func`` to
            compute the JVP with ``torch.func.jvp`` (the reference, as public MeanFlow ports do).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        n_agents: int,
        discrete: bool = False,
        *,
        hidden_dims: Sequence[int] = (256, 256, 256, 256),
        activation: str = "silu",
        share_parameters: bool = True,
        n_tokens: int = 2,
        time_dim: int = 32,
        cond_dim: int = 32,
        max_freq: float = 3.0,
        action_low: Sequence[float] | torch.Tensor | None = None,
        action_high: Sequence[float] | torch.Tensor | None = None,
        omega: float = 1.0,
        kappa: float = 0.5,
        cond_dropout: float = 0.1,
        ratio_r_neq_t: float = 0.25,
        time_mu: float = -0.4,
        time_sigma: float = 1.0,
        norm_p: float = 0.0,
        norm_eps: float = 0.01,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, val in (("obs_dim", obs_dim), ("action_dim", action_dim),
                          ("n_agents", n_agents), ("cond_dim", cond_dim)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name}: expected a positive int, found {val!r}")
        if not isinstance(n_tokens, int) or n_tokens < 0:
            raise ValueError(f"n_tokens: expected an int >= 0 (0 = unconditional), found "
                             f"{n_tokens!r}")
        if discrete and action_dim < 2:
            raise ValueError(f"action_dim: expected >= 2 discrete actions, found {action_dim}")
        if time_dim < 2 or time_dim % 2:
            raise ValueError(f"time_dim: expected an even int >= 2, found {time_dim}")
        if activation not in ACTIVATIONS or activation == "identity":
            raise ValueError(f"activation: expected one of {ACTIVATIONS[:-1]}, "
                             f"found {activation!r}")
        if not hidden_dims or any(int(h) < 1 for h in hidden_dims):
            raise ValueError(f"hidden_dims: expected positive sizes, found {tuple(hidden_dims)}")
        if not 0.0 <= cond_dropout < 1.0 or not 0.0 <= ratio_r_neq_t <= 1.0:
            raise ValueError(f"cond_dropout in [0, 1) and ratio_r_neq_t in [0, 1] expected, "
                             f"found {cond_dropout}, {ratio_r_neq_t}")
        if backend not in JVP_BACKENDS:
            raise ValueError(f"backend: expected one of {JVP_BACKENDS}, found {backend!r}")
        self.obs_dim, self.action_dim, self.n_agents = obs_dim, action_dim, n_agents
        self.discrete, self.share_parameters = discrete, share_parameters
        self.activation, self.n_tokens, self.time_dim = activation, n_tokens, time_dim
        self.omega, self.kappa, self.cond_dropout = float(omega), float(kappa), float(cond_dropout)
        self.ratio_r_neq_t, self.time_mu, self.time_sigma = ratio_r_neq_t, time_mu, time_sigma
        self.norm_p, self.norm_eps, self.backend = norm_p, norm_eps, backend
        self.metadata: dict = {}
        # Everything save()/load() needs to rebuild the module (weights go in the state dict).
        self.config = {
            "obs_dim": obs_dim, "action_dim": action_dim, "n_agents": n_agents,
            "discrete": discrete, "hidden_dims": [int(h) for h in hidden_dims],
            "activation": activation, "share_parameters": share_parameters,
            "n_tokens": n_tokens, "time_dim": time_dim, "cond_dim": cond_dim,
            "max_freq": max_freq, "omega": omega, "kappa": kappa, "cond_dropout": cond_dropout,
            "ratio_r_neq_t": ratio_r_neq_t, "time_mu": time_mu, "time_sigma": time_sigma,
            "norm_p": norm_p, "norm_eps": norm_eps, "backend": backend,
        }

        half = time_dim // 2
        self.register_buffer("freqs", torch.logspace(0.0, math.log10(max_freq), half))
        low, high = self._bounds(action_low, action_high, action_dim, discrete)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.cond_embed = nn.Embedding(n_tokens + 1, cond_dim)
        nn.init.normal_(self.cond_embed.weight, std=1.0)

        # The first `tangent_dim` input columns (z and both time embeddings) carry the tangent.
        self.tangent_dim = action_dim + 2 * time_dim
        in_dim = self.tangent_dim + obs_dim + cond_dim + (n_agents if share_parameters else 0)
        sizes = [in_dim, *[int(h) for h in hidden_dims], action_dim]
        group = () if share_parameters else (n_agents,)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(sizes):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            w = torch.empty(*group, fan_out, fan_in).uniform_(-bound, bound)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.empty(*group, fan_out).uniform_(-bound, bound)))
        self.register_buffer("agent_ids", torch.eye(n_agents))
        # Observation standardisation (identity until set_obs_normalization): part of the saved
        # module, so that a policy dropped into another codebase takes raw observations.
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    @torch.no_grad()
    def set_obs_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise observations as ``(obs - mean) / std`` inside the policy.

        Args: mean, std: (obs_dim,) (e.g. the dataset's per-feature statistics; std is floored
        at 1e-6 so constant features, such as zero padding, stay finite).
        """
        for name, x in (("mean", mean), ("std", std)):
            check_tensor(name, x, shape=(self.obs_dim,), dtypes=FLOAT_DTYPES)
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std.clamp_min(1e-6))

    @staticmethod
    def _bounds(low, high, dim, discrete) -> tuple[torch.Tensor, torch.Tensor]:
        if discrete:
            if low is not None or high is not None:
                raise ValueError("action_low/action_high: expected None for discrete actions")
            return torch.empty(0), torch.empty(0)
        low_t = -torch.ones(dim) if low is None else torch.as_tensor(low, dtype=torch.float32)
        high_t = torch.ones(dim) if high is None else torch.as_tensor(high, dtype=torch.float32)
        for name, b in (("action_low", low_t), ("action_high", high_t)):
            if b.shape != (dim,) or not torch.isfinite(b).all():
                raise ValueError(f"{name}: expected {dim} finite values, found {b.tolist()}")
        if not (low_t < high_t).all():
            raise ValueError(f"action_low < action_high expected, found {low_t.tolist()} and "
                             f"{high_t.tolist()}")
        return low_t, high_t

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write config + weights (+ JSON-able ``metadata``, e.g. the env spec) to ``path``,
        atomically (temp file + rename). Loadable by :meth:`load` without any training code.

        A path ending in ``.safetensors`` is written with safetensors (weights as tensors,
        config and metadata as JSON in its header; needs ``pip install safetensors``); any
        other path with ``torch.save`` (loaded back with ``weights_only=True``)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".safetensors":
            _safetensors().save_file(
                {k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp),
                metadata={"format": _SAVE_FORMAT, "config": json.dumps(self.config),
                          "metadata": json.dumps(metadata or {})})
        else:
            torch.save({"format": _SAVE_FORMAT, "config": self.config,
                        "state_dict": self.state_dict(), "metadata": metadata or {}}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device | None = None
             ) -> MeanFlowPolicy:
        """Rebuild a policy written by :meth:`save` (either format, told apart by the file's
        first bytes: torch.save writes a zip archive); ``policy.metadata`` holds its metadata."""
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:
            blob = torch.load(path, map_location=map_location, weights_only=True)
        else:
            st = _safetensors()
            try:
                with st.safe_open(str(path), framework="pt") as f:
                    header = f.metadata() or {}
                state = st.load_file(str(path), device=str(map_location or "cpu"))
                blob = {"format": header.get("format"), "state_dict": state,
                        "config": json.loads(header.get("config", "{}")),
                        "metadata": json.loads(header.get("metadata", "{}"))}
            except Exception as exc:  # safetensors raises its own SafetensorError
                raise ValueError(f"{path}: expected a file written by MeanFlowPolicy.save, "
                                 f"found neither a torch.save archive nor safetensors "
                                 f"({exc})") from exc
        if not isinstance(blob, dict) or blob.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{path}: expected a file written by MeanFlowPolicy.save "
                             f"(format {_SAVE_FORMAT!r}), found something else")
        state = blob["state_dict"]
        policy = cls(**blob["config"])
        policy.load_state_dict(state)
        policy.metadata = blob["metadata"]
        return policy.to(state["freqs"].device)

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

    # ------------------------------------------------------------------ network
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

    def _run(self, z, r, t, obs, cond, v=None, backend: str | None = None):
        """The MLP on [B, N, *] inputs: u [B, N, D] and, when a tangent v [m, N, D] is given
        for the first m <= B rows, their du/dt [m, N, D] (tangent (v, 1) on (z, t)).

        The tangent rows and the others go through the layers as two batches: MeanFlow training
        only needs du/dt where r < t (its target multiplies it by t - r), which
        ``sample_times`` puts first, so the tangent matmuls cover 25% of the rows, not all.
        """
        batch = obs.shape[0]
        x, demb_t, demb_h = self._inputs(z, r, t, obs, cond, v is not None)
        layer = _backend.implementation("linear_jvp", _LAYER_BACKENDS, obs.device,
                                        backend or self._op_backend(), linear_jvp_ref)
        if v is None:
            return self._mlp(x, None, layer)[0], None
        m = v.shape[0]
        u, dudt = self._mlp(x[:m], torch.cat([v, demb_t[:m], demb_h[:m]], dim=-1), layer)
        if m < batch:
            u = torch.cat([u, self._mlp(x[m:], None, layer)[0]])
        return u, dudt

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

    def _mlp(self, x: torch.Tensor, dx: torch.Tensor | None, layer
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Layers on [B, N, in] (and the tangent's first columns [B, N, k]) -> [B, N, D]."""
        batch = x.shape[0]
        h, dh = self._layers(self._layout(x), None if dx is None else self._layout(dx), layer)
        return self._unlayout(h, batch), (None if dh is None else self._unlayout(dh, batch))

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

    def _unlayout(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        if self.share_parameters:
            return y.reshape(batch, self.n_agents, y.shape[-1])
        return y.transpose(0, 1)

    def _op_backend(self) -> str | None:
        return None if self.backend in ("auto", "func") else self.backend

    # ------------------------------------------------------------------ public API
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
                             backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """u and its total derivative du/dt = v . d_z u + d_t u (tangents (v, 1) on (z, t)).

        The fast path propagates primal and tangent layer by layer (``ops.linear_jvp``); the
        tangent never enters autograd, ``u`` does. ``backend="func"`` uses ``torch.func.jvp``
        of :meth:`average_velocity` instead (the reference).

        Args: as :meth:`average_velocity`, plus ``v``: [B, N, D] tangent of ``z``.
        Returns: ``u`` [B, N, D] (with autograd) and ``dudt`` [B, N, D] (detached).
        """
        z, r, t, obs, cond = self._check_velocity_inputs(z, r, t, obs, cond)
        check_tensor("v", v, shape=tuple(z.shape), dtypes=(z.dtype,), device=z.device)
        backend = backend or self.backend
        if backend not in JVP_BACKENDS:
            raise ValueError(f"backend: expected one of {JVP_BACKENDS}, found {backend!r}")
        if backend == "func":
            return self._func_jvp(z, r, t, obs, cond, v)
        return self._run(z, r, t, obs, cond, v, None if backend == "auto" else backend)

    def _func_jvp(self, z, r, t, obs, cond, v) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference: ``torch.func.jvp`` of the network in (z, t) with tangents (v, 1)."""
        def fn(z_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
            return self._run(z_, r, t_, obs, cond, backend="torch")[0]

        u, dudt = torch.func.jvp(fn, (z, t), (v, torch.ones_like(t)))
        return u, dudt.detach()

    def sample_times(self, shape: Sequence[int], *, device: torch.device | None = None,
                     generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, t) of ``shape`` (rows first), r <= t, both logit-normal(time_mu, time_sigma).

        The first ``round(ratio_r_neq_t * shape[0])`` rows have r < t, the others r = t: rows
        are i.i.d. batch samples, so which rows get r < t does not matter, and putting them
        first lets the JVP run on that prefix only (see ``_run``).
        """
        device = device or self.freqs.device
        normal = torch.randn((2, *shape), device=device, generator=generator)
        s = torch.sigmoid(normal * self.time_sigma + self.time_mu)
        t, r = s.max(0).values, s.min(0).values
        m = self.n_tangent_rows(shape[0])
        return torch.cat([r[:m], t[m:]]), t

    def n_tangent_rows(self, batch: int) -> int:
        """How many leading rows of a training batch of ``batch`` rows have r < t."""
        return round(self.ratio_r_neq_t * batch)

    def encode_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Dataset actions -> generated vector x: continuous as is, discrete as 2 one-hot - 1."""
        if self.discrete:
            return F.one_hot(actions.long(), self.action_dim).to(self.weights[0].dtype) * 2 - 1
        return actions

    def _check_batch(self, obs: torch.Tensor, actions: torch.Tensor, cond: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate a training batch; returns obs, the encoded actions x and the tokens."""
        obs = self._check_obs(obs)
        batch, n = obs.shape[:2]
        if self.discrete:
            check_tensor("actions", actions, shape=(batch, n), dtypes=(torch.int64, torch.int32),
                         device=obs.device)
            lo, hi = (int(actions.min()), int(actions.max())) if actions.numel() else (0, 0)
            if lo < 0 or hi >= self.action_dim:
                raise ValueError(f"actions: expected ids in [0, {self.action_dim - 1}], found "
                                 f"[{lo}, {hi}]")
        else:
            check_tensor("actions", actions, shape=(batch, n, self.action_dim),
                         dtypes=(obs.dtype,), device=obs.device)
        if cond is None:
            cond = torch.full((batch,), self.null_token, dtype=torch.long, device=obs.device)
            return obs, self.encode_actions(actions).to(obs.dtype), cond
        if not self.n_tokens:
            raise ValueError("cond: expected None for an unconditional policy (n_tokens=0), "
                             "found condition tokens")
        cond = self._check_cond(cond, batch)
        if int(cond.max()) >= self.null_token:
            raise ValueError(f"cond: expected dataset tokens in [0, {self.n_tokens - 1}], found "
                             f"the null token {self.null_token}")
        return obs, self.encode_actions(actions).to(obs.dtype), cond

    def meanflow_loss(self, obs: torch.Tensor, actions: torch.Tensor,
                      cond: torch.Tensor | None, *, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CFG-guided MeanFlow loss (DESIGN 1.2), averaged over rows and agents.

        Args:
            obs: [B, N, obs_dim]; actions: [B, N, D] in [-1, 1] (continuous) or [B, N] int
            (discrete); cond: [B] or [B, N] condition tokens of the transitions, or None for
            plain (unconditional, unguided) MeanFlow behaviour cloning.
            generator: optional RNG for noise, times and condition dropout.

        Returns:
            The scalar loss (with autograd) and an info dict of detached scalar tensors (no
            device sync): ``loss``, ``mse`` (unweighted ``sum_d (u - u_tgt)^2``, mean over rows)
            and ``dropped`` (fraction of rows trained with the null token).
        """
        unconditional = cond is None
        obs, x, cond = self._check_batch(obs, actions, cond)
        batch, n = obs.shape[:2]
        dev, dtype = obs.device, obs.dtype
        e = torch.randn(x.shape, device=dev, dtype=dtype, generator=generator)
        r, t = self.sample_times((batch, n), device=dev, generator=generator)
        r, t = r.to(dtype), t.to(dtype)
        z = torch.lerp(x, e, t.unsqueeze(-1))  # (1 - t) x + t e
        v = e - x
        if unconditional:
            dropped = torch.ones(batch, dtype=torch.bool, device=dev)
            v_g, cond_in = v, cond
        else:
            dropped = torch.rand(batch, device=dev, generator=generator) < self.cond_dropout
            drop_b = dropped.view(-1, *([1] * (cond.dim() - 1)))
            cond_in = torch.where(drop_b, torch.full_like(cond, self.null_token), cond)
            v_g = self._guided_velocity(z, t, obs, cond, v, dropped)
        if self.backend == "func":
            u, dudt = self._func_jvp(z, r, t, obs, cond_in, v_g)
        else:  # du/dt only where r < t (the prefix); (t - r) du/dt = 0 on the other rows
            m = self.n_tangent_rows(batch)
            u, dudt = self._run(z, r, t, obs, cond_in, v_g[:m])
            dudt = torch.cat([dudt, dudt.new_zeros(batch - m, *dudt.shape[1:])])
        loss_fn = _backend.implementation("meanflow_target_loss", _LOSS_BACKENDS, dev,
                                          self._op_backend(), meanflow_target_loss_ref)
        rows, raw = loss_fn(u, dudt, v_g, t, r, self.norm_p, self.norm_eps)
        loss = rows.mean()
        info = {"loss": loss.detach(), "mse": raw.mean(), "dropped": dropped.float().mean()}
        return loss, info

    def flow_matching_loss(self, obs: torch.Tensor, actions: torch.Tensor,
                           cond: torch.Tensor | None = None, *,
                           generator: torch.Generator | None = None
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Plain (conditional) flow-matching behaviour cloning on the same network: the
        baseline and speed floor of :meth:`meanflow_loss`.

        ``L = mean ||u(z_t, t, t | c) - (e - x)||^2`` with t ~ logit-normal, no JVP, no guidance;
        ``cond`` None trains unconditionally (null token). Shapes as :meth:`meanflow_loss`.
        """
        obs, x, cond = self._check_batch(obs, actions, cond)
        batch, n = obs.shape[:2]
        e = torch.randn(x.shape, device=obs.device, dtype=obs.dtype, generator=generator)
        t = self.sample_times((batch, n), device=obs.device, generator=generator)[1].to(obs.dtype)
        u = self._run(torch.lerp(x, e, t.unsqueeze(-1)), t, t, obs, cond)[0]
        loss = (u - (e - x)).square().sum(-1).mean()
        return loss, {"loss": loss.detach(), "mse": loss.detach()}

    @torch.no_grad()
    def _guided_velocity(self, z, t, obs, cond, v, dropped) -> torch.Tensor:
        """v_g = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null);
        rows whose condition was dropped keep v_g = v. Both network terms in one stacked pass."""
        w_null = 1.0 - self.omega - self.kappa
        terms = [(self.kappa, cond), (w_null, torch.full_like(cond, self.null_token))]
        terms = [(k, c) for k, c in terms if k != 0.0]
        if not terms:
            return v
        m = len(terms)
        rep = lambda a: a.repeat(m, *([1] * (a.dim() - 1)))  # noqa: E731
        u = self._run(rep(z), rep(t), rep(t), rep(obs), torch.cat([c for _, c in terms]))[0]
        v_g = self.omega * v
        for (k, _), u_k in zip(terms, u.chunk(m)):
            v_g.add_(u_k, alpha=k)
        mask = dropped.view(-1, *([1] * (v.dim() - 1)))
        return torch.where(mask, v, v_g)

    # ------------------------------------------------------------------ execution fast path
    _EXEC_CACHE_SIZE = 512  # (t, r) pairs kept: a 200-step sampler uses 200

    def _exec_sources(self) -> tuple[torch.Tensor, ...]:
        """Every tensor the folded first layer is computed from. Read straight from the module
        dicts: ``self.weights[0]`` costs ~3 us of Python (ParameterList indexing), and this runs
        on every ``act``, whose whole budget at one env is ~70 us."""
        mods, bufs = self._modules, self._buffers
        return (mods["weights"]._parameters["0"], mods["biases"]._parameters["0"],
                mods["cond_embed"]._parameters["weight"], bufs["obs_mean"], bufs["obs_std"],
                bufs["freqs"], bufs["agent_ids"])

    def _exec_fold(self, t_val: float, r_val: float
                   ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The first layer at constant times (t, r): ``(W_in, table)``; None for parameters
        without version counters (inference tensors), which then take the general path.

        When t and r are the same for every row (execution: t = 1, r = 0), every input column
        except ``z`` and ``obs`` is a constant per (token, agent): emb(t), emb(t - r), the one-hot
        id and the condition embedding. So with ``W = [W_z | W_t | W_h | W_o | W_id | W_c]``,

            pre = [z | obs] W_in^T + table[c, i],   W_in = [W_z | W_o / std],
            table[c, i] = b + W_t emb(t) + W_h emb(t - r) - W_o (mean / std) + W_id[:, i]
                          + W_c cond_embed[c]                          (n_tokens + 1, N, H)

        and the first layer reads D + obs_dim columns instead of D + 2 E + obs_dim (+ N) + C
        (30 of 132 with the benchmarks' sizes), with no embedding, concatenation or observation
        normalisation per call. Same math as ``_run``; float round-off differs (the sums are
        split). Per-agent weights fold the same way, with a leading N on ``W_in``.

        Cached per (t, r), keyed on each source tensor's storage pointer and version counter:
        an optimiser step, ``load_state_dict``, ``.to()``, an EMA ``lerp_`` or any in-place edit
        bumps one, and the next call refolds (``tests/test_peers.py`` checks each). Writes
        through ``param.data`` bypass version counters; call ``self._exec_cache.clear()`` then.
        """
        src = self._exec_sources()
        try:
            key = tuple((x.data_ptr(), x._version) for x in src)
        except RuntimeError:  # inference tensors have no version counter: nothing to key on
            return None
        cache = self.__dict__.setdefault("_exec_cache", {})
        hit = cache.get((t_val, r_val))
        if hit is not None and hit[0] == key:
            return hit[1]
        w, b = src[:2]
        dtype, dev = w.dtype, w.device
        d, e, o = self.action_dim, self.time_dim, self.obs_dim
        t = torch.tensor(t_val, dtype=dtype, device=dev)
        r = torch.tensor(r_val, dtype=dtype, device=dev)  # t - r in the dtype, as _run does
        emb = torch.cat([self._time_embed(t, False)[0], self._time_embed(t - r, False)[0]])
        w_time, w_obs = w[..., d : d + 2 * e], w[..., d + 2 * e : d + 2 * e + o]
        std = self.obs_std.to(dtype)
        shift = emb.unsqueeze(-1)
        const = b + (w_time @ shift).squeeze(-1) - (w_obs @ (self.obs_mean.to(dtype) / std
                                                             ).unsqueeze(-1)).squeeze(-1)
        w_cond = w[..., w.shape[-1] - self.cond_embed.weight.shape[1] :]
        tokens = torch.matmul(self.cond_embed.weight.to(dtype), w_cond.transpose(-1, -2))
        if self.share_parameters:  # const (H,), tokens (K+1, H), ids (N, H)
            ids = w[:, d + 2 * e + o : d + 2 * e + o + self.n_agents].t()
            table = const + ids + tokens.unsqueeze(1)
        else:  # const (N, H), tokens (N, K+1, H)
            table = const + tokens.transpose(0, 1)
        w_in = torch.cat([w[..., :d], w_obs / std], dim=-1)
        if len(cache) >= self._EXEC_CACHE_SIZE:
            cache.clear()
        cache[(t_val, r_val)] = (key, (w_in, table))
        return w_in, table

    def _exec_velocity(self, z: torch.Tensor, obs: torch.Tensor, cond: torch.Tensor | int,
                       guided: bool, t_val: float, r_val: float, layer) -> torch.Tensor | None:
        """u(z, r_val, t_val | obs, id, cond) [B', N, D] for constant times, through the folded
        first layer (``_exec_fold``), or None when it cannot be folded (parameters without
        version counters, e.g. created under inference mode).

        z [B', N, D], obs [B', N, obs_dim] raw; cond: token ids [B'] or [B', N], or one int
        token for every row (with ``guided``, rows are [token rows; null rows], B' = 2 B).
        ``layer`` is the resolved ``linear_jvp`` backend of the other layers.
        """
        fold = self._exec_fold(t_val, r_val)
        if fold is None:
            return None
        w_in, table = fold
        x = torch.cat([z, obs], dim=-1)
        if isinstance(cond, int) and not guided and self.share_parameters and z.shape[0] == 1:
            # one env (decentralised execution): the bias rows are exactly table[cond], so the
            # add fuses into the matmul (one op fewer, ~1.5 us of ~90)
            pre = torch.addmm(table[cond], x[0], w_in.t())
            h = self._layers(activation_fn(pre, self.activation), None, layer, start=1)[0]
            return self._unlayout(h, 1)
        if self.share_parameters:
            pre = torch.matmul(x, w_in.t())  # [B', N, H]
        else:
            pre = torch.bmm(x.transpose(0, 1), w_in.transpose(1, 2)).transpose(0, 1)
        if isinstance(cond, int):  # a broadcast add of table rows: no per-row gather
            if guided:
                idx = torch.tensor([cond, self.null_token], device=z.device)
                pre.view(2, -1, *pre.shape[1:]).add_(table[idx].unsqueeze(1))
            else:
                pre.add_(table[cond])
        elif cond.dim() == 1:
            pre.add_(table[cond])
        else:
            pre.add_(table[cond, torch.arange(self.n_agents, device=cond.device)])
        h = self._layers(self._layout(activation_fn(pre, self.activation)), None, layer,
                         start=1)[0]
        return self._unlayout(h, z.shape[0])

    @torch.no_grad()
    def act(self, obs: torch.Tensor, avail_actions: torch.Tensor | None = None, *,
            cond: torch.Tensor | int | None = None, guidance: float = 1.0, n_steps: int = 1,
            noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
            mean_velocity: bool = True) -> torch.Tensor:
        """Sample actions with ``n_steps`` network evaluations (1 by default).

        Args:
            obs: [B, N, obs_dim].
            avail_actions: [B, N, K] bool (discrete only); unavailable actions are never chosen.
            cond: token id(s) to condition on, [B] or int; default ``exec_token`` (the
                advantageous token; null for an unconditional policy).
            guidance: test-time guidance w: u = u_null + w (u_c - u_null) (1 = off; otherwise
                the cond and null passes run stacked as one batch).
            n_steps: sampling steps (> 1 only for ablations).
            mean_velocity: step with the average velocity u(z, r, t) over each step (MeanFlow);
                False steps with the instantaneous one u(z, t, t), as a plain flow-matching
                policy (``flow_matching_loss``) must be sampled (Euler, several steps).
            noise: [B, N, D] initial noise e, or None to draw it (from ``generator``).

        Returns:
            continuous: [B, N, D] actions rescaled to [action_low, action_high];
            discrete: [B, N] int64 action ids.
        """
        obs = self._check_obs(obs)
        batch, dev, dtype = obs.shape[0], obs.device, obs.dtype
        shape = (batch, self.n_agents, self.action_dim)
        if self.discrete and avail_actions is not None:
            check_tensor("avail_actions", avail_actions, shape=shape, dtypes=(torch.bool,),
                         device=dev)
            check_avail(avail_actions)
        elif avail_actions is not None:
            raise ValueError("avail_actions: expected None for continuous actions, found a mask")
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps: expected an int >= 1, found {n_steps!r}")
        if cond is None or isinstance(cond, int):
            # an int is checked here once, not as a tensor (min/max are two reductions a call)
            token = self.exec_token if cond is None else cond
            if not 0 <= token <= self.null_token:
                raise ValueError(f"cond: expected a token id in [0, {self.null_token}] "
                                 f"({self.null_token} = null), found {token}")
            cond = token
        else:
            cond = self._check_cond(cond, batch)
        if noise is None:
            z = torch.randn(shape, device=dev, dtype=dtype, generator=generator)
        else:
            z = check_tensor("noise", noise, shape=shape, dtypes=(dtype,), device=dev)
        guided = guidance != 1.0
        if guided:  # one stacked pass: [cond rows; null rows]
            obs = torch.cat([obs, obs])
        if isinstance(cond, torch.Tensor) and guided:
            cond = torch.cat([cond, torch.full_like(cond, self.null_token)])
        fast = not torch.compiler.is_compiling()
        layer = _backend.implementation("linear_jvp", _LAYER_BACKENDS, dev, self._op_backend(),
                                        linear_jvp_ref)

        def velocities(t_val: float, r_val: float):
            nonlocal fast, cond
            zz = torch.cat([z, z]) if guided else z
            r_val = r_val if mean_velocity else t_val
            u = self._exec_velocity(zz, obs, cond, guided, t_val, r_val, layer) if fast else None
            if u is None:  # general path (compiled, or parameters without version counters)
                fast = False
                if not isinstance(cond, torch.Tensor):
                    tokens = [cond, self.null_token] if guided else [cond]
                    cond = torch.tensor(tokens, device=dev).repeat_interleave(batch)
                t = torch.full(zz.shape[:2], t_val, device=dev, dtype=dtype)
                r = torch.full(zz.shape[:2], r_val, device=dev, dtype=dtype)
                u = self._run(zz, r, t, obs, cond)[0]
            return u.chunk(2) if guided else (u, None)

        if n_steps == 1 and fast and layer is not linear_jvp_ref:  # only Triton layers fuse
            fused = self._act_fused(z, obs, cond, guided, guidance, avail_actions)
            if fused is not None:
                return fused
        step = 1.0 / n_steps
        for k in range(n_steps - 1):  # Euler steps on the average velocity, t = 1 -> 1/n
            u_c, u_null = velocities(1.0 - k * step, 1.0 - (k + 1) * step)
            z = z - step * (u_c if u_null is None else torch.lerp(u_null, u_c, guidance))
        u_c, u_null = velocities(step, 0.0)
        low, high = (None, None) if self.discrete else (self.action_low.to(dtype),
                                                        self.action_high.to(dtype))
        sample = _backend.implementation("cfg_sample", _CFG_BACKENDS, dev, self._op_backend(),
                                         cfg_sample_ref)
        return sample(z, u_c, u_null, guidance, step, low, high, avail_actions, self.discrete)

    def _act_fused(self, z, obs, cond, guided: bool, guidance: float,
                   avail: torch.Tensor | None) -> torch.Tensor | None:
        """One-step sampling in ONE launch (``kernels.cfg_sample.mlp_cfg_sample``: the whole
        MLP, cond and null passes, and the guided step + decoding) when the layers and
        ``cfg_sample`` both resolve to Triton (CUDA; or the interpreter when forced) and the
        batch is small enough (decentralised execution); None otherwise (layer-by-layer path).

        z [B, N, D]; obs [B', N, obs_dim] (B' = 2 B when ``guided``: cond rows, then null rows);
        cond: int token or [B'] / [B', N] ids.
        """
        dev, backend = obs.device, self._op_backend()
        if (_backend.resolve("linear_jvp", _LAYER_BACKENDS, dev, backend) != "triton"
                or _backend.resolve("cfg_sample", _CFG_BACKENDS, dev, backend) != "triton"):
            return None
        from .kernels.cfg_sample import mlp_cfg_sample, mlp_fits, pack_mlp

        batch = z.shape[0]
        params = [*self.weights, *self.biases]
        key = tuple((p.data_ptr(), p._version) for p in params)  # refreshed on any update
        cached = self.__dict__.get("_mlp_pack")
        if cached is None or cached[0] != key:
            cached = (key, pack_mlp(list(self.weights), list(self.biases)))
            self.__dict__["_mlp_pack"] = cached
        pack = cached[1]
        if not mlp_fits(batch * self.n_agents if self.share_parameters else batch, pack):
            return None
        if not isinstance(cond, torch.Tensor):
            tokens = [cond, self.null_token] if guided else [cond]
            cond = torch.tensor(tokens, device=dev).repeat_interleave(batch)
        zz = torch.cat([z, z]) if guided else z
        ones = torch.ones(zz.shape[:2], device=dev, dtype=z.dtype)
        x = self._layout(self._inputs(zz, ones - 1, ones, obs, cond)[0])  # t = 1, r = 0
        bounds = {} if self.discrete else {"low": self.action_low.to(z.dtype),
                                           "high": self.action_high.to(z.dtype)}
        out = mlp_cfg_sample(x, pack, self._layout(z), self.activation, guided=guided,
                             guidance=guidance, discrete=self.discrete,
                             avail=None if avail is None else self._layout(avail), **bounds)
        if self.share_parameters:
            return out.reshape(batch, self.n_agents, *out.shape[1:])
        return out.transpose(0, 1)

    def forward(self, obs: torch.Tensor, avail_actions: torch.Tensor | None = None) -> torch.Tensor:
        """One-step actions under the advantageous condition: see :meth:`act`."""
        return self.act(obs, avail_actions)
