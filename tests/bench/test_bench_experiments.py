"""``bench/bench_experiments.py`` on a tiny workload: it runs to its end and reports every
figure, the sweep's results agreeing between 1 and 2 workers. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_experiments.py"


def test_bench_experiments_reports_every_figure() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--events", "2000", "--rounds", "1",
                           "--sweep-events", "2000", "--live", "200", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    figures = json.loads(done.stdout)
    t, s, m = figures["throughput"], figures["sweep"], figures["memory"]
    assert t["engine_events_per_s"] > 0 and t["model_pairs_per_s"] > 0
    assert t["simpy_loop_events_per_s"] > 0 and t["heap_loop_events_per_s"] > 0
    assert s["points"] == 8 and s["same_results"] is True
    assert t["ratio_cpu"] > 0 and t["system_calls_events_per_cpu_s"] > 0
    assert s["workers_used"] == 2 and len(s["worker_busy_cpu_s"]) == 2
    assert s["cpu_speedup"] > 0 and s["two_workers_cpu_s"] > s["two_workers_client_cpu_s"]
    assert m["live"] == 200 and m["engine_mb"] > 0 and m["model_mb"] > 0
