"""The control API's verbs: plain functions of the running service, the request and the caller.

Each verb is ``verb(service, request, peer) -> result``: ``service`` is what the verb reads of the
running daemon (``Service``), ``request`` the request object (its arguments), ``peer`` the caller
(``SO_PEERCRED``). A verb raises ``IoasidError`` for a refusal (its errno name is the reply's
``error``) and changes the model only through ``System`` methods. A verb that shows processes or
what they hold shows a caller other than root only what ``visibility.may_see_process`` allows.
``VERBS`` maps each verb's name to its function; the daemon serves them all.

A new verb goes here (the function, with its request arguments and errors in its docstring,
and a line in ``VERBS``); its human rendering goes in ``ioasidsd.cli.render`` and its command in
``ioasidsd.cli.ctl``.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Protocol

from ioasidsd.clients import Peer
from ioasidsd.control.visibility import may_see_process
from ioasidsd.model.errors import IoasidError
from ioasidsd.system import System
from ioasidsd.vtd import VtdDriver

__all__ = ["TRACE_EVENTS_MAX", "VERBS", "Service", "Verb", "status", "vtd", "vtd_summary"]

TRACE_EVENTS_MAX = 4096
"""The most VT-d trace events one ``vtd`` request may ask for."""


class Service(Protocol):
    """What the verbs read of the running daemon."""

    @property
    def system(self) -> System | None: ...

    @property
    def vtd(self) -> VtdDriver | None: ...

    def service_status(self) -> dict[str, Any]:
        """The parts of ``status`` only the daemon knows: its pid and uptime, process tracking,
        the mount, the state, the sockets, the release agents."""
        ...


Verb = Callable[[Service, dict[str, Any], Peer], Any]


def status(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "status"}``: the profile, knobs and quirks, capacity and available, the numbers
    of cgroups, processes, sets and IOASIDs, the capacity limits hold beyond the reservation
    rule (``over_reserved``: a state saved by an earlier version), the VT-d summary
    (``vtd_summary``) and the daemon's own parts (``Service.service_status``). Shows no
    process: the same for every caller."""
    system = service.system
    if system is None:
        raise IoasidError(errno.ENODEV, "the daemon is not serving a system")
    with system.lock:
        core = system.core
        counts = system.cgroups.stats()
        result: dict[str, Any] = {
            "profile": system.knobs.profile,
            "knobs": system.knobs.as_dict(),
            "quirks": system.knobs.quirk_names,
            "capacity": core.capacity,
            "available": core.capacity_avail,
            "cgroups": counts["cgroups"],
            "processes": counts["processes"],
            "sets": len(core.sets),
            "ioasids": len(core),
            "over_reserved": [{"cgroup": path, "amount": amount}
                              for path, amount in system.controller.over_reserved],
        }
    result.update(service.service_status())
    if service.vtd is not None:
        result["vtd"] = vtd_summary(service.vtd)
    return result


def vtd_summary(driver: VtdDriver) -> dict[str, Any]:
    """The VT-d line of ``status``: units, devices, scalable mode, bound PASIDs."""
    with driver.lock:
        host = driver.host_set
        return {
            "units": list(driver.units),
            "devices": len(driver.devices),
            "scalable_mode": driver.sm_enabled,
            "pasid_max": driver.pasid_max,
            "host_set": None if host is None else host.id,
            "bound_pasids": len(driver.guest) + len(driver.native),
        }


def vtd(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "vtd", "events": N}``: ``VtdDriver.snapshot`` with the last ``N`` trace
    events (default 50, at most ``TRACE_EVENTS_MAX``), and ``viewer_uid``, the caller's uid.

    Root gets the whole snapshot (``filtered`` false). Any other caller gets the snapshot
    filtered to the bindings of the processes it may see (``may_see_process``'s rule, decided
    now from the real processes), ``filtered`` true: nothing in it names another process's
    PASID, guest PASID or pid. ``EINVAL`` for another ``events``, ``ENODEV`` without the VT-d
    simulation."""
    events = request.get("events", 50)
    if isinstance(events, bool) or not isinstance(events, int) or \
            not 0 <= events <= TRACE_EVENTS_MAX:
        raise IoasidError(errno.EINVAL, f"events must be an integer in 0..{TRACE_EVENTS_MAX}")
    driver, system = service.vtd, service.system
    if driver is None or system is None:
        raise IoasidError(errno.ENODEV, "the VT-d simulation is not running")
    if peer.uid == 0:
        snap = driver.snapshot(events=events)
    else:
        # The rule reads /proc: decide outside the lock, then filter by the processes decided
        # on (a binding made meanwhile by another owner is left out).
        visible = [owner for owner in driver.owners()
                   if may_see_process(peer, owner, system.processes)]
        snap = driver.snapshot(events=events, owners=visible)
    snap["viewer_uid"] = peer.uid
    return snap


VERBS: dict[str, Verb] = {"status": status, "vtd": vtd}
"""Every verb the daemon serves, by name."""
