"""The MeanFlow policy: network, losses, sampling, execution fast path and configs.

``MeanFlowPolicy`` (``meanflow.py``) is the public class; the modules beside it hold one concern
each (see ``docs/design.md``, section 1.2).
"""

from .config import JVP_MODES, LossConfig, PolicyConfig
from .meanflow import MeanFlowPolicy
from .sampling import SAMPLERS

__all__ = ["JVP_MODES", "SAMPLERS", "LossConfig", "MeanFlowPolicy", "PolicyConfig"]
