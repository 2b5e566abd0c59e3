"""A system as the daemon runs it, without the daemon: a ``System`` with the SQLite store as its
``on_change``, the VT-d driver booted and attached, processes made up by the test, and a
``restart`` that does what ``ioasidsd run`` does after a ``kill -9`` (the old objects are
abandoned, nothing is closed or flushed; the new ones are rebuilt from the database)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from userapi.helpers import FakeProcesses

from ioasidsd.model import OrderedWorkQueue, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.hierarchy import Process
from ioasidsd.model.ioasid_device import IoasidFile
from ioasidsd.model.snapshot import dump, load
from ioasidsd.store.state import Store
from ioasidsd.system import System
from ioasidsd.vtd import VtdDriver, build_driver

DEV_A = "0000:03:00.0"  # the default configuration's devices: ATS and PRI
DEV_B = "0000:04:00.0"  # ATS, no PRI


class Host:
    """One run of the model over the state in ``state_dir``."""

    def __init__(self, state_dir: Path, profile_name: str = "fixed", *,
                 vtd: dict[str, Any] | None = None, processes: FakeProcesses | None = None,
                 capacity: int | None = None, wq: OrderedWorkQueue | None = None) -> None:
        """``wq``: the core's work queue; by default a ``manual`` one, so that a test runs the
        cleanup (``core.wq.run_pending()``) where it wants to look at the state before it."""
        self.state_dir = state_dir
        self.profile_name = profile_name
        self.vtd_table = vtd
        self.processes = processes or FakeProcesses()
        self.store = Store.open(state_dir)
        snap = self.store.load()
        self.system = System(profile(profile_name), processes=self.processes,
                             wq=wq if wq is not None else OrderedWorkQueue(mode="manual"),
                             on_change=self.store.apply)
        with self.system.lock:
            if snap is None:
                self.driver = build_driver(self.core, vtd, capacity=capacity)
                self.store.bind(self.system)
            else:
                self.store.bind(self.system, load(snap, self.core))
                self.driver = build_driver(self.core, vtd, adopt=True)
                self.system.on_change(Change(ChangeKind.VTD_BOOT, sets=(self.driver.host_set.id,)))
            self.system.vtd_attach(self.driver)

    @property
    def core(self):
        return self.system.core

    def restart(self, **kwargs: Any) -> Host:
        """The next run after a ``kill -9`` of this one (same processes unless told)."""
        kwargs.setdefault("vtd", self.vtd_table)
        kwargs.setdefault("processes", self.processes)
        return Host(self.state_dir, self.profile_name, **kwargs)

    def saved(self) -> dict[str, Any]:
        """The snapshot the database holds now (read through a second connection)."""
        store = Store.open(self.state_dir)
        try:
            snap = store.load()
        finally:
            store.close()
        assert snap is not None
        return snap

    def dump(self) -> dict[str, Any]:
        with self.system.lock:
            return dump(self.core)

    # ------------------------------------------------------------------ a VMM
    def vmm(self, pid: int, cgroup: str | None = None, limit: int = 10) -> Process:
        """The real process ``pid`` (made up), in ``cgroup`` (made, with ``limit``)."""
        self.processes.add(pid)
        if cgroup is not None:
            if cgroup.strip("/") not in self.system.cgroups.root.children:
                self.system.mkdir(cgroup)
                self.system.write_max(cgroup, str(limit))
            return self.system.write_procs(cgroup, str(pid), writer_pid=pid, writer_uid=0)
        return self.system.process(pid)

    def open(self, pid: int) -> IoasidFile:
        return self.system.ioasid_open(pid)

    def alloc(self, file: IoasidFile, lo: int = 1, hi: int = 1000) -> int:
        arg = uapi.ALLOC_REQUEST.pack(16, 0, lo, hi)
        return self.system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC, arg)[0]

    def free(self, file: IoasidFile, ioasid: int) -> None:
        self.system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE, uapi.FREE_ARG.pack(ioasid))

    def bind(self, file: IoasidFile, hpasid: int, bdf: str, gpasid: int | None = None, *,
             gpgd: int = 0, addr_width: int = 0) -> None:
        flags = 0 if gpasid is None else uapi.IOASID_BIND_GPASID_VAL
        arg = uapi.BIND_GPASID.pack(32, flags, hpasid, gpasid or 0, uapi.parse_bdf(bdf),
                                    addr_width, gpgd)
        assert self.system.ioasid_ioctl(file, uapi.IOASID_BIND_GPASID, arg) == (0, b"")

    def unbind(self, file: IoasidFile, hpasid: int, bdf: str) -> None:
        arg = uapi.UNBIND_GPASID.pack(16, 0, hpasid, uapi.parse_bdf(bdf))
        assert self.system.ioasid_ioctl(file, uapi.IOASID_UNBIND_GPASID, arg) == (0, b"")

    def entry(self, bdf: str, pasid: int):
        """The PASID entry of ``pasid`` in the device's table (``None`` without a leaf)."""
        table = self.driver.info(bdf).table
        assert table is not None
        return table.read_entry(pasid)

    def present(self, bdf: str, pasid: int) -> bool:
        entry = self.entry(bdf, pasid)
        return entry is not None and entry.p


def entry_fields(driver: VtdDriver, bdf: str, pasid: int) -> dict[str, Any]:
    """What a bind programs into an entry and a restart must program again (the domain's DID
    and second-level root are allocated anew)."""
    entry = driver.info(bdf).table.read_entry(pasid)
    return {name: getattr(entry, name)
            for name in ("p", "pgtt", "flptptr", "flpm", "sre", "eafe", "aw", "fpd")}
