"""Triton kernels, installed as ``vgm2p_fast.kernels``. Imported lazily by the ops' ``triton``
backend only: importing ``vgm2p_fast`` never imports this package or triton."""
