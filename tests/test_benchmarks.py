"""The benchmarks in smoke mode: tiny sizes, so they keep running as the code changes.

They print figures; nothing here judges a timing, only that each script still works end to end
and prints its table.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if p.name != "benchlib.py")


def test_every_benchmark_script_is_covered():
    assert SCRIPTS == ["data_prep.py", "epoch_throughput.py", "grid.py", "hardware_efficiency.py", "run_overhead.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_smoke_mode_and_prints_a_table(script):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "\n| " in result.stdout and "| ---" in result.stdout, result.stdout[-2000:]
