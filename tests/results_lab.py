"""Shared by the results tests (``test_results_scripts.py``, ``test_results_docs.py``): the
folders, a results script run as a subprocess, and a markdown table parsed into cells."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """``python benchmarks/results/<script> args``, output captured."""
    return subprocess.run([sys.executable, str(RESULTS / script), *args], capture_output=True,
                          text=True, timeout=300)


def md_table(text: str, first: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the first markdown table whose header starts with ``| first |``."""
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(f"| {first} |"))
    cells = [[c.strip() for c in ln.strip().strip("|").split("|")]
             for ln in itertools.takewhile(lambda ln: ln.startswith("|"), lines[i:])]
    return cells[0], cells[2:]
