"""``bench/bench_cli.py`` runs to its end on a tiny workload and prints both ratios (no timing
is asserted: the bench itself checks one control request per ``top`` iteration)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_cli.py"


def test_bench_cli_runs_and_reports_both_ratios() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--rounds", "1", "--iterations", "2",
                           "--starts", "1"], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "10,000 / 100:" in done.stdout and "target <= 100" in done.stdout
    assert "ioasidctl status:" in done.stdout and "target <= 1.5" in done.stdout
    # elapsed time beside CPU time, and as root the rounds again where nothing preempts them
    assert "elapsed:" in done.stdout and "preempted" in done.stdout
    assert "ratio, CPU:" in done.stdout
    if os.geteuid() == 0:
        assert "SCHED_FIFO scheduling" in done.stdout
