"""Build script: the pure-Python package always installs; the C++/CUDA extension ``vgm2p_fast._C``
is added when torch is importable at build time (install with ``--no-build-isolation``).

Environment switches:
  VGM2P_BUILD_EXT=0      never build the extension (pure-Python install, torch references)
  VGM2P_BUILD_EXT=1      the extension is required: a build failure fails the install
  (unset)                build it if torch is importable; on failure warn and install without it
  VGM2P_BUILD_CUDA=0     skip the CUDA sources even when torch has CUDA and nvcc is found
"""

import glob
import os
import sys

from setuptools import find_packages, setup

MODE = os.environ.get("VGM2P_BUILD_EXT", "auto")
if MODE not in ("0", "1", "auto"):
    sys.exit(f"VGM2P_BUILD_EXT must be 0, 1 or unset, found {MODE!r}")

packages = find_packages(include=["vgm2p_fast", "vgm2p_fast.*"])
ext_modules: list = []
cmdclass: dict = {}


def _torch_extension():
    """Return (ext_modules, cmdclass) for vgm2p_fast._C, or raise ImportError without torch."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp"))
    if not sources:
        return [], {}
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    use_cuda = (
        bool(cuda_sources)
        and torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("VGM2P_BUILD_CUDA", "1") != "0"
    )
    # No -std flag: BuildExtension adds the standard torch's headers need (C++20 since torch
    # 2.13; an explicit -std=c++17 placed after it breaks nvcc on torch 2.14's intrusive_ptr.h).
    cxx = ["-O3"]
    link: list[str] = []
    if sys.platform.startswith("linux") and torch._C.has_openmp:
        # at::parallel_for is an inline template over `#pragma omp parallel` in torch's OpenMP
        # builds (torch.__config__.parallel_info()): without -fopenmp it silently runs serially.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if use_cuda:
        ext = CUDAExtension(
            "vgm2p_fast._C",
            sources + cuda_sources,
            define_macros=[("VGM2P_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=link,
        )
    else:
        ext = CppExtension("vgm2p_fast._C", sources, extra_compile_args={"cxx": cxx},
                           extra_link_args=link)

    class OptionalBuildExtension(BuildExtension):
        """In auto mode a failed build leaves a working pure-Python install (torch references)."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # compiler missing, headers missing, ...
                if MODE == "1":
                    raise
                print(
                    f"WARNING: vgm2p_fast._C was not built ({exc}); the package will use its "
                    "torch references. Set VGM2P_BUILD_EXT=1 to make this an error.",
                    file=sys.stderr,
                )

    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


if MODE != "0":
    try:
        ext_modules, cmdclass = _torch_extension()
    except ImportError:
        if MODE == "1":
            sys.exit(
                "VGM2P_BUILD_EXT=1 but torch is not importable at build time: install torch first "
                "and use `pip install --no-build-isolation -e .`"
            )
        print("torch not importable at build time: installing without vgm2p_fast._C",
              file=sys.stderr)

setup(
    packages=packages,
    package_data={"vgm2p_fast": ["data/*.h5"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
