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
from ioasidsd.control.visibility import may_see_process, may_see_record
from ioasidsd.model.core import INVALID_IOASID, IoasidData
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Cgroup, Process
from ioasidsd.store.refusals import RefusalLog
from ioasidsd.system import System
from ioasidsd.vtd import VtdDriver

__all__ = ["EVENTS_MAX", "SCHEMA", "TOP_COLUMNS", "TRACE_EVENTS_MAX", "VERBS", "Service",
           "Slices", "TraceRecordings", "Verb", "daemon_reload", "events", "ids", "rehearse",
           "run", "set_property", "slice_list", "slice_status", "status", "top", "trace", "tree",
           "vtd", "vtd_summary", "which"]

SCHEMA = 1
"""The ``schema`` of the replies of ``tree``, ``top``, ``ids``, ``events`` and ``which``: their
keys are kept; a change that removes or renames one raises it."""

EVENTS_MAX = 65536
"""The most refusal-log entries one ``events`` request returns (the newest)."""

TRACE_EVENTS_MAX = 4096
"""The most VT-d trace events one ``vtd`` request may ask for."""


class TraceRecordings(Protocol):
    """The daemon's trace recording (``ioasidsd.experiments.recording.Recordings``): rows
    ``[time, op, pid, cgroup, count]`` of the trace format. Called under ``system.lock``."""

    def start(self) -> str:
        """Start recording; the token that reads and stops it (``EBUSY``: one runs)."""
        ...

    def take(self, token: str) -> tuple[list[list[Any]], str | None]:
        """The rows since the last take, and why the recording ended by itself, if it did
        (``ESRCH``: no such recording)."""
        ...

    def stop(self, token: str) -> tuple[list[list[Any]], str | None]:
        """End the recording: its last rows, as ``take``."""
        ...


class Slices(Protocol):
    """The daemon's slices (``ioasidsd.slices.SliceManager``), as the slice verbs use them;
    each method raises ``IoasidError`` for a refusal."""

    def slices(self) -> list[dict[str, Any]]: ...
    def status(self, name: str) -> dict[str, Any]: ...

    def set_property(self, name: str, assignments: list[str], *, runtime: bool, uid: int,
                     gid: int) -> dict[str, Any]: ...

    def prepare_scope(self, slice_name: str | None, unit: str | None, properties: list[str],
                      *, uid: int) -> dict[str, Any]: ...


class Service(Protocol):
    """What the verbs read of the running daemon."""

    @property
    def slices(self) -> Slices | None: ...

    def reload(self) -> dict[str, Any]:
        """Read the configuration and the units again (``daemon-reload``, SIGHUP): the counts
        of the units loaded (``slices``, ``failed``)."""
        ...

    @property
    def system(self) -> System | None: ...

    @property
    def vtd(self) -> VtdDriver | None: ...

    @property
    def refusals(self) -> RefusalLog | None: ...

    @property
    def recordings(self) -> TraceRecordings | None: ...

    def service_status(self) -> dict[str, Any]:
        """The parts of ``status`` only the daemon knows: its pid and uptime, process tracking,
        the mount, the state, the sockets, the release agents."""
        ...


Verb = Callable[[Service, dict[str, Any], Peer], Any]


def status(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "status"}``: the profile, knobs and quirks, capacity and available, the numbers
    of cgroups, processes, sets and IOASIDs, the capacity limits hold beyond the reservation
    rule (``over_reserved``: a state saved by an earlier version), the root cgroup's own limit
    (``root``: ``max``, ``None`` for no limit, and ``current``, what its own processes hold,
    counted only under a limit), the VT-d summary
    (``vtd_summary``) and the daemon's own parts (``Service.service_status``). Shows no
    process: the same for every caller."""
    system = service.system
    if system is None:
        raise IoasidError(errno.ENODEV, "the daemon is not serving a system")
    with system.lock:
        core = system.core
        counts = system.cgroups.stats()
        root = system.cgroups.root
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
            "root": {"max": root.limit, "current": root.counter if root.limit is not None
                     else None},
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


# ---------------------------------------------------------------------- arguments
def _system(service: Service) -> System:
    system = service.system
    if system is None:
        raise IoasidError(errno.ENODEV, "the daemon is not serving a system")
    return system


def _path(request: dict[str, Any], name: str = "path") -> str:
    """A cgroup path argument (default ``/``): ``EINVAL`` unless a string of names."""
    path = request.get(name, "/")
    if not isinstance(path, str) or "\0" in path or any(
            part in (".", "..") for part in path.split("/")):
        raise IoasidError(errno.EINVAL, f"{name} must be a cgroup path such as /vms/gold")
    return "/" + path.strip("/")


def _int(request: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = request.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise IoasidError(errno.EINVAL, f"{name} must be an integer in {lo}..{hi}")
    return value


def _lookup(system: System, path: str) -> Cgroup:
    """The cgroup at ``path`` (under the lock); ``ENOENT`` naming it."""
    try:
        return system.cgroups.lookup(path)
    except IoasidError:
        raise IoasidError(errno.ENOENT, f"{path}: no such cgroup") from None


def _row(system: System, cg: Cgroup) -> dict[str, Any]:
    """A cgroup's numbers as ``tree`` and ``top`` show them (the root: system-wide use, no
    limit)."""
    if cg.parent is None:
        return {"path": "/", "current": len(system.core), "max": None, "peak": None,
                "events": 0, "over": False}
    return {"path": cg.path, "current": cg.counter, "max": cg.limit, "peak": cg.peak,
            "events": cg.events, "over": cg.limit is not None and cg.counter > cg.limit}


# ---------------------------------------------------------------------- tree, top, which
def tree(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "tree", "path": P, "all": false}``: ``P`` (default ``/``) and the cgroups
    below it, parents first, by name; each with ``path``, ``current``, ``max`` (``null``:
    no limit), ``peak``, ``events``, ``over`` (``current > max``, which moving a process in can
    cause) and ``procs``, its member processes (``pid``, ``command``) as its ``cgroup.procs``
    lists them (``System.member_pids``: the root lists every process in no child cgroup).
    Without ``all``, a cgroup with no process in it or below it is left out (``P`` itself
    never is). Processes
    are shown to every caller, as ``ps`` shows them. ``EINVAL`` for a bad path, ``ENOENT``
    for a missing cgroup."""
    path = _path(request)
    show_all = bool(request.get("all", False))
    system = _system(service)
    with system.lock:
        top_cg = _lookup(system, path)
        rows = [(cg, _row(system, cg)) for cg in top_cg.descendants()]
    found = [(cg, row, _members(system, cg)) for cg, row in rows]
    if not show_all:
        busy: set[str] = set()
        for cg, _, pids in found:
            if pids:
                busy.update(a.path for a in cg.chain)
        found = [item for item in found if item[0] is top_cg or item[1]["path"] in busy]
    source = system.processes
    cgroups = []
    for _cg, row, pids in found:
        row["procs"] = [{"pid": pid, "command": source.command(pid)} for pid in pids]
        cgroups.append(row)
    return {"schema": SCHEMA, "cgroups": cgroups}


def _members(system: System, cg: Cgroup) -> list[int]:
    """``cg``'s ``cgroup.procs``; none if it went meanwhile."""
    try:
        return system.member_pids(cg)
    except IoasidError:
        return []


TOP_COLUMNS = ("path", "procs", "current", "max", "peak", "events")
"""The columns of a ``top`` reply."""


def top(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "top", "path": P, "depth": N}``: the cgroups of ``P`` (default ``/``) and
    below, ``N`` levels deep at most (default 3; 0: ``P`` alone), parents first by name, as
    columns: ``columns`` maps each name of ``TOP_COLUMNS`` to the list of its values, one per
    cgroup: ``path``, ``procs`` (processes in it and below it), ``current``, ``max`` (``null``:
    no limit), ``peak``, ``events`` (the root: system-wide use, ``null``, ``null``, ``0``).
    Columns, because a refresh of ``ioasidctl top`` is one request for every cgroup and six
    lists cost far less to send and read than a row each. It shows no process, so it is the
    same for every caller. ``EINVAL``, ``ENOENT`` as ``tree``."""
    path = _path(request)
    depth = _int(request, "depth", 3, 0, 1 << 16)
    assert depth is not None
    system = _system(service)
    with system.lock:
        start = _lookup(system, path)
        # parents first (by name), then processes in each subtree summed children first
        nodes: list[Cgroup] = []
        paths: list[str] = []
        levels: list[int] = []
        stack = [(start, 0, start.path)]
        while stack:
            cg, level, where = stack.pop()
            nodes.append(cg)
            paths.append(where)
            levels.append(level)
            if level < depth and cg.children:
                children = cg.children
                prefix = "" if where == "/" else where
                stack.extend([(children[name], level + 1, f"{prefix}/{name}")
                              for name in sorted(children, reverse=True)])
        totals: dict[Cgroup, int] = {}
        for cg, level in zip(reversed(nodes), reversed(levels), strict=True):
            total = len(cg.procs)
            if cg.children:
                if level < depth:
                    for child in cg.children.values():
                        total += totals[child]
                else:  # below the depth shown: counted, not listed
                    total = sum(len(d.procs) for d in cg.descendants())
            totals[cg] = total
        columns: dict[str, list[Any]] = {
            "path": paths,
            "procs": [totals[cg] for cg in nodes],
            "current": [cg.counter if cg.parent is not None else len(system.core)
                        for cg in nodes],
            "max": [cg.limit if cg.parent is not None else None for cg in nodes],
            "peak": [cg.peak if cg.parent is not None else None for cg in nodes],
            "events": [cg.events if cg.parent is not None else 0 for cg in nodes],
        }
    return {"schema": SCHEMA, "columns": columns}


def which(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "which", "pids": [PID...]}``: the cgroup of each process, as
    ``/proc/PID/cgroup`` tells it for a kernel hierarchy: ``{"pid", "cgroup"}`` in the order
    asked. A process the daemon does not track yet is in the root. Shown to every caller, as
    ``/proc/PID/cgroup`` is. ``EINVAL`` for a bad list, ``ESRCH`` naming the first pid that
    is not a process (nothing is answered then)."""
    pids = request.get("pids")
    if not isinstance(pids, list) or not pids or len(pids) > 4096 or any(
            isinstance(p, bool) or not isinstance(p, int) or p <= 0 for p in pids):
        raise IoasidError(errno.EINVAL, "pids must be a list of 1 to 4096 process ids")
    system = _system(service)
    answers = []
    for pid in pids:
        try:
            facts = system.processes.facts(pid)
        except IoasidError:
            raise IoasidError(errno.ESRCH, f"{pid}: no such process") from None
        with system.lock:
            proc = system.cgroups.process(facts.tgid)
            where = proc.cgroup.path if proc is not None and \
                proc.start_time == facts.start_time else "/"
        answers.append({"pid": pid, "cgroup": where})
    return {"schema": SCHEMA, "processes": answers}


# ---------------------------------------------------------------------- ids, events
def _owner(data: IoasidData) -> Process | None:
    token = data.set.token
    return token if isinstance(token, Process) else None


def ids(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "ids", "path": P, "pid": PID}``: the live IOASIDs, by ID: ``id``, ``state``,
    ``set``, ``owner`` (the pid of the process whose set holds it, ``null`` for a set of
    no process), ``cgroup`` (charged to; ``null``: none), ``spid`` (``null``: none) and
    ``vtd``, its VT-d bindings (``kind`` native or guest, ``gpasid``, ``devices``). ``path``
    keeps those charged to ``P`` or below it, ``pid`` those owned by that process.

    Root sees every IOASID; any other caller only those owned by the processes it may see
    (``visibility.may_see_process``), ``filtered`` true. ``EINVAL`` for a bad argument,
    ``ENOENT`` for a missing cgroup."""
    path = request.get("path")
    path = None if path is None else _path(request)
    pid = _int(request, "pid", None, 1, 1 << 22) if request.get("pid") is not None else None
    system = _system(service)
    rows: list[tuple[IoasidData, Process | None, dict[str, Any]]] = []
    with system.lock:
        under = None if path is None else _lookup(system, path)
        for data in system.core.ioasids():
            owner = _owner(data)
            if pid is not None and (owner is None or owner.pid != pid):
                continue
            charged = data.cgroup
            if under is not None and (charged is None or under not in (charged, *charged.chain)):
                continue
            rows.append((data, owner, {
                "id": data.id, "state": data.state.name, "set": data.set.id,
                "owner": None if owner is None else owner.pid,
                "cgroup": None if charged is None else charged.path,
                "spid": None if data.spid == INVALID_IOASID else data.spid, "vtd": []}))
    driver = service.vtd
    if driver is not None and rows:
        by_id = {row["id"]: row for _, _, row in rows}
        with driver.lock:
            bindings = [*driver.native.values(), *driver.guest.values()]
            for svm in bindings:
                row = by_id.get(svm.pasid)
                if row is not None:
                    row["vtd"].append({"kind": "guest" if svm.guest else "native",
                                       "gpasid": svm.gpasid,
                                       "devices": [dev.bdf for dev in svm.devs]})
    if peer.uid != 0:
        decided: dict[int, bool] = {}
        kept: list[tuple[IoasidData, Process | None, dict[str, Any]]] = []
        for _data, owner, row in rows:
            if owner is None:
                continue
            if id(owner) not in decided:
                decided[id(owner)] = may_see_process(peer, owner, system.processes)
            if decided[id(owner)]:
                kept.append((_data, owner, row))
        rows = kept
    return {"schema": SCHEMA, "filtered": peer.uid != 0, "viewer_uid": peer.uid,
            "ids": [row for _, _, row in rows]}


def events(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "events", "path": P, "after": SEQ, "limit": N}``: the refusal log
    (``ioasidsd.store.refusals``) of ``P`` (default ``/``) and the cgroups below it, oldest
    first: the entries numbered above ``SEQ`` (default 0), the newest ``N`` of them (default
    and most ``EVENTS_MAX``), and ``last_seq``, the newest number in the whole log, for the
    next ``after`` (``--follow`` asks again with it). Root sees every entry; any other
    caller only those of its own uid (``visibility.may_see_record``), ``filtered`` true.
    ``EINVAL`` for a bad argument, ``ENOENT`` for a cgroup that does not exist now and has no
    entries; ``ENODEV`` before the state is open."""
    path = _path(request)
    after = _int(request, "after", 0, 0, 1 << 62)
    limit = _int(request, "limit", EVENTS_MAX, 1, EVENTS_MAX)
    assert after is not None and limit is not None
    system = _system(service)
    log = service.refusals
    if log is None:
        raise IoasidError(errno.ENODEV, "the daemon has no refusal log yet")
    with system.lock:
        found = [dict(item) for item in log.entries(path, after=after)]
        if not found and path != "/":
            _lookup(system, path)
        last = log.last_seq
    if peer.uid != 0:
        found = [item for item in found if may_see_record(peer, item.get("uid"))]
    return {"schema": SCHEMA, "filtered": peer.uid != 0, "viewer_uid": peer.uid,
            "last_seq": last, "events": found[-limit:]}


# ---------------------------------------------------------------------- trace
TRACE_ACTIONS = ("start", "read", "stop")


def trace(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "trace", "action": A, "token": T}``: record the daemon's live traffic as a
    trace (the trace format of the experiments: rows ``[time, op, pid, cgroup, count]``,
    ``ioasidsd.experiments.recording`` says what is recorded). ``start`` begins a recording
    and answers its ``token``; ``read`` answers the ``rows`` recorded since the last read;
    ``stop`` ends the recording and answers its last ``rows``. ``read`` and ``stop`` also
    answer ``ended``: why the recording ended by itself (its rows unread too long, or too
    many of them), ``null`` while it runs. One recording at a time; while none runs the
    daemon does nothing for it.

    Root only: a trace shows every process's requests (``EPERM`` for anyone else). ``EINVAL``
    for a bad argument, ``EBUSY`` when another recording runs, ``ESRCH`` for a token that is
    not the running recording's, ``ENODEV`` before the state is open."""
    if peer.uid != 0:
        raise IoasidError(errno.EPERM, "only root may record a trace")
    action = request.get("action")
    if action not in TRACE_ACTIONS:
        raise IoasidError(errno.EINVAL, f"action must be one of {', '.join(TRACE_ACTIONS)}")
    token = request.get("token", "")
    if action != "start" and not isinstance(token, str):
        raise IoasidError(errno.EINVAL, "token must be the string start answered")
    system = _system(service)
    recordings = service.recordings
    if recordings is None:
        raise IoasidError(errno.ENODEV, "the daemon cannot record yet")
    with system.lock:
        if action == "start":
            return {"schema": SCHEMA, "token": recordings.start()}
        rows, ended = (recordings.take if action == "read" else recordings.stop)(token)
    return {"schema": SCHEMA, "rows": rows, "ended": ended}



# ---------------------------------------------------------------------- slices
def _slices(service: Service) -> Slices:
    slices = service.slices
    if slices is None:
        raise IoasidError(errno.ENODEV, "the daemon has not loaded its units yet")
    return slices


def _text(request: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    """A string argument: ``EINVAL`` unless a string without NUL (or absent, if allowed)."""
    value = request.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or "\0" in value or len(value) > 4096:
        raise IoasidError(errno.EINVAL, f"{name} must be a non-empty string")
    return value


def _texts(request: dict[str, Any], name: str) -> list[str]:
    value = request.get(name, [])
    if not isinstance(value, list) or len(value) > 64 or any(
            not isinstance(v, str) or "\0" in v or len(v) > 4096 for v in value):
        raise IoasidError(errno.EINVAL, f"{name} must be a list of strings")
    return value


def slice_list(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "slice_list"}``: every slice the daemon knows (with a unit file or
    drop-ins, or a cgroup), by name: ``unit``, ``cgroup``, ``load`` (``loaded``,
    ``not-found``, ``masked``, ``bad-setting``, ``error``), ``active`` (``active``,
    ``inactive``, ``failed``), ``configured`` (``IOASIDsMax=`` as configured: ``25%``,
    ``100``, ``infinity``; ``null`` when it cannot be read), ``max`` (the cgroup's limit,
    ``null``: none), ``current``, ``procs`` (processes in it and below) and ``error`` (why it
    failed, naming file and line). The same for every caller: it shows no process.
    ``ENODEV`` before the units are loaded."""
    return {"schema": SCHEMA, "slices": _slices(service).slices()}


def slice_status(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "slice_status", "unit": NAME}``: ``slice_list``'s fields of slice NAME and
    ``fragment`` (its unit file), ``dropins``, ``source`` (``FILE:LINE`` of the configured
    limit, ``null`` for the default), ``effective`` (the lowest limit along its cgroup and
    ancestors), ``peak``, ``events``, ``diagnostics`` and ``processes`` (``pid``,
    ``cgroup``, ``command``: in it and below it; shown to every caller, as ``tree`` shows
    them). ``EINVAL`` for a name that is not a slice's (unless a file of that name is
    there: then it is shown failed)."""
    name = _text(request, "unit", required=True)
    assert name is not None
    result = _slices(service).status(name)
    system = service.system
    for proc in result["processes"]:
        proc["command"] = None if system is None else system.processes.command(proc["pid"])
    return {"schema": SCHEMA, **result}


def set_property(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "set_property", "unit": NAME, "properties": ["IOASIDsMax=V"...],
    "runtime": false}``: as ``systemctl set-property``: the value is applied now and kept in
    a drop-in of the persistent control directory (with ``runtime``, the runtime one). A
    caller other than root may change a slice's limit only where it may write that cgroup's
    ``ioasids.max`` on the mount (``EACCES``). ``EINVAL`` for a name that is not a slice's,
    an unknown property or a bad value; the model's errno (``ENOSPC``, ``EBUSY``) for a
    limit it refuses, and then nothing changed. Returns ``dropin`` and ``status``
    (``slice_status``'s fields)."""
    name = _text(request, "unit", required=True)
    assert name is not None
    runtime = request.get("runtime", False)
    if not isinstance(runtime, bool):
        raise IoasidError(errno.EINVAL, "runtime must be true or false")
    result = _slices(service).set_property(name, _texts(request, "properties"),
                                           runtime=runtime, uid=peer.uid, gid=peer.gid)
    return {"schema": SCHEMA, **result}


def run(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "run", "slice": NAME, "unit": NAME, "properties": [...]}``: prepares a
    transient scope for ``ioasidctl run``: the slice (default ``system.slice``) realised
    (only root makes a slice that has no cgroup yet: ``EACCES``), the scope's ``unit`` name
    (``run-u<N>.scope`` unless given), its ``cgroup`` and ``slice_cgroup`` paths and
    ``ioasids_max``, the limit to write into it. The caller makes the scope's cgroup on the
    mount and moves itself in, as the user it is; the daemon removes the scope when its last
    process has left. ``EINVAL`` for bad names or properties, ``EEXIST`` for a scope name in
    use."""
    result = _slices(service).prepare_scope(_text(request, "slice"), _text(request, "unit"),
                                            _texts(request, "properties"), uid=peer.uid)
    return {"schema": SCHEMA, **result}


def daemon_reload(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "daemon_reload"}``: read the configuration file and every unit again and
    realise the slices, as SIGHUP does, and answer once done: ``slices`` and ``failed``,
    the numbers of slices loaded and failed. Root only (``EPERM``)."""
    if peer.uid != 0:
        raise IoasidError(errno.EPERM, "only root may reload the daemon")
    return {"schema": SCHEMA, **service.reload()}


def rehearse(service: Service, request: dict[str, Any], peer: Peer) -> dict[str, Any]:
    """``{"verb": "rehearse", "steps": [[PATH, NAME, DATA], ...]}``: whether every step would
    be granted now, in order (``System.rehearse``: tried on a copy of the model, nothing
    changed); a step with ``NAME`` ``null`` makes the cgroup ``PATH``, any other writes
    ``DATA`` to that control file. ``{"schema": 1}`` when all would be; the first refusal's
    errno otherwise, its message naming the step. It neither changes nor shows anything (file
    permissions are checked by the caller, on the mount), but it copies the whole model, which
    holds the model's lock and the daemon's socket thread for a time that grows with the
    hierarchy: ``EPERM`` for a caller other than root, so that no user can stall the others
    with it. ``EINVAL`` for a malformed list."""
    if peer.uid != 0:
        raise IoasidError(errno.EPERM, "only root may rehearse: a rehearsal copies the whole "
                                       "model")
    steps = request.get("steps")
    if not isinstance(steps, list) or any(
            not isinstance(step, list) or len(step) != 3 or not isinstance(step[0], str)
            or not isinstance(step[1], str | None) or not isinstance(step[2], str)
            for step in steps):
        raise IoasidError(errno.EINVAL, "steps must be a list of [path, name or null, data]")
    checked = [(_path({"path": path}), name, data) for path, name, data in steps]
    _system(service).rehearse(checked)
    return {"schema": SCHEMA}


VERBS: dict[str, Verb] = {"status": status, "vtd": vtd, "tree": tree, "top": top,
                          "which": which, "ids": ids, "events": events, "trace": trace,
                          "slice_list": slice_list, "slice_status": slice_status,
                          "set_property": set_property, "run": run,
                          "daemon_reload": daemon_reload, "rehearse": rehearse}
"""Every verb the daemon serves, by name."""
