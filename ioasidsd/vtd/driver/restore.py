"""Rebuilding the VT-d driver's state over a core restored from a snapshot.

A snapshot keeps what the driver did to the core: the references it holds, the SPIDs it attached,
the charges, and, as each bound IOASID's private data, the binding's record
(``Svm.snapshot_record``). The simulated hardware (registers, PASID tables, domains, caches,
queues) is not saved: a restart boots the units afresh, like a host that reboots and sets its
guests' bindings up again. ``VtdDriver.boot(adopt=True)`` then calls:

* ``host_set``: the host PASID set is the core's NULL-type set of lowest id (the driver is the
  only creator of NULL sets in the daemon), adopted instead of a second one being created;
* ``restore_bindings``: for every IOASID whose private data is a binding record, in ascending
  order, the record is checked against the core and the configured devices, the binding's
  ``Svm`` is made again, each device's PASID entry is programmed as the bind programmed it
  (nested over the owner's second-level domain, or first level over the process's page table),
  and the record is replaced by the ``Svm`` (``detach_data``/``attach_data``, which notify
  nobody). An IOASID that was FREE_PENDING had its FREE seen before the restart but its queued
  cleanup was not saved: the cleanup is queued again.

Nothing here takes or drops a reference, attaches a SPID or charges a cgroup: the restored
counts already include the bindings. Domain ids are allocated afresh and may differ from the
previous run's.
"""

from __future__ import annotations

from errno import EINVAL, ENOENT
from typing import TYPE_CHECKING, Any

from ioasidsd.model.core import IoasidData, IoasidSet, IoasidSetType, IoasidState
from ioasidsd.model.errors import IoasidError
from ioasidsd.vtd.driver.svm import GUEST_RECORD, RECORD_KINDS, Svm, SvmDev, cpu_pgd
from ioasidsd.vtd.hardware.pasid_table import FLPT_DEFAULT_DID

if TYPE_CHECKING:
    from ioasidsd.model.core import IoasidCore
    from ioasidsd.vtd.driver.vtd_driver import VtdDriver

_GUEST_DEVICE = {"bdf": str, "gpgd": int, "addr_width": int, "sre": bool, "eafe": bool}
_NATIVE_DEVICE = {"bdf": str, "users": int, "supervisor": bool}


def is_binding_record(value: Any) -> bool:
    """Whether ``value`` (an IOASID's private data) is a saved binding record."""
    return isinstance(value, dict) and value.get("kind") in RECORD_KINDS


def host_set(core: IoasidCore) -> IoasidSet | None:
    """The restored host PASID set: the NULL-type set of lowest id, or ``None``."""
    for ioasid_set in core.sets:
        if ioasid_set.type == IoasidSetType.NULL:
            return ioasid_set
    return None


def restore_bindings(driver: VtdDriver) -> int:
    """Rebuild every binding recorded in the core's private data; returns how many.

    Raises ``IoasidError`` naming the IOASID: ``EINVAL`` for a malformed record or one that
    disagrees with the core (another PASID, an owner that is not the set's, a native binding
    outside the host set), ``ENOENT`` for a native binding's process that is not tracked, and
    what binding the device would raise now (``ENODEV`` for a device the configuration no longer
    has, ``EOPNOTSUPP`` without PASID support, ``EINVAL`` for parameters the units refuse). The
    driver and core are then unusable (the daemon refuses to start)."""
    with driver.lock:
        records = [data for data in driver.core.ioasids() if is_binding_record(data.private)]
        for data in records:
            try:
                if data.private["kind"] == GUEST_RECORD:
                    _restore_guest(driver, data, data.private)
                else:
                    _restore_native(driver, data, data.private)
            except IoasidError as exc:
                code = exc.errno or EINVAL  # an IoasidError always has one
                raise IoasidError(code, f"IOASID {data.id}: {exc.strerror}") from None
        return len(records)


# ---------------------------------------------------------------------- checks
def _bad(message: str) -> IoasidError:
    return IoasidError(EINVAL, f"binding record: {message}")


def _check_record(rec: dict[str, Any], data: IoasidData,
                  device_fields: dict[str, type]) -> list[dict[str, Any]]:
    """The record's devices, after checking the fields every record has."""
    if rec.get("pasid") != data.id:
        raise _bad(f"records PASID {rec.get('pasid')!r}")
    owner = rec.get("owner")
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        raise _bad("no owner pid")
    gpasid = rec.get("gpasid")
    if gpasid is not None and not isinstance(gpasid, int):
        raise _bad(f"guest PASID {gpasid!r}")
    if not isinstance(rec.get("pgd"), int):
        raise _bad(f"first-level root {rec.get('pgd')!r}")
    devices = rec.get("devices")
    if not isinstance(devices, list) or not devices:
        raise _bad("no devices")
    seen: set[str] = set()
    for dev in devices:
        if not isinstance(dev, dict) or any(
                type(dev.get(name)) is not kind for name, kind in device_fields.items()):
            raise _bad(f"malformed device {dev!r}")
        if dev["bdf"] in seen:
            raise _bad(f"device {dev['bdf']} listed twice")
        seen.add(dev["bdf"])
    return devices


def _same_process(proc: Any, owner: dict[str, Any]) -> bool:
    return (getattr(proc, "pid", None) == owner["pid"]
            and getattr(proc, "start_time", None) == owner.get("start_time"))


# ---------------------------------------------------------------------- rebuilding
def _replace_private(driver: VtdDriver, data: IoasidData, svm: Svm) -> None:
    driver.core.detach_data(data.id)
    driver.core.attach_data(data.id, svm)


def _restore_guest(driver: VtdDriver, data: IoasidData, rec: dict[str, Any]) -> None:
    devices = _check_record(rec, data, _GUEST_DEVICE)
    owner = data.set.token
    if data.set.type != IoasidSetType.MM or not _same_process(owner, rec["owner"]):
        raise _bad(f"owner {rec['owner']} does not own the IOASID's set")
    pasid = data.id
    driver.check_pasid_value(pasid)
    infos = []
    for dev in devices:  # everything is checked before anything is programmed
        info = driver.info(dev["bdf"])
        driver.require_pasid(info)
        driver.check_nested_request(info, dev["gpgd"], dev["addr_width"], dev["sre"],
                                     dev["eafe"])
        infos.append(info)
    svm = Svm(pasid=pasid, guest=True, owner=owner, gpasid=rec["gpasid"], pgd=rec["pgd"],
              created_seq=driver.trace.seq)
    svm.work = driver.cleanup_work(svm)
    for dev, info in zip(devices, infos, strict=True):
        domain = driver.guest_domain_get(info.iommu, owner)
        info.iommu.setup_nested(info, dev["gpgd"], pasid, domain, addr_width=dev["addr_width"],
                                sre=dev["sre"], eafe=dev["eafe"])
        svm.devs.append(SvmDev(info, domain.did, domain=domain, bound_seq=driver.trace.seq,
                               gpgd=dev["gpgd"], addr_width=dev["addr_width"], sre=dev["sre"],
                               eafe=dev["eafe"]))
    _replace_private(driver, data, svm)
    driver.guest[pasid] = svm
    driver.counters.inc("restore.guest")
    driver.trace.emit("restore", mode="guest", pasid=pasid, gpasid=svm.gpasid,
                      pid=owner.pid, devices=[s.bdf for s in svm.devs], refs=data.refs,
                      state=data.state.name)
    if data.state == IoasidState.FREE_PENDING:
        event = driver.trace.emit("ioasid_state", pasid=pasid, what="cleanup queued again",
                                  devices=len(svm.devs))
        svm.free_seq = event.seq
        driver.core.queue_work(svm.work)
        driver.counters.inc("restore.cleanups_queued")


def _restore_native(driver: VtdDriver, data: IoasidData, rec: dict[str, Any]) -> None:
    devices = _check_record(rec, data, _NATIVE_DEVICE)
    if data.set is not driver.host_set:
        raise _bad(f"a native binding outside the host set (set {data.set.id})")
    controller = driver.core.controller
    mm = None if controller is None else controller.hierarchy.processes.get(rec["owner"]["pid"])
    if mm is None or not _same_process(mm, rec["owner"]):
        raise IoasidError(ENOENT, f"the bound process {rec['owner']} is not tracked")
    pasid = data.id
    infos = []
    for dev in devices:
        info = driver.info(dev["bdf"])
        driver.require_pasid(info)
        if pasid >= min(info.device.max_pasids, driver.pasid_max) or dev["users"] < 1:
            raise _bad(f"PASID {pasid} or {dev['users']} users on {info.device.bdf}")
        infos.append(info)
    svm = Svm(pasid=pasid, guest=False, mm=mm, pgd=cpu_pgd(mm), created_seq=driver.trace.seq)
    for dev, info in zip(devices, infos, strict=True):
        info.iommu.setup_first_level(info, svm.pgd, pasid, FLPT_DEFAULT_DID,
                                     supervisor=dev["supervisor"])
        svm.devs.append(SvmDev(info, FLPT_DEFAULT_DID, users=dev["users"],
                               bound_seq=driver.trace.seq, supervisor=dev["supervisor"]))
    _replace_private(driver, data, svm)
    driver.native[mm] = svm
    driver.counters.inc("restore.native")
    driver.trace.emit("restore", mode="native", pasid=pasid, pid=mm.pid,
                      devices=[s.bdf for s in svm.devs], refs=data.refs, state=data.state.name)
