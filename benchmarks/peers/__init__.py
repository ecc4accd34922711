"""Peers of the one-step VGM²P actor, for ``benchmarks/bench_act.py``.

Each peer runs the network of a :class:`vgm2p_fast.MeanFlowPolicy` (same layers, widths,
activation, parameter layout and folded execution path), so only the sampling scheme differs:

- :class:`MLPActor`: a deterministic MLP actor ``a = tanh(MLP([o | id]))`` rescaled to the
  bounds, with the policy's hidden sizes: the floor (one forward, no noise, no time input).
- :class:`FlowPolicy`: a flow-matching policy sampled with ``n_steps = 10`` Euler steps of the
  instantaneous velocity (MAC-Flow's flow teacher before distillation).
- :class:`DDPMPolicy`: an epsilon-prediction DDPM with ``n_steps = 200`` ancestral steps and
  Diffuser's cosine schedule (MADiff / DoF configurations).
"""

from .policies import DDPMPolicy, FlowPolicy, MLPActor

__all__ = ["DDPMPolicy", "FlowPolicy", "MLPActor"]
