"""vgm2p_fast: VGM²P (value-guided multi-agent MeanFlow policies) for offline MARL, with fused
kernels. Imports on a CPU-only machine without triton or the compiled extension."""

from . import ops
from .backends import BackendUnavailableError
from .policy import MeanFlowPolicy

__version__ = "0.1.0"
__all__ = ["BackendUnavailableError", "MeanFlowPolicy", "__version__", "ops"]
