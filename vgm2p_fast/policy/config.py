"""The two configs of a MeanFlow policy: its architecture (what a deployed file must carry to
rebuild the network) apart from its training loss (what only the trainer needs).

A policy file written by :meth:`MeanFlowPolicy.save` stores ``PolicyConfig`` only. Files written
before the split stored one flat dict with the loss fields and ``backend`` mixed in:
:func:`split_config` reads both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

JVP_MODES = ("fused", "func")


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Architecture of the average-velocity network ``u(z, r, t | o, id, c)``."""

    obs_dim: int                       # per-agent observation size (agents zero-padded to it)
    action_dim: int                    # continuous action size D, or the number of actions K
    n_agents: int                      # N
    discrete: bool = False             # {-1, +1} one-hot generated, masked argmax decoded
    hidden_dims: tuple[int, ...] = (256, 256, 256, 256)
    activation: str = "silu"           # silu | relu | gelu_tanh
    share_parameters: bool = True      # one network + one-hot id, or weights per agent
    n_tokens: int = 2                  # condition tokens; 0 = unconditional (BC); null = n_tokens
    time_dim: int = 32                 # size of each sinusoidal time embedding (even)
    cond_dim: int = 32                 # size of the learned condition embedding
    # Highest angular frequency of the time embeddings (geometric in [1, max_freq]). d emb/dt
    # enters the JVP target: on the bimodal toy of tests/test_policy.py, 100 made training
    # oscillate (share of samples near a mode 0.15 -> 0.01 -> 0.46), 3 converged (0.34 -> 0.67).
    max_freq: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_dims", tuple(int(h) for h in self.hidden_dims))


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """MeanFlow training loss with classifier-free guidance in the target (design 1.2)."""

    # v_g = omega v + kappa u(z, t, t | c) + (1 - omega - kappa) u(z, t, t | null); the
    # effective guidance scale is omega / (1 - kappa) (defaults: 2, MeanFlow's own setting).
    omega: float = 1.0
    kappa: float = 0.5
    cond_dropout: float = 0.1          # share of rows trained with the null token
    ratio_r_neq_t: float = 0.25        # share of rows with r < t (the rest use r = t)
    time_mu: float = -0.4              # logit-normal (t, r) sampler: location
    time_sigma: float = 1.0            # ... and scale
    # Adaptive weight 1 / (L + eps)^p. p = 0 (plain squared error), not MeanFlow's 1: with p > 0
    # the minimiser leans from the conditional mean to the mode and minority modes are lost
    # (toy 0.7/0.3 mixture: P(majority) 1.0 at p = 1, 0.85 at 0.5, 0.69 at 0).
    norm_p: float = 0.0
    norm_eps: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout: expected a value in [0, 1), found "
                             f"{self.cond_dropout}")
        if not 0.0 <= self.ratio_r_neq_t <= 1.0:
            raise ValueError(f"ratio_r_neq_t: expected a value in [0, 1], found "
                             f"{self.ratio_r_neq_t}")
        if self.time_sigma <= 0:
            raise ValueError(f"time_sigma: expected > 0, found {self.time_sigma}")
        if self.norm_eps <= 0 or self.norm_p < 0:
            raise ValueError(f"norm_p >= 0 and norm_eps > 0 expected, found {self.norm_p}, "
                             f"{self.norm_eps}")


_ARCH = {f.name for f in dataclasses.fields(PolicyConfig)}
_LOSS = {f.name for f in dataclasses.fields(LossConfig)}


def loss_config(loss: LossConfig | None, overrides: Mapping[str, Any]) -> LossConfig:
    """``loss`` (default ``LossConfig()``) with keyword ``overrides`` of its fields; an unknown
    name is a ValueError naming it."""
    unknown = sorted(set(overrides) - _LOSS)
    if unknown:
        raise ValueError(f"{unknown[0]}: not an argument of MeanFlowPolicy; loss options are "
                         f"{sorted(_LOSS)}")
    return dataclasses.replace(loss or LossConfig(), **overrides)


def split_config(flat: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A saved config -> (architecture kwargs, loss kwargs, jvp mode).

    Reads the current layout (architecture only) and the flat one of earlier files, whose
    ``backend`` was an op backend or ``"func"`` (the JVP strategy, now ``jvp="func"``).
    """
    arch = {k: v for k, v in flat.items() if k in _ARCH or k in ("action_low", "action_high")}
    loss = {k: v for k, v in flat.items() if k in _LOSS}
    jvp = flat.get("jvp", "func" if flat.get("backend") == "func" else "fused")
    return arch, loss, jvp
