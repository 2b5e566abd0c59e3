#!/usr/bin/env python3
"""Benchmark of the daemon's memory: the RSS ``ioasidsd run`` adds to hold (nearly) 2^20 live
IOASIDs of real clients, against the RSS the model alone adds to hold the same IOASIDs.

- The daemon: ``ioasidsd run`` on a temporary state (the store, the mount, both sockets, the
  VT-d simulation), with its defaults: a capacity of 2^20 (the 20-bit PASID space of a unit of
  PSS=19, PCIe's largest), of which the VT-d host set reserves 32,768; so the default is
  2^20 - 2^16 = 983,040 IOASIDs, 15 clients of 65,536. Its RSS is read once it is ready, then
  ``--clients`` real processes each connect to ``/dev/ioasid``'s socket and allocate their share
  with ``IOASID_REQUEST_ALLOC_BATCH`` (at most 65,536 a request) and keep them; once every
  client holds its share and the store has folded the journal (``--settle`` seconds), the RSS
  is read again. The figure is the difference.
- The model alone, in a separate process: a ``System`` (model, controller, device; no store, no
  socket, no mount) with the same number of processes, each with its ``/dev/ioasid`` file and
  the same batches through ``System.ioasid_ioctl``; RSS before the first batch and after the
  last.

Both hold the same IOASIDs in the same sets (one MM set per process, charged to the root
cgroup); the ratio daemon/model is the target (at most 1.5). RSS is read with psutil (the
resident set: the heap, and the store's mapped journal pages the daemon touched).

    bench_rss.py [--ids 983040] [--clients 15] [--settle 3] [--rounds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from ioasidsd.daemon.membership import retire_hierarchy

BIN = Path(sys.executable).parent
BATCH = 65536
CLIENT = r"""
import sys
from ioasidsd.userapi.client import IoasidClient
runtime, count, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = IoasidClient.open(runtime)
held = 0
while held < count:
    held += len(client.alloc_batch(min(batch, count - held)))
print(held, flush=True)
sys.stdin.read()  # hold them until told
"""


def model_child(ids: int, clients: int) -> None:
    """In a child process: print the RSS before and after the model alone holds ``ids``
    IOASIDs in ``clients`` processes' MM sets (see the module)."""
    from ioasidsd.host import ProcessFacts, ProcessSource
    from ioasidsd.model import ioasid_uapi as uapi
    from ioasidsd.model import profile
    from ioasidsd.system import System
    from ioasidsd.userapi.client import MAX_ID

    class MadeUp(ProcessSource):
        def facts(self, pid: int) -> ProcessFacts:
            return ProcessFacts(pid, 1.0, (0, 0, 0), pid)

    system = System(profile("fixed"), processes=MadeUp())
    files = [system.ioasid_open(10_000 + i) for i in range(clients)]
    before = psutil.Process().memory_info().rss
    share = ids // clients
    for file in files:
        held = 0
        while held < share:
            n = min(BATCH, share - held)
            arg = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, MAX_ID, n)
            system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, arg)
            held += n
    assert len(system.core) == share * clients
    after = psutil.Process().memory_info().rss
    print(before, after)


def measure_model(ids: int, clients: int) -> int:
    out = subprocess.run([sys.executable, __file__, "--model-child", str(ids), str(clients)],
                         capture_output=True, text=True, check=True).stdout.split()
    return int(out[1]) - int(out[0])


def measure_daemon(ids: int, clients: int, settle: float) -> tuple[int, int]:
    """The daemon's RSS when ready, and what holding ``ids`` IOASIDs of ``clients`` real
    clients added to it."""
    base = Path(tempfile.mkdtemp(prefix="ioasids-rss-"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(base / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=str(base / "notify"))
    with open(base / "log", "wb") as log:
        daemon = subprocess.Popen(
            [str(BIN / "ioasidsd"), "run", "--mount", str(base / "mnt"),
             "--state-dir", str(base / "state"), "--runtime-dir", str(base / "run"),
             "--log-format", "json", "--log-level", "warning"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    procs: list[subprocess.Popen[str]] = []
    try:
        notify.settimeout(1)
        deadline = time.monotonic() + 120
        while True:
            try:
                if b"READY=1" in notify.recv(65536):
                    break
            except TimeoutError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    log_text = (base / "log").read_text()
                    raise RuntimeError(f"the daemon did not start: {log_text}") from None
        rss = psutil.Process(daemon.pid)
        time.sleep(settle)  # let the start's own work (the first fold) finish
        empty = rss.memory_info().rss
        share = ids // clients
        for _ in range(clients):
            procs.append(subprocess.Popen(
                [sys.executable, "-c", CLIENT, str(base / "run"), str(share), str(BATCH)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for proc in procs:
            assert proc.stdout is not None and int(proc.stdout.readline()) == share
        time.sleep(settle)  # the store folds its journal once a second
        full = rss.memory_info().rss
        return empty, full - empty
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(120)
        with contextlib.suppress(OSError):  # the kernel keeps it; it slows every fork
            retire_hierarchy(base / "state")
        notify.close()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=2**20 - 2**16)
    parser.add_argument("--clients", type=int, default=15)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model-child", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model_child is not None:
        model_child(*args.model_child)
        return 0
    ratios = []
    for r in range(args.rounds):
        model = measure_model(args.ids, args.clients)
        empty, held = measure_daemon(args.ids, args.clients, args.settle)
        ratios.append(held / model)
        print(f"round {r + 1}: daemon RSS ready {empty / 2**20:.1f} MB, held by "
              f"{args.ids:,} IOASIDs {held / 2**20:.1f} MB; model alone {model / 2**20:.1f} MB; "
              f"daemon/model {held / model:.3f}", flush=True)
    print(f"daemon/model (median of {args.rounds}): {statistics.median(ratios):.3f} "
          "(target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
