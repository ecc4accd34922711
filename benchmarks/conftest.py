"""Benchmark-suite setup: record what the numbers depend on in pytest-benchmark's JSON.

``machine_info`` gains the torch version and build, the intra-op thread count, the CPU model,
the load average at the start (the dev machines are shared) and the timer, which
``benchmarks/report.py`` prints at the top of ``REPORT.md``.
"""

from __future__ import annotations

import os
import platform

import pytest
import torch


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    machine_info["vgm2p"] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timer": str(config.getoption("benchmark_timer", "")),
    }


@pytest.fixture
def smoke_one_thread(benchmark):
    """One intra-op thread in the CI smoke (``--benchmark-disable``): each case runs once on
    small shapes, where a second thread only waits for the shared cores (a batch-16 training
    step took 1.4-2.4 s on 2 threads under load, ~0.05 s on one). Restored afterwards."""
    threads = torch.get_num_threads()
    if benchmark.disabled:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
