"""Shared test setup.

``TRITON_INTERPRET=1`` must be in the environment before triton is first imported, or the
Triton kernels cannot run on this project's CPU-only machines at all: set here, before any test
module imports triton (``import torch`` does not import it), and only without a CUDA device, so
that a GPU machine runs the same tests on the real kernels. It changes no other test's backend:
``auto`` never picks the interpreter on CPU (``vgm2p_fast.backends.resolve``); only tests that
force ``backend="triton"`` run it. ``TRITON_DEFAULT_FP_FUSION`` is pinned for the same reason the
kernels pin it (triton 3.9 warns that its default changes in 3.10).
"""

import os
from pathlib import Path

import pytest
import torch

# the shared helpers that assert (the *_lab modules) get pytest's detailed assertion messages
# too, as the tests that call them do; registered before their first import
pytest.register_assert_rewrite("bad_input_lab", "dataset_lab", "results_lab")

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


@pytest.fixture
def close_to_oracle():
    """``check(out, ref, oracle, what)``: ``out`` is within the error the torch reference ``ref``
    itself makes against a float64 ``oracle`` (times 2, plus 2 ulps of the output dtype at the
    oracle's scale): the low-precision tolerance is derived from the reference, not guessed."""

    def check(out: torch.Tensor, ref: torch.Tensor, oracle: torch.Tensor, what: str) -> None:
        oracle = oracle.double()
        ref_err = (ref.double() - oracle).abs().max().item() if ref.numel() else 0.0
        scale = oracle.abs().max().item() if oracle.numel() else 0.0
        tol = 2.0 * ref_err + 2.0 * torch.finfo(out.dtype).eps * max(scale, 1.0)
        err = (out.double() - oracle).abs().max().item() if out.numel() else 0.0
        assert err <= tol, f"{what}: error {err:.3g} > {tol:.3g} (the reference's: {ref_err:.3g})"

    return check


@pytest.fixture
def opcheck_utils() -> tuple[str, ...]:
    """``torch.library.opcheck`` checks for the Triton ops. ``test_aot_dispatch_dynamic`` traces
    the op's body (``wrap_triton``) through AOT autograd, which cannot trace the interpreter's
    ``InterpretedFunction``: it runs only where the kernels are real (CUDA)."""
    base = ("test_schema", "test_autograd_registration", "test_faketensor")
    return (*base, "test_aot_dispatch_dynamic") if torch.cuda.is_available() else base


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, Path]:
    """A valid small continuous and a valid small discrete dataset, per test module
    (``dataset_lab.write_valid``)."""
    from dataset_lab import write_valid

    return write_valid(tmp_path_factory.mktemp("valid"))


@pytest.fixture
def lab(tmp_path):
    """``bad_input_lab.Lab`` of the test's folder: its dataset, a finished run, a fresh --out."""
    from bad_input_lab import Lab

    return Lab(tmp_path)
