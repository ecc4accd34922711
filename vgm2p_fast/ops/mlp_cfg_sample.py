"""``mlp_cfg_sample``: one-step sampling of a MeanFlow policy, the whole MLP and the
``cfg_sample`` step as one op (DESIGN 1.2, execution).

    h_0 = x      h_{l+1} = act(h_l W_l^T + b_l)  (l < L - 1)      u = h_{L-1} W_{L-1}^T + b_{L-1}
    u_c = u[rows 0..M)      u_null = u[rows M..2M)  (guided: the null-token rows follow)
    actions = cfg_sample(z, u_c, u_null, guidance, step, low, high, avail, discrete)

``x`` is the first layer's input the policy builds at ``t = 1, r = 0`` (noise, time embeddings,
observation, agent id, condition). The ``triton`` backend runs it all in ONE launch
(``kernels/mlp_cfg_sample.py``): for decentralised execution (a few rows per agent group,
:func:`mlp_fits`) that replaces ~2 launches per layer + ~5 for the step; the ``torch`` backend
is the layer-by-layer reference (:func:`mlp_cfg_sample_ref`: ``linear_jvp_ref`` per layer, then
``cfg_sample_ref``).

The layers are passed packed (:func:`pack_mlp`, built once and reused while the weights do not
change): packing per call would cost one copy per layer, more than the launch it saves.

Layouts: shared weights ``x (R, in)``, ``z (M, D)``; per-agent weights ``x (G, R, in)``,
``z (G, M, D)``; ``R = 2 M`` when ``guided`` (conditional rows first, then the null rows), else
``M``. ``avail`` has the layout of ``z``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .._checks import FLOAT_DTYPES, check_tensor
from ..backends import implementation
from .cfg_sample import cfg_sample_ref, check_decoding
from .linear_jvp import ACTIVATIONS, linear_jvp_ref

IMPLEMENTED = ("torch", "triton")
# Rows per agent group up to which the one launch beats the layer-by-layer kernels: each
# program streams all weights through one SM (~10-20 us for 4 x 256 bf16 hidden layers, see
# kernels/mlp_cfg_sample.py), which only launch-bound batches hide. An estimate until a GPU run
# measures it (benchmarks/bench_mlp_cfg_sample.py, scripts/gpu_check.sh).
MLP_MAX_ROWS = 64


class MLPPack(NamedTuple):
    """A policy's ``L`` layers packed for :func:`mlp_cfg_sample`: ``weight (G, L, out_max,
    in_max)`` and ``bias (G, L, out_max)``, zero padded (G = 1 for shared weights), and ``dims``
    int32 ``[in_0, out_0 = in_1, ..., out_{L-1}]`` on the weights' device."""

    weight: torch.Tensor
    bias: torch.Tensor
    dims: torch.Tensor
    sizes: tuple[int, ...]  # ``dims`` on the host (no device sync to read it)


def pack_mlp(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> MLPPack:
    """Pack ``L`` layers given as the policy holds them: ``weights[l]`` (out, in) shared or
    (G, out, in) per agent, ``biases[l]`` (out,) or (G, out). No autograd (sampling only)."""
    w0 = weights[0]
    grouped = w0.dim() == 3
    g = w0.shape[0] if grouped else 1
    dims = [w0.shape[-1]] + [w.shape[-2] for w in weights]
    out_max = max(w.shape[-2] for w in weights)
    in_max = max(w.shape[-1] for w in weights)
    wp = torch.zeros(g, len(weights), out_max, in_max, dtype=w0.dtype, device=w0.device)
    bp = torch.zeros(g, len(weights), out_max, dtype=w0.dtype, device=w0.device)
    with torch.no_grad():
        for i, (w, b) in enumerate(zip(weights, biases)):
            wp[:, i, : w.shape[-2], : w.shape[-1]] = w if grouped else w.unsqueeze(0)
            bp[:, i, : b.shape[-1]] = b if grouped else b.unsqueeze(0)
    return MLPPack(wp, bp, torch.tensor(dims, dtype=torch.int32, device=w0.device), tuple(dims))


def mlp_fits(rows_per_group: int, pack: MLPPack) -> bool:
    """Whether the triton one-launch path is the one to take for ``rows_per_group`` rows: at
    most :data:`MLP_MAX_ROWS`, and within the kernel's limits (layers at most
    ``MLP_MAX_WIDTH`` = 1024 wide, at most ``MLP_DP`` = 64 action dims, 16/32-bit weights).
    For the triton backend only: it reads the limits from the kernel module (imports triton).
    """
    from ..kernels import mlp_cfg_sample as kernel

    return (rows_per_group <= MLP_MAX_ROWS
            and max(pack.weight.shape[-2:]) <= kernel.MLP_MAX_WIDTH
            and pack.sizes[-1] <= kernel.MLP_DP and pack.weight.dtype in kernel.MLP_DTYPES)


def mlp_cfg_sample_ref(
    x: torch.Tensor,
    pack: MLPPack,
    z: torch.Tensor,
    activation: str = "silu",
    guided: bool = False,
    guidance: float = 1.0,
    step: float = 1.0,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
    avail: torch.Tensor | None = None,
    discrete: bool = False,
) -> torch.Tensor:
    """Pure-torch reference, layer by layer; same contract as :func:`mlp_cfg_sample`."""
    shared = x.dim() == 2
    n_layers = len(pack.sizes) - 1
    h = x
    for i in range(n_layers):
        k, n = pack.sizes[i], pack.sizes[i + 1]
        w, b = pack.weight[:, i, :n, :k], pack.bias[:, i, :n]
        if shared:
            w, b = w[0], b[0]
        h, _ = linear_jvp_ref(h, w, b, None, activation if i < n_layers - 1 else "identity")
    u_c, u_null = h.chunk(2, dim=-2) if guided else (h, None)
    return cfg_sample_ref(z, u_c, u_null, guidance, step, low, high, avail, discrete)


def mlp_cfg_sample(
    x: torch.Tensor,
    pack: MLPPack,
    z: torch.Tensor,
    activation: str = "silu",
    *,
    guided: bool = False,
    guidance: float = 1.0,
    step: float = 1.0,
    low: torch.Tensor | None = None,
    high: torch.Tensor | None = None,
    avail: torch.Tensor | None = None,
    discrete: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Actions of a MeanFlow policy in one op: the MLP on ``x``, then the guided step.

    Args:
        x: the first layer's input, (R, in_0) for shared weights or (G, R, in_0) per agent;
            ``R = 2 M`` when ``guided`` (the M conditional rows, then the M null-token rows).
        pack: :func:`pack_mlp` of the layers (G = 1 for shared weights), the dtype of ``x``.
        z: (M, D) / (G, M, D) noise (one-step sampling: ``e ~ N(0, I)``), D = the last layer's
            output width.
        activation: of every layer but the last: ``silu``, ``relu``, ``gelu_tanh``, ``identity``.
        guided: ``x`` holds the null rows too, and ``u = u_null + guidance (u_c - u_null)``.
        guidance, step, low, high, avail, discrete: as :func:`vgm2p_fast.ops.cfg_sample`
            (``avail`` in the layout of ``z``, ``low``/``high`` (D,)).
        backend: ``auto`` (default), ``torch`` or ``triton``. The triton kernel takes at most
            64 action dims, layers at most 1024 wide and no float64 (``ValueError`` beyond:
            check :func:`mlp_fits` first).

    Returns:
        continuous: (M, D) / (G, M, D) actions in [low, high] (``z.dtype``); discrete:
        (M,) / (G, M) int64 action ids. The triton backend has no derivative (a gradient or a
        forward-mode tangent reaching it raises ``BackendUnavailableError``).
    """
    if not isinstance(pack, MLPPack):
        raise ValueError(f"pack: expected an MLPPack (ops.pack_mlp), found {type(pack).__name__}")
    check_tensor("pack.weight", pack.weight, ndim=4, dtypes=FLOAT_DTYPES)
    groups, n_layers, out_max = pack.weight.shape[:3]
    dtype, dev = pack.weight.dtype, pack.weight.device
    check_tensor("pack.bias", pack.bias, shape=(groups, n_layers, out_max), dtypes=(dtype,),
                 device=dev)
    check_tensor("pack.dims", pack.dims, shape=(n_layers + 1,), dtypes=(torch.int32,),
                 device=dev)
    if len(pack.sizes) != n_layers + 1:
        raise ValueError(f"pack.sizes: expected {n_layers + 1} sizes, found {pack.sizes}")
    check_tensor("x", x, ndim=(2, 3) if groups == 1 else 3, dtypes=(dtype,), device=dev)
    lead = (groups,) if x.dim() == 3 else ()
    check_tensor("x", x, shape=(*lead, None, pack.sizes[0]))
    rows = x.shape[-2]
    if guided and rows % 2:
        raise ValueError(f"x: expected an even number of rows when guided (conditional rows, "
                         f"then null rows), found {rows}")
    check_tensor("z", z, shape=(*lead, rows // 2 if guided else rows, pack.sizes[-1]),
                 dtypes=(dtype,), device=dev)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, found {activation!r}")
    check_decoding(z, low, high, avail, discrete)
    fn = implementation("mlp_cfg_sample", IMPLEMENTED, dev, backend, mlp_cfg_sample_ref)
    return fn(x, pack, z, activation, guided, guidance, step, low, high, avail, discrete)
