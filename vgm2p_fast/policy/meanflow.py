"""``MeanFlowPolicy``: the decentralised one-step MeanFlow actor of VGM²P (design 1.2 and 4).

A thin facade over the package's parts: the network (``network.py``), the losses
(``losses.py``), sampling (``sampling.py``, with the execution fast path in ``fastpath.py``),
and the two configs (``config.py``). Execution: ``x = e - u(e, 0, 1 | o, id, c*)``: one network
evaluation per agent.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..io import atomic_write, optional_import
from . import fastpath, losses, sampling
from .config import LossConfig, PolicyConfig, loss_config, split_config
from .export import export_policy
from .network import VelocityNetwork

SAVE_FORMAT = "vgm2p_fast.MeanFlowPolicy/1"


def _safetensors():
    """safetensors.torch, or ImportError with the install command (a .safetensors path)."""
    return optional_import("safetensors.torch", "a .safetensors policy file",
                           "pip install safetensors (or use a .pt path)")


def read_policy_file(path: str | os.PathLike, map_location: str | torch.device | None = None
                     ) -> dict:
    """``{"format", "config", "state_dict", "metadata"}`` of a policy file (torch.save or
    safetensors, told apart by the first bytes); one-line ValueError naming the path for a
    missing, truncated or foreign file."""
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        if is_zip:
            blob = torch.load(path, map_location=map_location, weights_only=True)
        else:
            st = _safetensors()
            with st.safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            state = st.load_file(str(path), device=str(map_location or "cpu"))
            blob = {"format": header.get("format"), "state_dict": state,
                    "config": json.loads(header.get("config", "{}")),
                    "metadata": json.loads(header.get("metadata", "{}"))}
    except FileNotFoundError:
        raise
    except ImportError:
        raise
    except Exception as exc:  # zip reader, unpickler and SafetensorError raise their own types
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"{path}: expected a file written by MeanFlowPolicy.save or "
                         f"MLPPolicy.save, found an unreadable, truncated or foreign file "
                         f"({type(exc).__name__}: {first})") from exc
    if not isinstance(blob, dict) or not {"format", "config", "state_dict"} <= set(blob):
        raise ValueError(f"{path}: expected a file written by MeanFlowPolicy.save, found "
                         f"something else")
    blob.setdefault("metadata", {})
    return blob


class MeanFlowPolicy(VelocityNetwork):
    """Average-velocity MeanFlow policy for ``n_agents`` agents with one-step sampling.

    Args:
        obs_dim, action_dim, n_agents, discrete, hidden_dims, activation, share_parameters,
            n_tokens, time_dim, cond_dim, max_freq: the architecture (:class:`PolicyConfig`,
            one comment per field there). ``n_tokens`` 2: binary advantageous or not; K:
            quantile bins; 0: unconditional (plain MeanFlow BC, trained and executed with the
            null token only). Token ``n_tokens - 1`` is the one used at execution.
        action_low, action_high: environment bounds the continuous actions are rescaled to,
            ``(D,)`` or per agent ``(N, D)``.
        loss: the training loss (:class:`LossConfig`); its fields may also be given as
            keywords (``omega=0.7``), as before the configs were split.
        jvp: ``fused`` (analytic tangent, the fast path) or ``func`` (``torch.func.jvp``).
        backend: op backend of the layers (``auto``, ``torch``, ``triton``). ``"func"`` is
            read as ``jvp="func"`` (its meaning before the two were separated).
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
        loss: LossConfig | None = None,
        jvp: str = "fused",
        backend: str = "auto",
        **loss_fields: float,
    ) -> None:
        if backend == "func":
            jvp, backend = "func", "auto"
        arch = PolicyConfig(obs_dim, action_dim, n_agents, discrete, tuple(hidden_dims),
                            activation, share_parameters, n_tokens, time_dim, cond_dim,
                            float(max_freq))
        super().__init__(arch, action_low, action_high, jvp=jvp, backend=backend)
        self.loss_config = loss_config(loss, loss_fields)
        self.metadata: dict = {}

    @property
    def config(self) -> dict:
        """The architecture as a JSON-able dict (what :meth:`save` writes)."""
        return {**dataclasses.asdict(self.arch), "hidden_dims": list(self.arch.hidden_dims)}

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, metadata: dict | None = None) -> None:
        """Write the architecture + weights (+ JSON-able ``metadata``, e.g. the env spec) to
        ``path``, atomically (temp file + rename). Loadable by :meth:`load` without any
        training code; the loss config is not part of a deployed policy.

        A path ending in ``.safetensors`` is written with safetensors (weights as tensors,
        config and metadata as JSON in its header; needs ``pip install safetensors``); any
        other path with ``torch.save`` (loaded back with ``weights_only=True``)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            st = _safetensors()
            tensors = {k: v.contiguous() for k, v in self.state_dict().items()}
            header = {"format": SAVE_FORMAT, "config": json.dumps(self.config),
                      "metadata": json.dumps(metadata or {})}
            atomic_write(path, lambda f: f.write(st.save(tensors, metadata=header)))
        else:
            blob = {"format": SAVE_FORMAT, "config": self.config,
                    "state_dict": self.state_dict(), "metadata": metadata or {}}
            atomic_write(path, lambda f: torch.save(blob, f))

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device | None = None
             ) -> MeanFlowPolicy:
        """Rebuild a policy written by :meth:`save` (either format, told apart by the file's
        first bytes: torch.save writes a zip archive); ``policy.metadata`` holds its metadata.
        A file that is truncated or not a policy is a ValueError naming the path."""
        blob = read_policy_file(path, map_location)
        if blob.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path}: expected a file written by MeanFlowPolicy.save "
                             f"(format {SAVE_FORMAT!r}), found {blob.get('format')!r}")
        return cls.from_blob(blob)

    @classmethod
    def from_blob(cls, blob: dict) -> MeanFlowPolicy:
        """Rebuild from the dict :func:`read_policy_file` returns."""
        state = blob["state_dict"]
        arch, loss, jvp = split_config(blob["config"])
        low, high = state.get("action_low"), state.get("action_high")
        bounds = {} if arch.get("discrete") else {"action_low": low, "action_high": high}
        policy = cls(**arch, **bounds, jvp=jvp, **loss)
        policy.load_state_dict(state)
        policy.metadata = blob["metadata"]
        return policy.to(state["freqs"].device)

    # ------------------------------------------------------------------ training
    def sample_times(self, shape: Sequence[int], *, device: torch.device | None = None,
                     generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, t) of ``shape``, r <= t (``losses.sample_times``)."""
        return losses.sample_times(self.loss_config, shape, device=device or self.freqs.device,
                                   generator=generator)

    def n_tangent_rows(self, batch: int) -> int:
        """How many leading rows of a training batch of ``batch`` rows have r < t."""
        return losses.n_tangent_rows(self.loss_config, batch)

    def _guided_velocity(self, z, t, obs, cond, v, dropped) -> torch.Tensor:
        return losses.guided_velocity(self, self.loss_config, z, t, obs, cond, v, dropped)

    def meanflow_loss(self, obs: torch.Tensor, actions: torch.Tensor,
                      cond: torch.Tensor | None, *, generator: torch.Generator | None = None,
                      weights: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """CFG-guided MeanFlow loss (``losses.meanflow_loss``).

        Args: obs [B, N, obs_dim]; actions [B, N, D] in [-1, 1] or [B, N] ids; cond [B] or
        [B, N] tokens, or None for unconditional MeanFlow BC; weights [B] per-row weights or
        None. Returns (loss, info)."""
        return losses.meanflow_loss(self, self.loss_config, obs, actions, cond,
                                    generator=generator, weights=weights)

    def flow_matching_loss(self, obs: torch.Tensor, actions: torch.Tensor,
                           cond: torch.Tensor | None = None, *,
                           generator: torch.Generator | None = None,
                           weights: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Plain flow-matching BC on the same network, rows optionally weighted by
        ``weights`` [B] (``losses.flow_matching_loss``)."""
        return losses.flow_matching_loss(self, self.loss_config, obs, actions, cond,
                                         generator=generator, weights=weights)

    # ------------------------------------------------------------------ execution
    def _exec_velocity(self, z, obs, cond, guided, t_val, r_val, layer):
        return fastpath.exec_velocity(self, z, obs, cond, guided, t_val, r_val, layer)

    def act(self, obs: torch.Tensor, avail_actions: torch.Tensor | None = None, *,
            cond: torch.Tensor | int | None = None, test_guidance: float = 1.0,
            n_steps: int = 1, noise: torch.Tensor | None = None,
            generator: torch.Generator | None = None, sampler: str = "meanflow",
            guidance: float | None = None, mean_velocity: bool | None = None) -> torch.Tensor:
        """Sample actions with ``n_steps`` network evaluations (1 by default).

        Args:
            obs: [B, N, obs_dim] raw observations.
            avail_actions: [B, N, K] bool (discrete only); unavailable actions are never chosen.
            cond: token id(s) to condition on, [B] / [B, N] or int; default ``exec_token``.
            test_guidance: test-time guidance w: u = u_null + w (u_c - u_null) (1 = off;
                otherwise the cond and null passes run stacked as one batch); finite, > 0.
            n_steps: sampling steps (> 1 only for ablations and flow-matching policies).
            noise: [B, N, D] initial noise e (zeros: the deterministic "mode" action), or None
                to draw it (from ``generator``).
            sampler: ``meanflow`` (average velocity per step) or ``euler`` (instantaneous
                velocity, how a flow-matching policy is sampled); see ``sampling.SAMPLERS``.
            guidance, mean_velocity: the earlier names of ``test_guidance`` and of
                ``sampler`` (``mean_velocity=False`` is ``sampler="euler"``), still accepted.

        Returns:
            continuous: [B, N, D] actions rescaled to [action_low, action_high];
            discrete: [B, N] int64 action ids.
        """
        if guidance is not None:
            test_guidance = guidance
        if mean_velocity is not None:
            sampler = "meanflow" if mean_velocity else "euler"
        return sampling.act(self, obs, avail_actions, cond=cond, test_guidance=test_guidance,
                            n_steps=n_steps, noise=noise, generator=generator, sampler=sampler)

    def forward(self, obs: torch.Tensor, avail_actions: torch.Tensor | None = None) -> torch.Tensor:
        """One-step actions under the advantageous condition: see :meth:`act`."""
        return sampling.act(self, obs, avail_actions)

    def export(self, path: str | os.PathLike, *, test_guidance: float = 1.0
               ) -> torch.export.ExportedProgram:
        """Write one-step sampling as a ``torch.export`` program (``.pt2``) that runs with
        torch alone: ``torch.export.load(path).module()`` takes ``(obs, noise)`` (continuous)
        or ``(obs, avail_actions, noise)`` (discrete), noise ``[B, N, D]`` float32, any batch
        size, and returns what ``act(obs, avail_actions, noise=noise,
        test_guidance=test_guidance)`` returns. ``test_guidance`` is baked in. See
        ``vgm2p_fast/policy/export.py`` and ``docs/deploy.md``."""
        return export_policy(self, path, test_guidance=test_guidance)
