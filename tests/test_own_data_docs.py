"""docs/own-data.md cannot rot: its Python examples run as written (each in a fresh process,
in an empty folder) and do what the page says; its list of resumable options is
``vgm2p_fast.train.RESUMABLE``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vgm2p_fast.train import RESUMABLE

PAGE = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_both_examples():
    assert len(BLOCKS) == 2
    assert "register_family" not in BLOCKS[0] and "register_family" in BLOCKS[1]


@pytest.mark.parametrize("index, run", [(0, "arm"), (1, "reach")])
def test_example_runs_as_written(tmp_path, index, run):
    script = tmp_path / "example.py"
    script.write_text(BLOCKS[index])
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / run / "summary.json").read_text())
    if run == "arm":  # a custom env string: trained, evaluation skipped and why
        assert summary["eval_return_mean"] is None
        assert "no environment family 'my-lab'" in summary["eval_skipped"]
        assert "evaluation skipped" in res.stdout
    else:  # a registered family: evaluated during training, and from the saved policy
        assert summary["eval_return_mean"] is not None and len(summary["eval_curve"]) == 5
        assert summary["env"] == "reach/2" and "eval return" in res.stdout


def test_the_resumable_options_listed_are_the_codes():
    section = PAGE.read_text().split("## Resume", 1)[1].split("##", 1)[0]
    listed = re.search(r"\n\n(`\w+`(?:,\s+`\w+`)*)\n\n", section).group(1)
    assert tuple(re.findall(r"`(\w+)`", listed)) == RESUMABLE
