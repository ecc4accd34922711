"""Opt-in CUDA-graph acting at a fixed batch size (issue 15): capture one-step sampling once,
replay it every step.

At decentralised-execution sizes a one-step action on a GPU is a dozen small kernels whose
launch cost on the CPU (several microseconds each through PyTorch's dispatcher and Python)
exceeds their GPU time; a CUDA graph launches the whole recorded sequence with one call::

    actor = CUDAGraphActor(policy.cuda(), batch_size=64)   # warm-up + capture, once
    for step in range(T):
        actions = actor(obs)                 # copy obs in, replay, the static output
        actions = actor(obs, noise=noise)    # reproducible: the same as policy.act(obs, noise=)

What is captured is what ``policy.act(obs, avail_actions, noise=noise, cond=token,
test_guidance=w, n_steps=n, sampler=s)`` runs on checked inputs (``sampling._sample``, or the
one-step plan's ``fastpath.step_math`` for shared weights on torch layers), with the condition
as a ``[B]`` tensor of the token: an int token makes the guided and one-launch paths build small
host tensors, a host-to-device copy that a capture refuses. Same kernels on the same inputs,
so the same actions as ``act`` (``tests/test_cuda_graph.py``; one-env unguided acting through
per-layer Triton kernels adds the token row by a gather instead of inside an ``addmm``, a
round-off difference).

Contract of a call:

- inputs are checked in O(1) (type, dtype, shape with the captured batch size, device; a
  ValueError names the argument, expected and found) and copied into the static buffers
  ``obs_buffer``, ``avail_buffer`` (discrete), ``noise_buffer``; passing a buffer itself skips
  its copy. ``noise=None`` draws it into ``noise_buffer`` (``normal_``, outside the graph, from
  ``generator`` when given: the numbers ``torch.randn`` would draw);
- the returned tensor is the graph's static output: **the next call overwrites it** (``clone()``
  it to keep it);
- ``validate=True`` (default) keeps ``act``'s two refusals, non-finite observations and a mask
  row without an available action, with one host read per call (a sum computed inside the
  graph; the exact checks, which name the row, run only when it is not finite).
  ``validate=False`` makes a call free of host synchronisation; such inputs then give
  meaningless actions instead of an error;
- an update of the policy's weights that bumps a version counter (optimiser step,
  ``load_state_dict``, an EMA ``lerp_``) is seen by the next call, which refolds and recaptures
  (milliseconds, once). Writes through ``param.data`` are not seen: call :meth:`capture`.

:class:`StaticActor` is the same object without the graph (the body runs eagerly into the same
static buffers): it is what the CPU tests exercise; it is not faster than ``act``.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_avail, check_tensor
from . import fastpath, sampling
from .network import VelocityNetwork

WARMUP_RUNS = 2  # on a side stream before the capture: Triton compiles on the first call


def _on(found: torch.device, device: torch.device) -> bool:
    """``found`` is ``device`` (an index-less ``cuda`` is read as the current CUDA device)."""
    if found.type != device.type:
        return False
    if found.index is None and device.type == "cuda":
        return torch.cuda.current_device() == device.index
    return found.index == device.index


class StaticActor:
    """Acting at a fixed batch size through static input / output buffers (module docstring),
    run eagerly; :class:`CUDAGraphActor` replays a captured graph instead.

    Args:
        policy: a ``MeanFlowPolicy`` (either parameter layout, any backend).
        batch_size: B, the number of environments of every call.
        test_guidance, n_steps, sampler: as in ``policy.act``, fixed at capture.
        cond: the condition token (an int; default the policy's ``exec_token``), fixed.
        validate: keep ``act``'s refusal of non-finite observations and empty mask rows
            (one host read per call).
    """

    def __init__(self, policy: VelocityNetwork, batch_size: int, *, test_guidance: float = 1.0,
                 cond: int | None = None, n_steps: int = 1, sampler: str = "meanflow",
                 validate: bool = True) -> None:
        if not isinstance(policy, VelocityNetwork):
            raise ValueError(f"policy: expected a MeanFlowPolicy, found {type(policy).__name__}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size: expected an int >= 1, found {batch_size!r}")
        sampling.check_sampling(test_guidance, n_steps, sampler)
        if cond is not None and (not isinstance(cond, int) or isinstance(cond, bool)):
            raise ValueError(f"cond: expected an int token or None (fixed at capture), found "
                             f"{type(cond).__name__}")
        self.policy, self.batch_size = policy, batch_size
        self.test_guidance, self.n_steps, self.sampler = float(test_guidance), n_steps, sampler
        self.token = sampling._token(policy, cond, batch_size)
        self.validate = bool(validate)
        w = policy._modules["weights"]._parameters["0"]
        self.device, self.dtype = w.device, w.dtype
        self._check_device()
        n, d, b = policy.n_agents, policy.action_dim, batch_size
        self.obs_buffer = torch.zeros(b, n, policy.obs_dim, dtype=self.dtype, device=self.device)
        self.noise_buffer = torch.zeros(b, n, d, dtype=self.dtype, device=self.device)
        self.avail_buffer = (torch.ones(b, n, d, dtype=torch.bool, device=self.device)
                             if policy.discrete else None)
        self._all_avail = True  # avail_buffer holds all True (what a call without a mask uses)
        self.capture()

    # ------------------------------------------------------------------ capture
    def _check_device(self) -> None:
        """Any device runs eagerly; :class:`CUDAGraphActor` needs CUDA."""

    def capture(self) -> None:
        """(Re)build the computation on the policy's current weights: refold, warm up, capture.
        Calls do it themselves when a weight's version counter moved."""
        w = self.policy._modules["weights"]._parameters["0"]
        if (w.device, w.dtype) != (self.device, self.dtype):
            raise ValueError(f"policy: expected it on {self.device} in {self.dtype} (as at "
                             f"capture), found {w.device} in {w.dtype}; build a new actor")
        with torch.no_grad():
            plan = None if torch.compiler.is_compiling() else fastpath.plan(self.policy)
            self._lean = plan is not None and plan.lean and self.n_steps == 1
            self._cond = torch.full((self.batch_size,), self.token, dtype=torch.long,
                                    device=self.device)
            self._build(plan)
        # the folded tensors and the Triton pack the computation reads: kept alive here, as a
        # later refold replaces them in the policy's caches while a graph still reads them
        self._keep = (dict(self.policy.__dict__.get("_exec_cache", {})),
                      self.policy.__dict__.get("_mlp_pack"))
        self._key, self._env = fastpath.cache_key(self.policy), fastpath._env()

    def _body(self, plan: fastpath.Plan | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The computation on the static buffers, free of host synchronisation: (actions
        [B, N, D] or [B, N] int64, health: a float32 scalar, finite when the observations are
        and every mask row has an available action)."""
        net, obs, avail, z = self.policy, self.obs_buffer, self.avail_buffer, self.noise_buffer
        if self._lean:  # act's one-step plan (fastpath.one_step) without its buffers and check
            actions = fastpath.step_math(
                plan.steps[self.token], list(net.weights._parameters.values()),
                list(net.biases._parameters.values()), net.activation, net.discrete, obs, z,
                avail, self.test_guidance)[0]
        else:
            actions = sampling._sample(net, plan is not None, obs, avail, self._cond,
                                       self.test_guidance, self.n_steps, self.sampler, z)
        health = obs.sum(dtype=torch.float32)
        if avail is not None:
            health = health + torch.where(avail.any(-1).all(), 0.0, math.inf)
        return actions, health

    def _build(self, plan: fastpath.Plan | None) -> None:
        """Eager: one run allocates the static outputs; every call reruns the body into them."""
        self._out, self._health = self._body(plan)

        def run() -> None:
            with torch.no_grad():
                actions, health = self._body(plan)
                self._out.copy_(actions)
                self._health.copy_(health)

        self._run = run

    # ------------------------------------------------------------------ acting
    def _check_input(self, name: str, x: object, buf: torch.Tensor) -> None:
        """The full check of an input that failed the O(1) test (names what is wrong)."""
        if isinstance(x, torch.Tensor) and x.dim() == buf.dim() and x.shape[0] != buf.shape[0]:
            raise ValueError(f"{name}: expected batch size {buf.shape[0]} (the size this actor "
                             f"was captured at; build another for a different batch size), "
                             f"found {x.shape[0]}")
        check_tensor(name, x, shape=tuple(buf.shape), dtypes=(buf.dtype,), device=buf.device)

    def _copy_in(self, name: str, x: object, buf: torch.Tensor) -> None:
        if x is buf:  # the caller wrote into the buffer itself
            return
        if (type(x) is not torch.Tensor or x.shape != buf.shape or x.dtype is not buf.dtype
                or x.device != buf.device):
            self._check_input(name, x, buf)
        buf.copy_(x)

    def __call__(self, obs: torch.Tensor, avail_actions: torch.Tensor | None = None, *,
                 noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Actions for ``obs`` [B, N, obs_dim] (``avail_actions`` [B, N, K] bool, discrete
        only; None: all available), from ``noise`` [B, N, D] or drawn from ``generator``.
        Returns the static output, [B, N, D] in the bounds or [B, N] int64 ids, which the next
        call overwrites."""
        if fastpath.cache_key(self.policy) != self._key or fastpath._env() != self._env:
            self.capture()  # the weights (or the backend) changed since the capture
        self._copy_in("obs", obs, self.obs_buffer)
        if self.avail_buffer is None:
            if avail_actions is not None:
                raise ValueError("avail_actions: expected None for continuous actions, found a "
                                 "mask")
        elif avail_actions is None:
            if not self._all_avail:
                self.avail_buffer.fill_(True)
                self._all_avail = True
        else:
            self._copy_in("avail_actions", avail_actions, self.avail_buffer)
            self._all_avail = False
        if noise is not None:
            self._copy_in("noise", noise, self.noise_buffer)
        elif generator is None:
            self.noise_buffer.normal_()
        else:
            if not isinstance(generator, torch.Generator) or not _on(generator.device,
                                                                     self.device):
                found = (f"one on {generator.device}" if isinstance(generator, torch.Generator)
                         else type(generator).__name__)
                raise ValueError(f"generator: expected a torch.Generator on {self.device}, "
                                 f"found {found}")
            self.noise_buffer.normal_(generator=generator)
        self._run()
        if self.validate and not math.isfinite(float(self._health)):
            sampling.check_finite_obs(self.obs_buffer)  # name the entry / the row
            if self.avail_buffer is not None:
                check_avail(self.avail_buffer)
        return self._out


class CUDAGraphActor(StaticActor):
    """One-step acting at a fixed batch size as a captured CUDA graph (module docstring):
    ``CUDAGraphActor(policy, batch_size, test_guidance=1.0, cond=None, n_steps=1,
    sampler="meanflow", validate=True)``, then ``actor(obs, avail_actions=None, noise=None,
    generator=None)``. The policy must be on a CUDA device. The graph and its memory pool live
    as long as the actor."""

    def _check_device(self) -> None:
        if self.device.type != "cuda":
            why = ("" if torch.cuda.is_available() else
                   "; this machine has no CUDA device: act with policy.act, or the exported "
                   "program (policy.export)")
            raise ValueError(f"policy: CUDA graphs need a CUDA device; expected a policy on "
                             f"cuda (policy.to('cuda')), found one on {self.device}{why}")

    def _build(self, plan: fastpath.Plan | None) -> None:
        """Warm up on a side stream (Triton compiles, the folds and the one-launch pack are
        cached, so that the capture records kernels only), then capture the body once."""
        self._graph = None  # free the previous graph's pool before the new capture
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self._body(plan)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._out, self._health = self._body(plan)
        self._graph = graph
        self._run = graph.replay
