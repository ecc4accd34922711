"""Public ops. Each has a pure-torch ``<op>_ref`` beside it (the oracle for tests) and picks a
backend per call (see ``vgm2p_fast.backends``)."""

from collections.abc import Callable

import torch

from ..backends import implementation, resolve
from . import cfg_sample as _cfg_sample
from . import gae as _gae
from . import linear_jvp as _linear_jvp
from . import meanflow_target_loss as _meanflow_target_loss
from . import mlp_cfg_sample as _mlp_cfg_sample
from .cfg_sample import cfg_sample, cfg_sample_ref
from .gae import gae, gae_ref
from .linear_jvp import linear_jvp, linear_jvp_ref
from .meanflow_target_loss import meanflow_target_loss, meanflow_target_loss_ref
from .mlp_cfg_sample import MLPPack, mlp_cfg_sample, mlp_cfg_sample_ref, mlp_fits, pack_mlp

_MODULES = {m.__name__.rsplit(".", 1)[1]: m
            for m in (_linear_jvp, _meanflow_target_loss, _cfg_sample, _mlp_cfg_sample, _gae)}
# op name -> backends it implements (vgm2p info prints what auto picks from these)
REGISTRY = {name: m.IMPLEMENTED for name, m in _MODULES.items()}


def unchecked(op: str, device: torch.device, backend: str | None = None) -> Callable:
    """The unchecked function that runs ``op`` on ``device`` with the resolved backend (its
    ``<op>_ref``'s arguments, no validation): for callers that validate once and call many
    times, e.g. the policy's ~6 layers per forward, where the public op's checks would cost
    more than a small layer itself."""
    mod = _MODULES[op]
    return implementation(op, mod.IMPLEMENTED, device, backend, getattr(mod, f"{op}_ref"))


def resolved_backend(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend name ``op`` resolves to on ``device`` (``backend`` None/"auto": automatic)."""
    return resolve(op, _MODULES[op].IMPLEMENTED, device, backend)


__all__ = [
    "REGISTRY",
    "MLPPack",
    "cfg_sample",
    "cfg_sample_ref",
    "gae",
    "gae_ref",
    "linear_jvp",
    "linear_jvp_ref",
    "meanflow_target_loss",
    "meanflow_target_loss_ref",
    "mlp_cfg_sample",
    "mlp_cfg_sample_ref",
    "mlp_fits",
    "pack_mlp",
    "resolved_backend",
    "unchecked",
]
