#!/usr/bin/env python3
"""Benchmark of ``ioasidctl``: what one ``top`` refresh costs as the hierarchy grows, and how
fast a verb starts.

1. ``top``: one iteration is one control request (``top``, every cgroup) and its rendering
   (``render.format_top``), as ``ioasidctl top -b`` makes it, in a client process of its own,
   against a control server in this process serving a ``System`` of 100 cgroups and one of
   10,000 (a square of parents and children, a process in each child). The rounds alternate
   the two sizes; the figure is the median over rounds of (CPU time of an iteration at
   10,000) / (CPU time of an iteration at 100), client's and server's together. Target: at
   most 100 (the cost grows with the hierarchy, not with round trips); the requests the
   server answered are counted, one per iteration.
   Elapsed time is reported beside it, with the involuntary context switches of an
   iteration (client and server): on a machine whose cores are busy with other work, an
   iteration that needs ~15 ms of CPU is preempted again and again and waits for the other
   runnable tasks (other sessions' autogroups get their share whatever our nice value), while
   one of ~0.3 ms runs to its end when it wakes up; so the elapsed ratio is the CPU ratio
   times that waiting, and moves with the machine's load. As root, the benchmark then runs
   the same rounds again under ``SCHED_FIFO`` (``--fifo``, the bench and its client ahead of
   every ordinary task, for about a second of CPU): there no iteration is preempted, and the
   elapsed ratio comes down to the CPU ratio.
2. start-up: ``ioasidctl status`` as a new process, answered by the same kind of server,
   against ``python -c 'import click'`` with the same interpreter, in alternating rounds; the
   figure is the median over rounds of their ratio of elapsed times (spawn to exit), with the
   ratio of the CPU times the processes used beside it (steadier on a busy machine). Both
   run as installed programs do, with their bytecode written at a first start
   (``PYTHONDONTWRITEBYTECODE`` is dropped). Target: at most 1.5 (``ioasidctl`` imports
   lazily what a verb needs).

The figures are ratios measured side by side in one run, so that a shared, noisy machine
affects both sides alike.

    bench_cli.py [--rounds 7] [--iterations 20] [--starts 10] [--no-fifo]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import structlog

from ioasidsd.clients import Peer
from ioasidsd.control import verbs
from ioasidsd.control.client import ControlClient
from ioasidsd.control.server import ControlServer
from ioasidsd.model import profile
from ioasidsd.system import System

BIN = Path(sys.executable).parent


class Service:
    """What the verbs read: the system and a fixed status."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.vtd = None
        self.refusals = None

    def service_status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": "bench", "uptime": 0.0, "mount": "/nonexistent",
                "tracking": {"mode": "poll", "detail": "none", "state": "ok", "reason": None,
                             "orphans": 0, "unplaced": "refuse"},
                "state": {"path": "/nonexistent", "synchronous": "normal", "error": None,
                          "unfolded": 0}}


def build(cgroups: int) -> System:
    """A system of ``cgroups`` cgroups: ``side`` parents, each with ``side - 1`` children
    holding one (made-up) process each, ``side`` = sqrt(cgroups)."""
    side = math.isqrt(cgroups)
    system = System(profile("fixed"))
    hierarchy = system.cgroups
    pid = 1000
    with system.lock:
        for p in range(side):
            parent = hierarchy.mkdir(hierarchy.root, f"p{p:04d}")
            for c in range(side - 1):
                child = hierarchy.mkdir(parent, f"c{c:04d}")
                hierarchy.track(pid, float(pid), child)
                pid += 1
    assert len(list(hierarchy.cgroups())) == side * side + 1
    return system


class Served:
    """A control server in this process over ``system``, counting its ``top`` requests."""

    def __init__(self, system: System, where: Path) -> None:
        self.requests = 0
        service = Service(system)

        def top(request: dict[str, Any], peer: Peer) -> Any:
            self.requests += 1
            return verbs.top(service, request, peer)

        handlers = {"top": top, "status": lambda r, p: verbs.status(service, r, p)}
        where.mkdir()
        self.path = where / "control.sock"
        self.server = ControlServer(self.path, handlers, structlog.get_logger())
        self.server.start()
        self.client = ControlClient(self.path)

    def stop(self) -> None:
        self.server.stop()


CLIENT = """
import resource, sys, time
from ioasidsd.cli.render import format_top
from ioasidsd.control.client import ControlClient
client = ControlClient(sys.argv[1])
for line in sys.stdin:
    n = int(line)
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    cpu = time.process_time()
    for _ in range(n):
        format_top(client.call("top", depth=1 << 16), order="path", header=False)
    cpu = time.process_time() - cpu
    switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches
    print(cpu / n, switches / n, flush=True)
"""
"""The client side of ``top``: a process of its own, as ``ioasidctl top`` is, which runs the
iterations it is told on stdin and answers the CPU time each took and the times it was
preempted."""


class Iteration(NamedTuple):
    """What one ``top`` iteration cost, client and server together."""

    cpu: float
    elapsed: float
    preempted: float


class Client:
    """A ``CLIENT`` process talking to ``served``."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(served.path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, n: int) -> Iteration:
        """What one of ``n`` iterations costs: CPU time, the client's and the server's (this
        process, whose other threads wait meanwhile); elapsed time; involuntary context
        switches (preemptions) of both."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        before = self.served.requests
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        server = time.process_time()
        start = time.perf_counter()
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        client, client_switches = map(float, self.proc.stdout.readline().split())
        elapsed = (time.perf_counter() - start) / n
        server = (time.process_time() - server) / n
        switches = (resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw - switches) / n
        assert self.served.requests - before == n, "one control request per iteration"
        return Iteration(client + server, elapsed, client_switches + switches)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def time_command(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Elapsed time from spawn to exit, and the CPU time the process used."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    errors = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {errors.decode().strip()}")
    return elapsed, usage.ru_utime + usage.ru_stime


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_top(rounds: int, iterations: int, tmp: Path) -> None:
    small = Served(build(100), tmp / "small")
    large = Served(build(10_000), tmp / "large")
    try:
        clients = Client(small), Client(large)
        for client in clients:  # warm up
            client.run(1)
        smalls, larges = [], []
        for _ in range(rounds):
            smalls.append(clients[0].run(iterations * 10))
            larges.append(clients[1].run(max(2, iterations // 4)))
        for client in clients:
            client.close()
    finally:
        small.stop()
        large.stop()
    policy = "SCHED_FIFO" if os.sched_getscheduler(0) == os.SCHED_FIFO else "ordinary"
    print(f"top, one iteration (one control request + rendering, client and server; "
          f"{policy} scheduling, load average {os.getloadavg()[0]:.1f}):")
    print("                     CPU       elapsed    preempted")
    for name, runs in (("100 cgroups", smalls), ("10,000 cgroups", larges)):
        print(f"  {name:15} {median([r.cpu for r in runs]) * 1e3:8.2f} ms "
              f"{median([r.elapsed for r in runs]) * 1e3:8.2f} ms "
              f"{median([r.preempted for r in runs]):8.1f}")
    for what, label in (("cpu", "10,000 / 100:"), ("elapsed", "elapsed:")):
        ratios = [getattr(big, what) / getattr(little, what)
                  for big, little in zip(larges, smalls, strict=True)]
        target = "CPU time; target <= 100" if what == "cpu" else "elapsed time"
        print(f"  {label:22} {median(ratios):7.1f}  ({target}; median of {rounds} rounds: "
              f"{', '.join(f'{r:.1f}' for r in ratios)})")


def bench_startup(rounds: int, starts: int, tmp: Path) -> None:
    served = Served(build(100), tmp / "status")
    try:
        # as installed: bytecode is written at the first start (the warm-up) and read at
        # every other, on both sides (click's was written when it was installed)
        env = dict(os.environ, IOASIDS_RUNTIME_DIR=str(served.path.parent))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        ctl = [str(BIN / "ioasidctl"), "status"]
        click = [sys.executable, "-c", "import click"]
        time_command(ctl, env)
        time_command(click, env)
        ctl_runs: list[list[tuple[float, float]]] = []
        click_runs: list[list[tuple[float, float]]] = []
        for _ in range(rounds):
            ctl_runs.append([time_command(ctl, env) for _ in range(starts)])
            click_runs.append([time_command(click, env) for _ in range(starts)])
    finally:
        served.stop()
    print("start-up, a new process to its exit:")
    print("                              elapsed        CPU")
    for name, runs in (("ioasidctl status:", ctl_runs), ("python -c 'import click':",
                                                         click_runs)):
        print(f"  {name:25} {median([t for r in runs for t, _ in r]) * 1e3:7.1f} ms "
              f"{median([c for r in runs for _, c in r]) * 1e3:7.1f} ms")
    for index, what in ((0, "elapsed"), (1, "CPU")):
        ratios = [median([run[index] for run in mine]) / median([run[index] for run in theirs])
                  for mine, theirs in zip(ctl_runs, click_runs, strict=True)]
        target = "; target <= 1.5" if what == "elapsed" else ""
        print(f"  {'ratio, ' + what + ':':25} {median(ratios):7.2f}  (median of {rounds} "
              f"rounds: {', '.join(f'{r:.2f}' for r in ratios)}{target})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=20,
                        help="N: top iterations per round, N/4 (at least 2) at 10,000 "
                             "cgroups, 10N at 100")
    parser.add_argument("--starts", type=int, default=10, help="process starts per round")
    parser.add_argument("--fifo", action="store_true",
                        help="only the top rounds, under SCHED_FIFO (needs root)")
    parser.add_argument("--no-fifo", action="store_true",
                        help="skip the SCHED_FIFO rounds that follow as root")
    args = parser.parse_args()

    if args.fifo:  # before any thread or process starts: they inherit the policy
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        bench_top(args.rounds, args.iterations, Path(tmp))
        if args.fifo:
            return
        bench_startup(args.rounds, args.starts, Path(tmp))
    if os.geteuid() == 0 and not args.no_fifo:
        sys.stdout.flush()
        subprocess.run([sys.executable, __file__, "--fifo", "--rounds", str(args.rounds),
                        "--iterations", str(args.iterations)], check=True)


if __name__ == "__main__":
    main()
