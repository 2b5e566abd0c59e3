#!/usr/bin/env python3
"""Benchmark of ``ioasidctl``: what one ``top`` refresh costs as the hierarchy grows, and how
fast a verb starts.

1. ``top``: one iteration is one control request (``top``, every cgroup) and its rendering
   (``render.format_top``), as ``ioasidctl top -b`` makes it, in a client process of its own,
   against a control server in this process serving a ``System`` of 100 cgroups and one of
   10,000 (a square of parents and children, a process in each child). The rounds alternate
   the two sizes; the figure is the median over rounds of (CPU time of an iteration at
   10,000) / (CPU time of an iteration at 100), client's and server's together: CPU time,
   because elapsed time on a busy machine counts the other work that interrupts a long
   iteration more often than a short one. Target: at most 100 (the cost grows with the
   hierarchy, not with round trips); the requests the server answered are counted, one per
   iteration.
2. start-up: ``ioasidctl status`` as a new process, answered by the same kind of server,
   against ``python -c 'import click'`` with the same interpreter, in alternating rounds; the
   figure is the median over rounds of their ratio. Both run as installed programs do, with
   their bytecode written at a first start (``PYTHONDONTWRITEBYTECODE`` is dropped). Target:
   at most 1.5 (``ioasidctl`` imports lazily what a verb needs).

The figures are ratios measured side by side in one run, so that a shared, noisy machine
affects both sides alike.

    bench_cli.py [--rounds 7] [--iterations 20] [--starts 10]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
import sys, time
from ioasidsd.cli.render import format_top
from ioasidsd.control.client import ControlClient
client = ControlClient(sys.argv[1])
for line in sys.stdin:
    n = int(line)
    cpu = time.process_time()
    for _ in range(n):
        format_top(client.call("top", depth=1 << 16), order="path", header=False)
    print((time.process_time() - cpu) / n, flush=True)
"""
"""The client side of ``top``: a process of its own, as ``ioasidctl top`` is, which runs the
iterations it is told on stdin and answers the CPU time each took."""


class Client:
    """A ``CLIENT`` process talking to ``served``."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(served.path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def cpu(self, n: int) -> float:
        """The CPU time one of ``n`` iterations takes: the client's and the server's (this
        process, whose other threads wait meanwhile). CPU time, not elapsed time: on a
        shared machine a long iteration is interrupted by other work more often than a short
        one, which elapsed time would count against it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        before = self.served.requests
        server = time.process_time()
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        client = float(self.proc.stdout.readline())
        server = (time.process_time() - server) / n
        assert self.served.requests - before == n, "one control request per iteration"
        return client + server

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def time_command(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {done.stderr.decode().strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=20,
                        help="N: top iterations per round, N/4 (at least 2) at 10,000 "
                             "cgroups, 10N at 100")
    parser.add_argument("--starts", type=int, default=10, help="process starts per round")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        small = Served(build(100), Path(tmp) / "small")
        large = Served(build(10_000), Path(tmp) / "large")
        try:
            clients = Client(small), Client(large)
            for client in clients:  # warm up
                client.cpu(1)
            ratios, small_times, large_times = [], [], []
            for _ in range(args.rounds):
                t_small = clients[0].cpu(args.iterations * 10)
                t_large = clients[1].cpu(max(2, args.iterations // 4))
                small_times.append(t_small)
                large_times.append(t_large)
                ratios.append(t_large / t_small)
            for client in clients:
                client.close()
            print("top, CPU time of one iteration (one control request + rendering, client and "
                  "server):")
            print(f"  100 cgroups:    {statistics.median(small_times) * 1e3:8.2f} ms")
            print(f"  10,000 cgroups: {statistics.median(large_times) * 1e3:8.2f} ms")
            print(f"  10,000 / 100:   {statistics.median(ratios):8.1f}  (median of "
                  f"{args.rounds} rounds: {', '.join(f'{r:.1f}' for r in ratios)}; "
                  f"target <= 100)")

            # as installed: bytecode is written at the first start (the warm-up) and read at
            # every other, on both sides (click's was written when it was installed)
            env = dict(os.environ, IOASIDS_RUNTIME_DIR=str(small.path.parent))
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            ctl = [str(BIN / "ioasidctl"), "status"]
            click = [sys.executable, "-c", "import click"]
            time_command(ctl, env)
            time_command(click, env)
            ratios, ctl_times, click_times = [], [], []
            for _ in range(args.rounds):
                t_ctl = statistics.median(time_command(ctl, env) for _ in range(args.starts))
                t_click = statistics.median(time_command(click, env)
                                            for _ in range(args.starts))
                ctl_times.append(t_ctl)
                click_times.append(t_click)
                ratios.append(t_ctl / t_click)
            print("start-up, a new process to its exit:")
            print(f"  ioasidctl status:          {statistics.median(ctl_times) * 1e3:7.1f} ms")
            print(f"  python -c 'import click':  {statistics.median(click_times) * 1e3:7.1f} ms")
            print(f"  ratio:                     {statistics.median(ratios):7.2f}  (median of "
                  f"{args.rounds} rounds: {', '.join(f'{r:.2f}' for r in ratios)}; "
                  f"target <= 1.5)")
        finally:
            small.stop()
            large.stop()


if __name__ == "__main__":
    main()
