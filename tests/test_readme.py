"""The README's own-data example runs as written: its Python block writes a dataset for an
environment the library does not know, and its ``vgm2p train`` line trains on it without
evaluation, saying why; it shows one convert command per format."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = README.read_text().split("## Your own data", 1)[1].split("\n## ", 1)[0]


def test_own_data_example_runs_as_written(tmp_path: Path) -> None:
    (python,) = re.findall(r"```python\n(.*?)```", SECTION, re.S)
    bash = next(b for b in re.findall(r"```bash\n(.*?)```", SECTION, re.S)
                if "vgm2p train" in b)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "example.py").write_text(python)
    res = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in bash.splitlines() if ln.startswith("vgm2p train"))
    args = shlex.split(line.split("#", 1)[0])[1:]
    res = subprocess.run([sys.executable, "-m", "vgm2p_fast.cli", *args, "--quiet"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "evaluation skipped: no environment family 'my-lab' is registered" in res.stderr
    summary = json.loads((tmp_path / "runs" / "arm" / "summary.json").read_text())
    assert summary["eval_return_mean"] is None and "'my-lab'" in summary["eval_skipped"]

    from vgm2p_fast.policy import load_policy

    policy = load_policy(str(tmp_path / "runs" / "arm" / "policy.pt"))
    obs = torch.randn(64, 3, 6)
    act = policy.act(obs)
    low = torch.tensor([[-1, -1], [-2, -2], [0, 0]], dtype=act.dtype)
    high = torch.tensor([[1, 1], [2, 2], [5, 5]], dtype=act.dtype)
    assert act.shape == (64, 3, 2) and ((act >= low) & (act <= high)).all()
    assert (act[:, 2] > 1).any()       # the third agent's own range, not [-1, 1]


def test_one_convert_command_per_format() -> None:
    from vgm2p_fast.convert import FORMATS

    blocks = re.findall(r"```bash\n(.*?)```", SECTION, re.S)
    for fmt in FORMATS:
        assert f"(`--format {fmt}`)" in SECTION, fmt
    assert sum(b.startswith("vgm2p data convert ") for b in blocks) == len(FORMATS)
