#!/usr/bin/env python3
"""Benchmark of the daemon's start-up: ``ioasidsd run`` from spawn to ``READY=1``.

Three commands are timed in alternating rounds, each from ``fork+exec`` to its signal:

- the reference: the same Python importing what the daemon imports (``ioasidsd.daemon.app``,
  ``cgroupfs``, ``psutil``, ``pyroute2``, ``structlog``, ``sqlite3``) and sending ``READY=1``
  at once: the cost of starting any daemon written this way;
- the daemon on an empty state (a new state directory each round), timed to ``READY=1`` on a
  ``NOTIFY_SOCKET`` (mounted and serving);
- the daemon on a state holding 100,000 live IOASIDs (a copy of one prepared state each round):
  ten real processes, each in its own cgroup with a limit and owning an MM set of 10,000
  charged IOASIDs.

After each ready the daemon is stopped with SIGTERM (not timed). The figures are medians; the
ratios to the reference are what to compare between machines.

Then the cost of durability, in this process: ``System.write_max`` and ``System.mkdir`` with the
store as ``on_change`` (each change in the journal before it returns) against the same calls on a
System without one, in alternating rounds. Needs FUSE (root, or fusermount3).

With ``--against TREE`` (another checkout of this project) each round also starts TREE's
daemon (its ``ioasidsd`` package imported from TREE, ``bench/against.py``) on a copy of the
same state with IOASIDs, and the median over rounds of this daemon's time over TREE's is
printed.

    bench_daemon.py [--rounds 5] [--ioasids 100000] [--writes 20000] [--mkdirs 10000]
                    [--against SOURCE_TREE]
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

import against

from ioasidsd.daemon.membership import retire_hierarchy

BIN = Path(sys.executable).parent
REFERENCE = ("import sqlite3, psutil, pyroute2, structlog, cgroupfs, ioasidsd.daemon.app, "
             "ioasidsd.cli.daemon\n"
             "from ioasidsd.daemon.notify import sd_notify\n"
             "sd_notify('READY=1')\n")


def prepare_state(state_dir: Path, n_ioasids: int, owners: list[int]) -> None:
    """A state with ``n_ioasids`` live IOASIDs spread over the MM sets of ``owners``."""
    from ioasidsd.model import IoasidSetType
    from ioasidsd.model.changes import Change, ChangeKind
    Store = against.store_class()
    from ioasidsd.system import System

    store = Store.open(state_dir)
    system = System(on_change=store.apply)
    store.bind(system)
    per_owner = n_ioasids // len(owners)
    for i, pid in enumerate(owners):
        path = f"/vm{i}"
        system.mkdir(path)
        system.write_max(path, str(per_owner))
        owner = system.write_procs(path, str(pid), writer_pid=1, writer_uid=0)
        with system.lock:
            ioasid_set = system.core.set_alloc(owner.mm, 0, IoasidSetType.MM)
            ids = [system.core.alloc(ioasid_set, 1, (1 << 20) - 1, task=owner)
                   for _ in range(per_owner)]
            system.on_change(Change(ChangeKind.IOASID, ids=ids, processes=(owner,)))
    store.close()


def time_to_ready(base: Path, argv: list[str], *, stop: bool = True,
                  pythonpath: str | None = None) -> float:
    """Seconds from spawning ``argv`` to its READY=1; it is then stopped (SIGTERM, unless
    ``stop`` is false) and must exit 0. ``pythonpath``: where it imports ``ioasidsd`` from."""
    notify = base / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if notify.exists():
            notify.unlink()
        sock.bind(str(notify))
        sock.settimeout(120)
        env = dict(os.environ, NOTIFY_SOCKET=str(notify))
        if pythonpath:
            env = against.tree_env(pythonpath, env)
        start = time.perf_counter()
        daemon = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, cwd=base)
        try:
            while b"READY=1" not in sock.recv(65536).split(b"\n"):
                pass
            elapsed = time.perf_counter() - start
        finally:
            if stop:
                daemon.send_signal(signal.SIGTERM)
            if daemon.wait(60) != 0:
                raise SystemExit(f"{argv[0]} exited with {daemon.returncode}")
    return elapsed


def time_reference(base: Path) -> float:
    return time_to_ready(base, [sys.executable, "-c", REFERENCE], stop=False)


def time_daemon(base: Path, state_dir: Path, pythonpath: str | None = None) -> float:
    """Seconds from spawn to READY=1 of a daemon on ``state_dir`` (``pythonpath``: the
    source tree of another version to run instead of this one)."""
    return time_to_ready(base, [
        str(BIN / "ioasidsd"), "run", "--mount", str(base / "mnt"), "--state-dir",
        str(state_dir), "--runtime-dir", str(base / "run"), "--log-level", "warning"],
        pythonpath=pythonpath)


def time_changes(n_writes: int, n_mkdirs: int, base: Path, store: bool) -> tuple[float, float]:
    """Seconds per write_max and for ``n_mkdirs`` mkdirs, with or without the store."""
    Store = against.store_class()
    from ioasidsd.system import System

    system = System()
    if store:
        state = Path(tempfile.mkdtemp(dir=base))
        db = Store.open(state)
        system.on_change = db.apply
        db.bind(system)
    system.mkdir("/a")
    start = time.perf_counter()
    for i in range(n_writes):
        system.write_max("/a", str(i % 7 + 1))
    per_write = (time.perf_counter() - start) / n_writes
    start = time.perf_counter()
    for i in range(n_mkdirs):
        system.mkdir(f"/a/c{i}")
    mkdirs = time.perf_counter() - start
    if store:
        db.close()
    return per_write, mkdirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ioasids", type=int, default=100_000)
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--mkdirs", type=int, default=10_000)
    parser.add_argument("--against", metavar="TREE",
                        help="also start another version's daemon (its source tree, put on "
                             "PYTHONPATH) on the state with IOASIDs, in the same rounds")
    args = parser.parse_args()
    if args.against:
        against.check_tree(args.against)

    owners = [subprocess.Popen(["sleep", "3600"]) for _ in range(10)]
    base = Path(tempfile.mkdtemp(prefix="ioasids-bench-daemon-"))
    try:
        prepared = base / "prepared"
        t0 = time.perf_counter()
        prepare_state(prepared, args.ioasids, [p.pid for p in owners])
        db_mb = (prepared / "state.sqlite").stat().st_size / 1e6
        print(f"prepared {args.ioasids} IOASIDs in {time.perf_counter() - t0:.1f} s "
              f"({db_mb:.1f} MB database)", flush=True)
        figures: dict[str, list[float]] = {"reference": [], "empty": [], "full": []}
        if args.against:
            figures["against"] = []
        for r in range(args.rounds):
            figures["reference"].append(time_reference(base))
            empty = base / f"empty{r}"
            figures["empty"].append(time_daemon(base, empty))
            full = base / f"full{r}"
            shutil.copytree(prepared, full)
            figures["full"].append(time_daemon(base, full))
            if args.against:
                other = base / f"other{r}"
                shutil.copytree(prepared, other)
                figures["against"].append(time_daemon(base, other, args.against))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s"
                                                  for k, v in figures.items()), flush=True)
        ref = statistics.median(figures["reference"])
        print()
        print("| measure | median | / reference |")
        print("|---|---|---|")
        for name, label in (("reference", "Python + the daemon's imports, to READY=1"),
                            ("empty", "ioasidsd run, empty state, to READY=1"),
                            ("full", f"ioasidsd run, {args.ioasids:,} live IOASIDs, to READY=1"),
                            ("against", f"{args.against}'s ioasidsd run, the same state")):
            if name in figures:
                value = statistics.median(figures[name])
                print(f"| {label} | {value:.3f} s | {value / ref:.2f} |")
        if args.against:
            ratio = against.median_ratio(figures["full"], figures["against"])
            print(f"\nthis daemon / {args.against}'s, same rounds: {ratio:.3f}")

        changes: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.rounds):
            for with_store in (False, True):
                changes[with_store].append(
                    time_changes(args.writes, args.mkdirs, base, with_store))
        bare_write = statistics.median(w for w, _ in changes[False])
        durable_write = statistics.median(w for w, _ in changes[True])
        bare_mkdir = statistics.median(m for _, m in changes[False])
        durable_mkdir = statistics.median(m for _, m in changes[True])
        print()
        print("| change | without the store | with the store | ratio |")
        print("|---|---|---|---|")
        print(f"| System.write_max | {bare_write * 1e6:.1f} us | {durable_write * 1e6:.1f} us | "
              f"{durable_write / bare_write:.1f} |")
        print(f"| System.mkdir x{args.mkdirs:,} | {bare_mkdir:.2f} s | {durable_mkdir:.2f} s | "
              f"{durable_mkdir / bare_mkdir:.1f} |")
    finally:
        for p in owners:
            p.kill()
            p.wait()
        for state in base.iterdir():  # each daemon's hierarchy: the kernel keeps them
            if state.is_dir():
                with contextlib.suppress(OSError):
                    retire_hierarchy(state)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
