"""A trained policy as a ``torch.export`` program (``.pt2``) that runs with torch alone.

``export_policy(policy, path)`` (``MeanFlowPolicy.export``, ``vgm2p export``) traces one-step
sampling into an ``ExportedProgram`` and saves it with ``torch.export.save``. The program's
module takes

- continuous: ``(obs [B, N, obs_dim] float32, noise [B, N, D] float32)`` -> actions
  ``[B, N, D]`` in the policy's bounds (``(D,)`` or per agent ``(N, D)``);
- discrete: ``(obs, avail_actions [B, N, K] bool, noise [B, N, K] float32)`` -> action ids
  ``[B, N]`` int64 (the masked argmax: an unavailable action is never chosen),

with a dynamic batch dimension ``B >= 1``. Inside: the first layer folded at (t = 1, r = 0)
with the observation normalisation, the condition token used at execution, the test-time
guidance given at export (baked in: ``u = u_null + w (u_c - u_null)``), then ``x = noise - u``
and clip + rescale or the masked argmax. It is the same computation as
``policy.act(obs, avail, noise=noise, test_guidance=w)`` (shared weights: the op sequence of
``fastpath.step_math``; per-agent weights: ``fastpath.exec_velocity`` and ``cfg_sample_ref``),
so it returns the same actions (tests/test_export.py). The noise is an input so that results
are reproducible; draw it as ``torch.randn(B, N, D)`` (zeros: the deterministic "mode" action).

Loading needs no ``vgm2p_fast``::

    extra = {"vgm2p_actor.json": ""}
    actor = torch.export.load("actor.pt2", extra_files=extra).module()
    meta = json.loads(extra["vgm2p_actor.json"])   # sizes, guidance, the policy's metadata
    actions = actor(obs, torch.randn(obs.shape[0], meta["n_agents"], meta["action_dim"]))

The program keeps two of ``act``'s refusals as runtime assertions (``torch._assert_async``, a
RuntimeError naming the argument): non-finite observations, and a mask row without an available
action. An ``MLPPolicy`` (the BC baseline) exports with the same signature; it is deterministic,
so its ``noise`` input is accepted and ignored, and it has no guidance.

``compile_aoti(program, package)`` compiles a saved program with AOTInductor (a C++ compiler
is needed) into a package loaded by ``torch._inductor.aoti_load_package``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write
from ..ops.cfg_sample import cfg_sample_ref
from ..ops.linear_jvp import linear_jvp_ref
from . import fastpath
from .mlp import MLPPolicy
from .network import VelocityNetwork

FORMAT = "vgm2p_fast.actor/1"
META_FILE = "vgm2p_actor.json"  # extra file of the .pt2 with the sizes and metadata
EXAMPLE_BATCH = 2  # traced at B = 2: torch.export specialises sample sizes 0 and 1


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy: torch.export.save stores a non-contiguous buffer (the folded table
    is a transposed sum) with a warning that it may not load back on another device."""
    return t.detach().clone(memory_format=torch.contiguous_format)


class _MeanFlowCore(nn.Module):
    """One-step sampling of a MeanFlow policy on folded constants (module docstring)."""

    def __init__(self, policy: VelocityNetwork, guidance: float) -> None:
        super().__init__()
        self.guidance, self.discrete = guidance, policy.discrete
        self.token, self.shared = policy.exec_token, policy.share_parameters
        self.activation = policy.activation
        key = fastpath.cache_key(policy)  # a copy made outside inference mode: never None
        if self.shared:  # the layers and the folded first layer as this module's buffers
            self.step_names = fastpath.Step._fields
            step = fastpath.plan(policy).steps[self.token]
            for name, t in zip(self.step_names, step):
                self.register_buffer(f"step_{name}", _own(t))
            self.n_layers = len(policy.weights)
            for i, (w, b) in enumerate(zip(policy.weights, policy.biases)):
                self.register_buffer(f"weight{i}", _own(w))
                self.register_buffer(f"bias{i}", _own(b))
        else:  # exec_velocity reads the policy's layers; the fold becomes buffers here
            self.net = policy
            folded = fastpath.fold(policy, 1.0, 0.0, key)
            self.register_buffer("w_in", _own(folded.w_in))
            self.register_buffer("table", _own(folded.table))

    def forward(self, obs: torch.Tensor, avail: torch.Tensor | None,
                noise: torch.Tensor) -> torch.Tensor:
        torch._assert_async(torch.isfinite(obs).all(),
                            "obs: expected finite observations, found NaN or inf")
        if avail is not None:
            torch._assert_async(avail.any(-1).all(), "avail_actions: a row marks every action "
                                "unavailable; expected at least one True")
        if self.shared:
            step = fastpath.Step(*(getattr(self, f"step_{n}") for n in self.step_names))
            weights = [getattr(self, f"weight{i}") for i in range(self.n_layers)]
            biases = [getattr(self, f"bias{i}") for i in range(self.n_layers)]
            return fastpath.step_math(step, weights, biases, self.activation, self.discrete,
                                      obs, noise, avail, self.guidance)[0]
        guided = self.guidance != 1.0
        zz, oo = (torch.cat([noise, noise]), torch.cat([obs, obs])) if guided else (noise, obs)
        u = fastpath.exec_velocity(self.net, zz, oo, self.token, guided, 1.0, 0.0,
                                   linear_jvp_ref, fastpath.Folded(self.w_in, self.table, None))
        # slices, not u.chunk(2): chunk's size guard ((3 B - 1) // B == 2) is one export
        # cannot prove for a symbolic B
        u_c, u_null = (u[: noise.shape[0]], u[noise.shape[0] :]) if guided else (u, None)
        low, high = (None, None) if self.discrete else (self.net.action_low,
                                                        self.net.action_high)
        return cfg_sample_ref(noise, u_c, u_null, self.guidance, 1.0, low, high, avail,
                              self.discrete)


class _MLPCore(nn.Module):
    """``MLPPolicy.act`` without its Python checks (the noise is not used)."""

    def __init__(self, policy: MLPPolicy) -> None:
        super().__init__()
        self.policy, self.discrete = policy, policy.discrete

    def forward(self, obs: torch.Tensor, avail: torch.Tensor | None,
                noise: torch.Tensor) -> torch.Tensor:
        torch._assert_async(torch.isfinite(obs).all(),
                            "obs: expected finite observations, found NaN or inf")
        out = self.policy._out(obs)
        if self.discrete:
            torch._assert_async(avail.any(-1).all(), "avail_actions: a row marks every action "
                                "unavailable; expected at least one True")
            return out.masked_fill(~avail, float("-inf")).argmax(-1)
        p = self.policy
        return p.action_low + (out.clamp(-1.0, 1.0) + 1.0) * (
            0.5 * (p.action_high - p.action_low))


class ContinuousActor(nn.Module):
    """``forward(obs [B, N, obs_dim], noise [B, N, D]) -> actions [B, N, D]``."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.core(obs, None, noise)


class DiscreteActor(nn.Module):
    """``forward(obs, avail_actions [B, N, K] bool, noise [B, N, K]) -> ids [B, N]``."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def forward(self, obs: torch.Tensor, avail_actions: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        return self.core(obs, avail_actions, noise)


def actor_module(policy: VelocityNetwork | MLPPolicy, test_guidance: float = 1.0
                 ) -> nn.Module:
    """The float32 eager module that :func:`export_policy` traces (a copy: later changes to
    ``policy`` do not reach it). Call it outside inference mode (the fold needs version
    counters)."""
    if not isinstance(test_guidance, (int, float)) or isinstance(test_guidance, bool) \
            or not math.isfinite(test_guidance) or not test_guidance > 0:
        raise ValueError(f"test_guidance: expected a finite number > 0, found {test_guidance!r}")
    if isinstance(policy, MLPPolicy):
        if test_guidance != 1.0:
            raise ValueError(f"test_guidance: an MLPPolicy has no guidance; expected 1, found "
                             f"{test_guidance}")
        core: nn.Module = _MLPCore(copy.deepcopy(policy).float().eval())
    elif isinstance(policy, VelocityNetwork):
        net = copy.deepcopy(policy).float().eval()
        net.__dict__.pop("_exec_cache", None)
        core = _MeanFlowCore(net, float(test_guidance))
    else:
        raise ValueError(f"policy: expected a MeanFlowPolicy or MLPPolicy, found "
                         f"{type(policy).__name__}")
    return DiscreteActor(core) if policy.discrete else ContinuousActor(core)


def metadata(policy: VelocityNetwork | MLPPolicy, test_guidance: float) -> dict:
    """What the ``.pt2`` carries in :data:`META_FILE`: sizes, inputs, guidance, and the
    policy's own metadata (e.g. the env spec of a trained run)."""
    discrete = bool(policy.discrete)
    return {"format": FORMAT, "policy": type(policy).__name__, "obs_dim": policy.obs_dim,
            "n_agents": policy.n_agents, "action_dim": policy.action_dim,
            "discrete": discrete, "test_guidance": float(test_guidance), "dtype": "float32",
            "inputs": ["obs", "avail_actions", "noise"] if discrete else ["obs", "noise"],
            "torch": torch.__version__, "metadata": getattr(policy, "metadata", {})}


def export_policy(policy: VelocityNetwork | MLPPolicy, path: str | os.PathLike, *,
                  test_guidance: float = 1.0) -> torch.export.ExportedProgram:
    """Trace one-step sampling of ``policy`` (module docstring) and save it to ``path``
    (``.pt2``, written atomically). Returns the ``ExportedProgram``.

    Args:
        policy: a ``MeanFlowPolicy`` (either parameter layout) or an ``MLPPolicy``; traced in
            float32 on its device (a CUDA policy gives a CUDA program).
        path: the output file.
        test_guidance: w of test-time guidance, baked into the program (1 = off).
    """
    with torch.inference_mode(False):  # copies of inference tensors are foldable tensors
        module = actor_module(policy, test_guidance)
    dev = next(module.buffers()).device
    b, n = EXAMPLE_BATCH, policy.n_agents
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(b, n, policy.obs_dim, generator=gen).to(dev)
    noise = torch.randn(b, n, policy.action_dim, generator=gen).to(dev)
    batch = torch.export.Dim("batch", min=1)
    if policy.discrete:
        avail = torch.ones(b, n, policy.action_dim, dtype=torch.bool, device=dev)
        args: tuple = (obs, avail, noise)
    else:
        args = (obs, noise)
    with torch.no_grad():
        program = torch.export.export(module, args,
                                      dynamic_shapes=tuple({0: batch} for _ in args))
    extra = {META_FILE: json.dumps(metadata(policy, test_guidance))}
    atomic_write(Path(path), lambda f: torch.export.save(program, f, extra_files=extra))
    return program


def compile_aoti(program_path: str | os.PathLike, package_path: str | os.PathLike) -> Path:
    """Compile a saved program with AOTInductor into ``package_path`` (needs a C++ compiler;
    minutes on a small CPU). Load it with ``torch._inductor.aoti_load_package(package_path)``:
    it is called like the program's module."""
    from torch._inductor import aoti_compile_and_package

    program = torch.export.load(program_path)
    return Path(aoti_compile_and_package(program, package_path=str(package_path)))
