"""The MeanFlow policy: network, losses, sampling, execution fast path and configs.

``MeanFlowPolicy`` (``meanflow.py``) is the public class; the modules beside it hold one concern
each (see ``docs/design.md``, section 1.2).
"""

import os

import torch

from . import mlp
from .config import JVP_MODES, LossConfig, PolicyConfig
from .cuda_graph import CUDAGraphActor
from .meanflow import SAVE_FORMAT, MeanFlowPolicy, read_policy_file
from .mlp import MLPPolicy
from .sampling import SAMPLERS


def load_policy(path: str | os.PathLike, map_location: str | torch.device | None = None
                ) -> MeanFlowPolicy | MLPPolicy:
    """The policy a file holds, by its format: a :class:`MeanFlowPolicy` or, for the MLP
    behaviour-cloning baseline, an :class:`MLPPolicy`."""
    blob = read_policy_file(path, map_location)
    if blob["format"] == mlp.SAVE_FORMAT:
        return MLPPolicy.from_blob(blob, path)
    if blob["format"] != SAVE_FORMAT:
        raise ValueError(f"{path}: expected a vgm2p_fast policy file, found format "
                         f"{blob['format']!r}")
    return MeanFlowPolicy.from_blob(blob)


__all__ = ["JVP_MODES", "SAMPLERS", "CUDAGraphActor", "LossConfig", "MLPPolicy",
           "MeanFlowPolicy", "PolicyConfig", "load_policy"]
