"""The bind extension over the simulated VT-d unit: guest bind and unbind of /dev/ioasid
IOASIDs, and a guest's life cycle (allocate, bind, unbind, free) driven through the user API,
including "free before unbind"."""

from __future__ import annotations

from errno import EBUSY, EINVAL, ENODEV, ENOENT, EPERM

import pytest

from ioasidsd.model import IoasidError, IoasidNotify, IoasidState, NotifierBlock
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.core import INVALID_IOASID
from ioasidsd.vtd.driver.config import build_driver
from ioasidsd.vtd_binder import VtdGuestBinder

from .helpers import Served, World

DEV_A = "0000:03:00.0"  # the default configuration's two devices
DEV_B = "0000:04:00.0"


def with_vtd(w: World) -> World:
    w.driver = build_driver(w.core)
    w.device.binder = VtdGuestBinder(w.driver)
    return w


@pytest.fixture(params=["fixed", "v4"])
def vw(request: pytest.FixtureRequest) -> World:
    return with_vtd(World(request.param))


def bind(w: World, f, hpasid: int, bdf: str, gpasid: int | None = None, task=None) -> None:
    flags = 0 if gpasid is None else uapi.IOASID_BIND_GPASID_VAL
    arg = uapi.BIND_GPASID.pack(32, flags, hpasid, gpasid or 0, uapi.parse_bdf(bdf), 0, 0)
    assert w.ioctl(f, uapi.IOASID_BIND_GPASID, arg, task) == (0, b"")


def unbind(w: World, f, hpasid: int, bdf: str, task=None) -> None:
    arg = uapi.UNBIND_GPASID.pack(16, 0, hpasid, uapi.parse_bdf(bdf))
    assert w.ioctl(f, uapi.IOASID_UNBIND_GPASID, arg, task) == (0, b"")


def errno_of(fn, *args, **kwargs) -> int:
    with pytest.raises(IoasidError) as info:
        fn(*args, **kwargs)
    return info.value.errno


def entry_present(w: World, bdf: str, pasid: int) -> bool:
    entry = w.driver.info(bdf).table.read_entry(pasid)
    return entry is not None and bool(entry.p)


def test_normal_life_cycle(vw: World) -> None:
    """The normal life cycle: ALLOC, bind (BIND, refs 2), a second device (no second BIND),
    unbind both (one UNBIND, refs 1), FREE (reclaimed with no FREE event)."""
    vw.cgroup("vm", 10)
    p = vw.proc("/vm")
    f = vw.device.open(p)
    h = vw.alloc(f)
    events: list[tuple[int, int]] = []
    vw.core.register_notifier(f.user.ioasid_set, _recorder(events))
    bind(vw, f, h, DEV_A, gpasid=101)
    assert vw.core.data(h).refs == 2 and vw.core.data(h).spid == 101
    assert entry_present(vw, DEV_A, h)
    bind(vw, f, h, DEV_B, gpasid=101)
    assert [e for e, _ in events] == [IoasidNotify.BIND]
    unbind(vw, f, h, DEV_A)
    unbind(vw, f, h, DEV_B)
    assert [e for e, _ in events] == [IoasidNotify.BIND, IoasidNotify.UNBIND]
    assert vw.core.data(h).refs == 1 and vw.core.data(h).spid == INVALID_IOASID
    assert not entry_present(vw, DEV_A, h)
    assert vw.free(f, h) == 0
    assert h not in vw.core and IoasidNotify.FREE not in [e for e, _ in events]
    assert vw.cgroups.lookup("/vm").counter == 0


def test_free_before_unbind(vw: World) -> None:
    """Free before unbind: FREE while bound makes the IOASID FREE_PENDING and the VT-d listener
    queues the teardown; the work tears both devices down, sends UNBIND and drops the last
    reference. fixed uncharges the cgroup that was charged; v4 uncharges the worker's (none),
    so the charge stays (quirk 7)."""
    vw.cgroup("vm", 10)
    p = vw.proc("/vm")
    f = vw.device.open(p)
    h = vw.alloc(f)
    bind(vw, f, h, DEV_A, gpasid=7)
    bind(vw, f, h, DEV_B, gpasid=7)
    assert vw.free(f, h) == 0
    assert vw.core.data(h).state == IoasidState.FREE_PENDING
    assert errno_of(bind, vw, f, h, DEV_A, 8) in (EBUSY, EINVAL)  # being freed
    assert len(vw.core.wq) == 1  # the cleanup is queued, nothing torn down yet
    assert entry_present(vw, DEV_A, h) and entry_present(vw, DEV_B, h)
    assert vw.core.wq.run_pending() == 1
    assert h not in vw.core
    assert not entry_present(vw, DEV_A, h) and not entry_present(vw, DEV_B, h)
    assert vw.driver.counters["ioasid.cleanups"] == 1
    leak = 1 if vw.core.knobs.uncharge_target == "current" else 0
    assert vw.cgroups.lookup("/vm").counter == leak
    if vw.core.knobs.set_lifetime == "explicit":
        assert vw.alloc(f) == h  # the PASID can be allocated again
    else:
        assert errno_of(vw.alloc, f) == EINVAL  # v4: the set went with its last IOASID


def test_release_while_bound_tears_down(vw: World) -> None:
    """Closing /dev/ioasid with a bound IOASID: FREE, then the queued teardown."""
    p = vw.proc()
    f = vw.device.open(p)
    h = vw.alloc(f)
    bind(vw, f, h, DEV_A)
    vw.device.release(f)
    assert vw.core.data(h).state == IoasidState.FREE_PENDING
    vw.core.wq.run_pending()
    assert h not in vw.core and not entry_present(vw, DEV_A, h)


def test_bind_ownership() -> None:
    """The generic layer's get_if_owned: unknown ENOENT, kernel (host set) EINVAL, another
    process's EPERM; and fixed refuses a process that did not open the file up front."""
    for name, knobs in (("fixed", {}), ("v4", {"set_quota_zero_takes_all": False})):
        w = with_vtd(World(name, **knobs))
        a, b = w.proc(), w.proc()
        fa, fb = w.device.open(a), w.device.open(b)
        ha = w.alloc(fa)
        host = w.core.alloc(w.driver.host_set, 1, 100)
        assert errno_of(bind, w, fb, 999, DEV_A) == ENOENT
        assert errno_of(bind, w, fb, host, DEV_A) == EINVAL
        assert errno_of(bind, w, fb, ha, DEV_A) == EPERM
        # b through a's file: fixed refuses at the file, v4 at get_if_owned; both EPERM
        assert errno_of(bind, w, fa, ha, DEV_A, None, b) == EPERM
        assert w.core.data(ha).refs == 1
        assert errno_of(unbind, w, fb, ha, DEV_A) == EPERM


def test_bind_over_the_socket_with_a_real_process(tmp_path) -> None:
    """A real process allocates, binds on two devices, frees before unbinding: the teardown
    runs on the work queue and the PASID entries are gone."""
    served = Served("fixed", str(tmp_path))
    try:
        driver = build_driver(served.system.core)
        served.system.vtd_attach(driver)
        served.cgroup("vm", 4)
        a = served.agent("vm")
        a.ok("open")
        h = a.ok("alloc 1 1000")[0]
        a.ok(f"bind {h} 03:00.0 101")
        a.ok(f"bind {h} 04:00.0 101")
        assert a.err(f"bind {h} 03:00.0 101") == EBUSY  # bound there already
        assert a.err(f"bind {h} 05:00.0 101") == ENODEV  # no such device
        core = served.system.core
        assert core.data(h).refs == 2 and core.data(h).spid == 101
        a.ok(f"free {h}")
        assert core.data(h).state == IoasidState.FREE_PENDING
        assert a.err(f"unbind {h} 03:00.0") == EBUSY  # the ownership check: being freed
        core.wq.run_pending()
        assert h not in core
        assert served.system.cgroups.lookup("vm").counter == 0
        assert a.err(f"unbind {h} 03:00.0") == ENOENT  # gone
        table = driver.info(DEV_A).table
        assert not table.read_entry(h).p and not driver.info(DEV_B).table.read_entry(h).p
        assert driver.counters["ioasid.cleanups"] == 1
    finally:
        served.close()


def _recorder(log: list) -> NotifierBlock:
    def callback(nb, event, args) -> int:
        log.append((event, args.id))
        return 0

    return NotifierBlock(callback)
