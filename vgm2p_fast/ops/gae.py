"""``gae``: batched generalised advantage estimation and lambda-returns (DESIGN 1.1).

    delta_t = r_t + gamma (1 - terminal_t) V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma lam (1 - done_t) A_{t+1}          (A_T = 0)
    G_t     = A_t + V(s_t)                                      (the TD(lambda) return)

``done`` (terminal or truncation) cuts the trace; ``terminal`` also removes the bootstrap, so a
truncated step still bootstraps from ``next_value``. Same semantics as TorchRL's
``generalized_advantage_estimate``. Time is the last dimension; any leading dims are independent
sequences. A flat dataset (episodes back to back, boundaries marked by ``done``) is one
``(T_total,)`` sequence: the cut at each ``done`` keeps episodes independent without padding.

Masks count as set where they are non-zero, and act by selection rather than by multiplying with
``1 - mask``: a NaN/inf in one episode (a garbage ``next_value`` after a terminal, say) never
reaches another episode, since ``0 * nan`` would be ``nan``.
"""

from __future__ import annotations

import torch

from .._checks import check_same_shape, check_tensor
from ..backends import extension_status, implementation

IMPLEMENTED = ("torch", "ext")
_VALUE_DTYPES = (torch.float32, torch.float64)
_MASK_DTYPES = (torch.bool, torch.uint8, torch.float32, torch.float64)
# Steps the reference scans with a Python loop inside each chunk; the chunk heads form the same
# recurrence with coefficient (gamma lam)^32, solved recursively. For T = 1000 that is 32 + 32
# vectorised steps instead of 1000; for a flat 4M-step dataset 32 per level, 5 levels.
_CHUNK = 32


def _scan(a: torch.Tensor, link: torch.Tensor, c: float) -> torch.Tensor:
    """``x_t = a_t + c x_{t+1}`` where ``link_t``, else ``x_t = a_t`` (``x_T = 0``), over the last
    dim. a: (..., T) float; link: (..., T) bool. Chunked: a loop over the ``_CHUNK`` steps of
    every chunk at once, then the chunk heads by recursion, then one fix-up of the chunks' tails.
    """
    T = a.shape[-1]
    n = -(-T // _CHUNK)
    pad = n * _CHUNK - T

    def step_major(y: torch.Tensor, fill: float | bool) -> torch.Tensor:
        # (..., T) -> (_CHUNK, ..., n): the loop below then reads and writes contiguous slices
        # (strided slices made it ~5x slower at (4096, 1000)).
        y = torch.nn.functional.pad(y, (0, pad), value=fill).unflatten(-1, (n, _CHUNK))
        return y.movedim(-1, 0).contiguous()

    a, link = step_major(a, 0.0), step_major(link, False)
    x = torch.empty_like(a)
    # reach[t]: no cut from step t to the chunk's end, so the next chunk's head enters x_t with
    # weight c^(_CHUNK - t).
    reach = torch.empty_like(link)
    x[-1], reach[-1] = a[-1], link[-1]
    for t in range(_CHUNK - 2, -1, -1):
        x[t] = torch.where(link[t], a[t] + c * x[t + 1], a[t])
        reach[t] = reach[t + 1] & link[t]
    if n > 1:
        heads = _scan(x[0], reach[0], c**_CHUNK)
        nxt = torch.nn.functional.pad(heads[..., 1:], (0, 1))
        steps = torch.arange(_CHUNK, 0, -1, dtype=a.dtype, device=a.device)
        weight = (c**steps).view(_CHUNK, *([1] * nxt.dim()))
        x = torch.where(reach, x + weight * nxt, x)
    return x.movedim(0, -1).flatten(-2)[..., :T].contiguous()


def gae_ref(
    reward: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    done: torch.Tensor,
    terminal: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch reference, vectorised over the leading dims and over T (chunked scan, see
    :func:`_scan`); same contract as :func:`gae`, without the checks."""
    delta = torch.where(terminal != 0, reward, reward + gamma * next_value) - value
    adv = _scan(delta, done == 0, gamma * lam)
    return adv, adv + value


def gae(
    reward: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    done: torch.Tensor,
    terminal: torch.Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and lambda-returns for sequences with time last.

    Args:
        reward, value, next_value: (..., T) float32 or float64, same dtype; any strides
            (the extension copies non-contiguous inputs once).
        done: (..., T) bool/uint8/float32/float64; non-zero where the trace is cut (terminal or
            truncation).
        terminal: (..., T) bool/uint8/float32/float64; non-zero where the episode ended without
            bootstrap.
        gamma: discount in [0, 1]; lam: GAE lambda in [0, 1].
        backend: ``auto`` (default: the extension when built), ``torch`` or ``ext``.
            Traces under ``torch.compile(fullgraph=True)``.

    Returns:
        ``advantage`` (..., T) and ``lambda_return = advantage + value`` (..., T), both new
        contiguous tensors of the value dtype; no autograd (they are regression targets).
    """
    names = ("reward", "value", "next_value", "done", "terminal")
    tensors = (reward, value, next_value, done, terminal)
    check_tensor("reward", reward, min_ndim=1, dtypes=_VALUE_DTYPES)
    for name, x in zip(names[1:3], tensors[1:3]):
        check_tensor(name, x, dtypes=(reward.dtype,), device=reward.device)
    for name, x in zip(names[3:], tensors[3:]):
        check_tensor(name, x, dtypes=_MASK_DTYPES, device=reward.device)
    check_same_shape(names, tensors)
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam: expected values in [0, 1], found {gamma}, {lam}")
    fn = implementation("gae", IMPLEMENTED, reward.device, backend, gae_ref)
    with torch.no_grad():
        return fn(reward, value, next_value, done, terminal, float(gamma), float(lam))


if extension_status().ok:
    # Shapes for tracing (torch.compile, opcheck): two new contiguous tensors like reward.
    @torch.library.register_fake("vgm2p_fast::gae")
    def _gae_fake(reward, value, next_value, done, terminal, gamma, lam):
        out = torch.empty_like(reward, memory_format=torch.contiguous_format)
        return out, torch.empty_like(out)
