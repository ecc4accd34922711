"""Triton kernels, installed as ``vgm2p_fast.kernels``. Imported lazily by the ops' ``triton``
backend only: importing ``vgm2p_fast`` never imports this package, and nothing outside it
imports triton (torch's own ``torch.compiler`` may, when triton is installed).

Modules (one op name across kernels/, ops/, tests/, benchmarks/):

- ``linear_jvp``: fused layer primal + tangent, and the primal's backward (dx, dW, db).
- ``meanflow_target_loss``: MeanFlow target, adaptive row loss and dloss/du in one pass.
- ``cfg_sample``: guided sampling step + clip/rescale or masked argmax.
- ``mlp_cfg_sample``: the whole policy MLP and that step in one launch, for small batches.
- ``aot``: ``python -m vgm2p_fast.kernels.aot``, the compile-for-sm_80/sm_90 and spill report.

Each module docstring gives the bytes, FLOPs and the H100 roofline estimate of its kernels.
The kernels import nothing of the package but ``vgm2p_fast._checks`` (the error they raise);
the dispatcher (``vgm2p_fast.backends``) imports them by name, never the other way round.
Forward-mode AD: ``linear_jvp`` and ``meanflow_target_loss`` have a ``jvp`` rule, the sampling
ops raise on a tangent (``_common.forward_ad_active``), nothing returns silent zeros.
"""
