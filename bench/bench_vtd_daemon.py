#!/usr/bin/env python3
"""Benchmark of the VT-d simulation inside the daemon: what persistence costs.

Everything runs in this process, on the objects ``ioasidsd run`` wires (a ``System`` with the
SQLite store of ``ioasidsd/store/state.py`` as ``on_change``, the VT-d driver attached with
``System.vtd_attach``), in the ``fixed`` profile, one VMM in a cgroup with a limit.

* Restart. Two states of N IOASIDs owned by one VMM: in one, every IOASID is guest-bound to a
  device (``IOASID_BIND_GPASID``); the reference has the same IOASIDs unbound. A restart is what
  the daemon does after ``kill -9``: read the database, rebuild the model
  (``snapshot.load``), bind the store, boot the driver adopting the state (which programs the
  bound PASIDs' entries again). The two are timed alternately; medians. The difference per
  binding is compared with a bind itself (the same ioctl through ``System``, no store).
* Binds with the store. Bind+unbind cycles of one IOASID through ``System.ioasid_ioctl`` with
  the store against the same without one (``on_change`` a no-op), alternately; best rounds.
* Free before unbind with the store: alloc, bind, free and the VT-d cleanup (run from the work
  queue, reported to the store), against the same without the store.

Usage: ``.venv/bin/python bench/bench_vtd_daemon.py [--bindings 10000] [--rounds 5]
[--cycles 2000]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ioasidsd.host import ProcessFacts, ProcessSource
from ioasidsd.model import OrderedWorkQueue, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.snapshot import load
from ioasidsd.store.state import Store
from ioasidsd.system import System
from ioasidsd.vtd import build_driver

DEVICE = uapi.parse_bdf("0000:03:00.0")
VMM = 4242


class OneProcess(ProcessSource):
    """The VMM, made up (the benchmark needs no real process)."""

    def facts(self, pid: int) -> ProcessFacts:
        return ProcessFacts(pid, 1.0, (0, 0, 0), pid)


def new_system(state: Path | None) -> tuple[System, Store | None]:
    """A new state (or none) with the driver booted and attached."""
    store = Store.open(state) if state is not None else None
    system = System(profile("fixed"), processes=OneProcess(),
                    wq=OrderedWorkQueue(mode="manual"),
                    on_change=store.apply if store is not None else None)
    with system.lock:
        driver = build_driver(system.core)
        if store is not None:
            store.bind(system)
        system.vtd_attach(driver)
    return system, store


def vm(system: System, limit: int) -> Any:
    system.mkdir("/vm")
    system.write_max("/vm", str(limit))
    system.write_procs("/vm", str(VMM), writer_pid=VMM, writer_uid=0)
    return system.ioasid_open(VMM)


def ioctl(system: System, file: Any, cmd: int, arg: bytes) -> int:
    return system.ioasid_ioctl(file, cmd, arg)[0]


def alloc(system: System, file: Any) -> int:
    arg = uapi.ALLOC_REQUEST.pack(16, 0, 1, (1 << 20) - 1)
    return ioctl(system, file, uapi.IOASID_REQUEST_ALLOC, arg)


def bind(system: System, file: Any, hpasid: int) -> None:
    ioctl(system, file, uapi.IOASID_BIND_GPASID,
          uapi.BIND_GPASID.pack(32, uapi.IOASID_BIND_GPASID_VAL, hpasid, hpasid, DEVICE, 0, 0))


def unbind(system: System, file: Any, hpasid: int) -> None:
    ioctl(system, file, uapi.IOASID_UNBIND_GPASID,
          uapi.UNBIND_GPASID.pack(16, 0, hpasid, DEVICE))


def free(system: System, file: Any, ioasid: int) -> None:
    ioctl(system, file, uapi.IOASID_REQUEST_FREE, uapi.FREE_ARG.pack(ioasid))


# ---------------------------------------------------------------------- restart
def prepare(state: Path, n: int, bound: bool) -> float:
    """A state of ``n`` IOASIDs of one VMM, all bound or none; returns seconds per bind."""
    system, store = new_system(state)
    file = vm(system, n)
    with system.lock:  # allocate in bulk, one report (the store's cost is not measured here)
        owner = file.opener
        ids = [system.core.alloc(file.user.ioasid_set, 1, 1 << 20, task=owner)
               for _ in range(n)]
        system.on_change(Change(ChangeKind.IOASID, ids=ids, processes=(owner,)))
    spent = 0.0
    if bound:
        store.close()
        system.on_change = lambda change: None  # time the binds alone
        start = time.perf_counter()
        for ioasid in ids:
            bind(system, file, ioasid)
        spent = (time.perf_counter() - start) / n
        store = Store.open(state)
        store.bind(system)  # a full write of the bound state
    store.close()
    return spent


def restart(state: Path) -> float:
    """Seconds for what ``ioasidsd run`` does to a saved state before serving it."""
    start = time.perf_counter()
    store = Store.open(state)
    snap = store.load()
    system = System(profile("fixed"), processes=OneProcess(), on_change=store.apply)
    with system.lock:
        store.bind(system, load(snap, system.core))
        driver = build_driver(system.core, adopt=True)
        system.vtd_attach(driver)
        system.on_change(Change(ChangeKind.VTD_BOOT, sets=(driver.host_set.id,)))
    spent = time.perf_counter() - start
    store.close()
    return spent


def bench_restart(base: Path, n: int, rounds: int) -> dict[str, float]:
    per_bind = prepare(base / "bound", n, True)
    prepare(base / "unbound", n, False)
    bound, unbound = [], []
    for _ in range(rounds):
        unbound.append(restart(base / "unbound"))
        bound.append(restart(base / "bound"))
    b, u = statistics.median(bound), statistics.median(unbound)
    return {"bound": b, "unbound": u, "ratio": b / u, "per_binding_us": (b - u) / n * 1e6,
            "bind_us": per_bind * 1e6}


# ---------------------------------------------------------------------- cycles
def bind_cycles(state: Path | None, cycles: int) -> float:
    system, store = new_system(state)
    file = vm(system, 10)
    hpasid = alloc(system, file)
    start = time.perf_counter()
    for _ in range(cycles):
        bind(system, file, hpasid)
        unbind(system, file, hpasid)
    rate = cycles / (time.perf_counter() - start)
    if store is not None:
        store.close()
    return rate


def cleanup_cycles(state: Path | None, cycles: int) -> float:
    system, store = new_system(state)
    file = vm(system, 10)
    run = system.core.wq.run_pending
    start = time.perf_counter()
    for _ in range(cycles):
        hpasid = alloc(system, file)
        bind(system, file, hpasid)
        free(system, file, hpasid)
        assert run() == 1
    rate = cycles / (time.perf_counter() - start)
    assert len(system.core) == 0
    if store is not None:
        store.close()
    return rate


def best_pair(fn: Any, base: Path, cycles: int, rounds: int) -> tuple[float, float]:
    with_store, without = [], []
    for i in range(rounds):
        without.append(fn(None, cycles))
        with_store.append(fn(base / f"{fn.__name__}-{i}", cycles))
    return max(with_store), max(without)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bindings", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-vtd-daemon-") as tmp:
        base = Path(tmp)
        r = bench_restart(base, args.bindings, args.rounds)
        print(f"restart, {args.bindings} IOASIDs bound: {r['bound']:.3f} s; unbound "
              f"(reference): {r['unbound']:.3f} s; ratio {r['ratio']:.2f}")
        print(f"  restoring costs {r['unbound'] / args.bindings * 1e6:.1f} us per IOASID; "
              f"rebuilding a binding {r['per_binding_us']:.1f} us more; a bind through System "
              f"(no store, SPID checked against the set's {args.bindings} IOASIDs) "
              f"{r['bind_us']:.1f} us")
        for name, fn in (("bind+unbind", bind_cycles), ("alloc+bind+free+cleanup",
                                                        cleanup_cycles)):
            stored, bare = best_pair(fn, base, args.cycles, args.rounds)
            print(f"{name} cycles/s: {stored:,.0f} with the store, {bare:,.0f} without; "
                  f"ratio {stored / bare:.3f}")


if __name__ == "__main__":
    main()
