"""Snapshots: the whole model as plain data (dicts, lists, numbers, strings) and back.

``dump(core)`` describes an ``IoasidCore``, the ``IoasidsController`` attached to it and the
``Hierarchy`` that controller is bound to; ``load``
rebuilds that state into a fresh core, exactly: ``dump(load(dump(x))) == dump(x)``, and the
rebuilt model behaves as the original under any further operation. The form is JSON-ready; the
daemon's store keeps it in SQLite, one row per record, and the record functions below are what it
writes when one record changes.

What a snapshot holds:

* ``core``: capacity, available capacity, whether a capacity was installed, the hierarchy's
  ``release_agent`` and ``sane_behavior`` and whether the controller's negative-counter warning
  was given;
* ``cgroups``: every cgroup of the tree (root first, parents before children) with its limit,
  reservation, counter, peak, events, flags and file attributes (modes, owners, times set
  through the mount), plus the *removed* cgroups that IOASIDs are still
  charged to (a charge outlives ``rmdir``, as a css outlives its directory in the kernel), with
  their ancestors;
* ``processes``: the tracked processes (pid, start time, cgroup, thread count);
* ``sets``: id, type, token (``None``, or the owning process's pid, start time and liveness),
  quota, reservation, IOASID count, deferred-free mark;
* ``ioasids``: id, set, state, references, SPID, charged cgroup, whether it drew from the pool,
  whether it is in its set's index (``free_all_in_set`` in ``v4`` hides some) and its private data.

What it does not hold: notifier registrations, custom allocators and queued work. Those belong to
the faces and drivers that registered them, which register again when they start. Private data
must be JSON data (``None``, booleans, numbers, strings, lists, string-keyed dicts), or an object
that describes itself as JSON data with a ``snapshot_record()`` method (the VT-d driver's binding
records), unless the caller passes its own ``encode_private``/``decode_private``. Such an object
is saved as its record and loaded as that plain record: its owner rebuilds the object from it when
it starts again (``VtdDriver.boot(adopt=True)``).

A dead process is kept only as the token of a set that outlives it; its cgroup is not part of the
snapshot (nothing reads it) and is the root after ``load``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ioasidsd.model.core import (
    INVALID_IOASID,
    IOASID_MAX_VALUE,
    IoasidCore,
    IoasidData,
    IoasidSet,
    IoasidSetType,
    IoasidState,
)
from ioasidsd.model.hierarchy import Cgroup, Hierarchy, Process
from ioasidsd.model.ioasids import IoasidsController

SNAPSHOT_VERSION = 1

CgroupIds = Callable[[Cgroup], int]
Record = dict[str, Any]


class SnapshotError(ValueError):
    """A snapshot cannot be taken (unsupported private data or token) or loaded (malformed,
    inconsistent, or the target core is not fresh). The message names the offending record."""


# ---------------------------------------------------------------------- private data
def plain_private(value: Any) -> Any:
    """The default ``encode_private``: JSON data passes unchanged; an object with a
    ``snapshot_record()`` method is replaced by the JSON data that method returns; anything else
    is refused with ``SnapshotError``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [plain_private(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: plain_private(v) for k, v in value.items()}
    record = getattr(value, "snapshot_record", None)
    if callable(record):
        return plain_private(record())
    raise SnapshotError(f"private data of type {type(value).__name__} is not JSON data")


def _same(value: Any) -> Any:
    return value


# ---------------------------------------------------------------------- records
def core_record(core: IoasidCore) -> Record:
    """The scalars of the core, of its controller and of the controller's hierarchy."""
    controller = _controller(core)
    cgroups = controller.hierarchy
    return {
        "capacity": core.capacity,
        "capacity_avail": core.capacity_avail,
        "capacity_installed": core.capacity_installed,
        "release_agent": cgroups.release_agent,
        "sane_behavior": cgroups.sane_behavior,
        "warned_negative": controller.warned_negative,
        "hierarchy": cgroups.version,
    }


def is_removed(cg: Cgroup) -> bool:
    """Whether ``cg`` itself was removed from its parent (``rmdir``)."""
    return cg.parent is not None and cg.parent.children.get(cg.name) is not cg


def control_record(cg: Cgroup) -> Record | None:
    """The cgroup-v2 fields of ``cg`` (``None`` when all are at their defaults, as on v1):
    ``subtree_control`` (sorted names), ``threaded``, ``max_depth``, ``max_descendants``, and
    the freezer's ``freeze``, ``frozen_ns`` and ``frozen_since`` (only when not at their
    defaults: records from before ``cgroup.freeze`` lack them)."""
    if not (cg.subtree_control or cg.threaded or cg.max_depth is not None
            or cg.max_descendants is not None or cg.freeze or cg.frozen_ns
            or cg.frozen_since is not None):
        return None
    record: Record = {"subtree_control": sorted(cg.subtree_control), "threaded": cg.threaded,
                      "max_depth": cg.max_depth, "max_descendants": cg.max_descendants}
    if cg.freeze:
        record["freeze"] = True
    if cg.frozen_ns:
        record["frozen_ns"] = cg.frozen_ns
    if cg.frozen_since is not None:
        record["frozen_since"] = cg.frozen_since
    return record


def cgroup_record(cg: Cgroup, cgroup_id: CgroupIds) -> Record:
    """One cgroup; ``parent`` is ``None`` for the root."""
    return {
        "id": cgroup_id(cg),
        "parent": None if cg.parent is None else cgroup_id(cg.parent),
        "name": cg.name,
        "limit": cg.limit,
        "reserved": cg.reserved,
        "counter": cg.counter,
        "peak": cg.peak,
        "events": cg.events,
        "events_local": cg.events_local,
        "notify_on_release": cg.notify_on_release,
        "clone_children": cg.clone_children,
        "removed": is_removed(cg),
        "attrs": {name: dict(attrs) for name, attrs in sorted(cg.attrs.items())},
        "control": control_record(cg),
    }


def process_record(proc: Process, cgroup_id: CgroupIds) -> Record:
    """One tracked process."""
    return {
        "pid": proc.pid,
        "start_time": proc.start_time,
        "cgroup": cgroup_id(proc.cgroup),
        "threads": proc.threads,
    }


def token_record(token: Any) -> Record | None:
    """A set's token: ``None``, or the owning process. Other tokens raise ``SnapshotError``."""
    if token is None:
        return None
    if isinstance(token, Process):
        return {"pid": token.pid, "start_time": token.start_time, "alive": token.alive}
    raise SnapshotError(f"set token of type {type(token).__name__} cannot be saved")


def set_record(ioasid_set: IoasidSet) -> Record:
    """One registered set."""
    return {
        "id": ioasid_set.id,
        "type": int(ioasid_set.type),
        "token": token_record(ioasid_set.token),
        "quota": ioasid_set.quota,
        "reserved": ioasid_set.reserved,
        "nr_ioasids": ioasid_set.nr_ioasids,
        "free_requested": ioasid_set.free_requested,
    }


def ioasid_record(
    data: IoasidData,
    cgroup_id: CgroupIds,
    encode_private: Callable[[Any], Any] = plain_private,
) -> Record:
    """One live IOASID. ``SnapshotError`` names it if its private data cannot be encoded."""
    try:
        private = encode_private(data.private)
    except SnapshotError as exc:
        raise SnapshotError(f"IOASID {data.id}: {exc}") from None
    return {
        "id": data.id,
        "set": data.set.id,
        "state": int(data.state),
        "refs": data.refs,
        "spid": data.spid,
        "cgroup": None if data.cgroup is None else cgroup_id(data.cgroup),
        "pooled": data.pooled,
        "indexed": data.id in data.set.xa,
        "private": private,
    }


# ---------------------------------------------------------------------- dump
def _controller(core: IoasidCore) -> IoasidsController:
    if core.controller is None:
        raise SnapshotError("the core has no cgroup controller attached")
    return core.controller


def _hierarchy(core: IoasidCore) -> Hierarchy:
    return _controller(core).hierarchy


def removed_cgroups(core: IoasidCore) -> list[Cgroup]:
    """The removed cgroups that IOASIDs are still charged to, with their removed ancestors,
    parents before children."""
    seen: dict[int, Cgroup] = {}
    order: list[Cgroup] = []
    for data in core.ioasids():
        chain: list[Cgroup] = []
        node = data.cgroup
        while node is not None and is_removed(node) and id(node) not in seen:
            chain.append(node)
            seen[id(node)] = node
            node = node.parent
        order.extend(reversed(chain))
    # a chain found later may hang below one found earlier: sort by depth to keep parents first
    order.sort(key=_depth)
    return order


def _depth(cg: Cgroup) -> int:
    depth = 0
    node = cg.parent
    while node is not None:
        depth += 1
        node = node.parent
    return depth


def _numbering() -> CgroupIds:
    ids: dict[int, int] = {}

    def cgroup_id(cg: Cgroup) -> int:
        key = id(cg)
        number = ids.get(key)
        if number is None:
            number = ids[key] = len(ids) + 1
        return number

    return cgroup_id


def dump(
    core: IoasidCore,
    *,
    cgroup_id: CgroupIds | None = None,
    encode_private: Callable[[Any], Any] = plain_private,
) -> Record:
    """The whole state of ``core`` and its controller as plain data.

    ``cgroup_id`` names cgroups (default: 1, 2, ... in tree order). Raises ``SnapshotError`` for
    private data ``encode_private`` refuses or a set token that is not a process. The caller
    holds ``core.lock`` (or nothing else runs).
    """
    cgroups = _hierarchy(core)
    cgroup_id = cgroup_id or _numbering()
    tree = list(cgroups.cgroups()) + removed_cgroups(core)
    return {
        "version": SNAPSHOT_VERSION,
        "knobs": core.knobs.as_dict(),
        "core": core_record(core),
        "cgroups": [cgroup_record(cg, cgroup_id) for cg in tree],
        "processes": [
            process_record(cgroups.processes[pid], cgroup_id) for pid in sorted(cgroups.processes)
        ],
        "sets": [set_record(s) for s in core.sets],
        "ioasids": [ioasid_record(d, cgroup_id, encode_private) for d in core.ioasids()],
    }


# ---------------------------------------------------------------------- load
def _field(record: Record, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    try:
        value = record[name]
    except (KeyError, TypeError):
        raise SnapshotError(f"{what}: missing {name!r}") from None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise SnapshotError(f"{what}: {name!r} has the wrong type ({type(value).__name__})")
    return value


def _records(snapshot: Record, name: str) -> Iterable[Record]:
    value = snapshot.get(name, [])
    if not isinstance(value, list):
        raise SnapshotError(f"{name!r} must be a list")
    return value


def load(
    snapshot: Record,
    core: IoasidCore,
    *,
    decode_private: Callable[[Any], Any] = _same,
) -> dict[int, Cgroup]:
    """Rebuild the state of ``snapshot`` into ``core``, a fresh core with a controller attached
    (its knobs are the caller's choice: ``snapshot["knobs"]`` is only informative here).

    Returns the cgroups by snapshot id. Raises ``SnapshotError`` for another version, a core
    that already holds state, or records that are malformed or inconsistent (unknown references,
    duplicates, a set count that disagrees with its IOASIDs); ``core`` may then be partly
    filled and should be discarded.
    """
    cgroups = _hierarchy(core)
    if not isinstance(snapshot, dict) or snapshot.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(f"not a version {SNAPSHOT_VERSION} snapshot")
    if core.sets_by_id or len(core) or cgroups.root.children or cgroups.processes:
        raise SnapshotError("the target core already holds state")
    with core.lock:
        _load_core(snapshot.get("core"), core, cgroups)
        by_id = _load_cgroups(snapshot, cgroups)
        _load_processes(snapshot, cgroups, by_id)
        sets = _load_sets(snapshot, core, cgroups)
        _load_ioasids(snapshot, core, sets, by_id, decode_private)
        cgroups.restored(by_id.values())
    return by_id


def _load_core(record: Any, core: IoasidCore, cgroups: Hierarchy) -> None:
    if not isinstance(record, dict):
        raise SnapshotError("'core' must be a mapping")
    capacity = _field(record, "capacity", int, "core")
    avail = _field(record, "capacity_avail", int, "core")
    if not 0 <= avail <= capacity:
        raise SnapshotError(f"core: available {avail} outside [0, {capacity}]")
    core.capacity = capacity
    core.capacity_avail = avail
    core.capacity_installed = _field(record, "capacity_installed", bool, "core")
    cgroups.release_agent = _field(record, "release_agent", str, "core")
    cgroups.sane_behavior = _field(record, "sane_behavior", bool, "core")
    version = record.get("hierarchy", 1)
    if version != cgroups.version:
        raise SnapshotError(f"core: a cgroup-v{version} state cannot load into a "
                            f"cgroup-v{cgroups.version} hierarchy")
    _controller(core).restore_warned_negative(_field(record, "warned_negative", bool, "core"))


_INT_OR_NONE = (int, type(None))


def _load_cgroups(snapshot: Record, cgroups: Hierarchy) -> dict[int, Cgroup]:
    by_id: dict[int, Cgroup] = {}
    for i, rec in enumerate(_records(snapshot, "cgroups")):
        what = f"cgroup record {i}"
        cid = _field(rec, "id", int, what)
        if cid in by_id:
            raise SnapshotError(f"{what}: duplicate id {cid}")
        parent_id = _field(rec, "parent", _INT_OR_NONE, what)
        name = _field(rec, "name", str, what)
        removed = _field(rec, "removed", bool, what)
        if parent_id is None:
            if by_id:
                raise SnapshotError(f"{what}: a second root")
            cg = cgroups.root
        else:
            parent = by_id.get(parent_id)
            if parent is None:
                raise SnapshotError(f"{what}: parent {parent_id} not defined before it")
            if not name or "/" in name:
                raise SnapshotError(f"{what}: invalid name {name!r}")
            cg = Cgroup(name, parent)
            if not removed:
                if is_removed(parent) or name in parent.children:
                    raise SnapshotError(f"{what}: cannot place {name!r} under its parent")
                parent.children[name] = cg
        cg.limit = _field(rec, "limit", _INT_OR_NONE, what)
        cg.reserved = _field(rec, "reserved", int, what)
        cg.counter = _field(rec, "counter", int, what)
        cg.peak = _field(rec, "peak", int, what)
        cg.events = _field(rec, "events", int, what)
        cg.events_local = _field(rec, "events_local", int, what)
        cg.notify_on_release = _field(rec, "notify_on_release", bool, what)
        cg.clone_children = _field(rec, "clone_children", bool, what)
        cg.attrs = _attrs(rec.get("attrs", {}), what)
        _load_control(rec.get("control"), cg, what)
        by_id[cid] = cg
    if not by_id:
        raise SnapshotError("no root cgroup")
    return by_id


def _load_control(value: Any, cg: Cgroup, what: str) -> None:
    """The cgroup-v2 fields of a cgroup record (``control_record``; absent or ``None``: the
    defaults)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise SnapshotError(f"{what}: 'control' must be a mapping")
    names = _field(value, "subtree_control", list, what)
    if not all(isinstance(name, str) for name in names):
        raise SnapshotError(f"{what}: 'subtree_control' must list names")
    cg.subtree_control = frozenset(names)
    cg.threaded = _field(value, "threaded", bool, what)
    for name in ("max_depth", "max_descendants"):
        limit = _field(value, name, _INT_OR_NONE, what)
        if limit is not None and limit < 0:
            raise SnapshotError(f"{what}: {name!r} is negative")
        setattr(cg, name, limit)
    freeze = value.get("freeze", False)
    if not isinstance(freeze, bool):
        raise SnapshotError(f"{what}: 'freeze' must be a boolean")
    cg.freeze = freeze
    frozen_ns, since = value.get("frozen_ns", 0), value.get("frozen_since")
    if not isinstance(frozen_ns, int) or isinstance(frozen_ns, bool) or frozen_ns < 0:
        raise SnapshotError(f"{what}: 'frozen_ns' must be a count of nanoseconds")
    if since is not None and (not isinstance(since, int) or isinstance(since, bool)):
        raise SnapshotError(f"{what}: 'frozen_since' must be a time in nanoseconds")
    cg.frozen_ns, cg.frozen_since = frozen_ns, since


def _attrs(value: Any, what: str) -> dict[str, dict[str, int]]:
    ok = isinstance(value, dict) and all(
        isinstance(name, str) and isinstance(attrs, dict)
        and all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                for k, v in attrs.items())
        for name, attrs in value.items())
    if not ok:
        raise SnapshotError(f"{what}: 'attrs' must map file names to integer attributes")
    return {name: dict(attrs) for name, attrs in value.items()}


def _load_processes(
    snapshot: Record, cgroups: Hierarchy, by_id: dict[int, Cgroup]
) -> None:
    for i, rec in enumerate(_records(snapshot, "processes")):
        what = f"process record {i}"
        pid = _field(rec, "pid", int, what)
        if pid in cgroups.processes:
            raise SnapshotError(f"{what}: duplicate pid {pid}")
        cg = by_id.get(_field(rec, "cgroup", int, what))
        if cg is None or is_removed(cg):
            raise SnapshotError(f"{what}: pid {pid} in an unknown or removed cgroup")
        proc = Process(pid, _field(rec, "start_time", (int, float), what), cg,
                       _field(rec, "threads", int, what))
        cgroups.processes[pid] = proc
        cg.procs.add(proc)


def _load_sets(
    snapshot: Record, core: IoasidCore, cgroups: Hierarchy
) -> dict[int, IoasidSet]:
    sets: dict[int, IoasidSet] = {}
    dead: dict[tuple[int, float], Process] = {}
    for i, rec in enumerate(_records(snapshot, "sets")):
        what = f"set record {i}"
        sid = _field(rec, "id", int, what)
        if sid in sets or not 0 <= sid <= IOASID_MAX_VALUE:
            raise SnapshotError(f"{what}: duplicate or out-of-range id {sid}")
        try:
            set_type = IoasidSetType(_field(rec, "type", int, what))
        except ValueError:
            raise SnapshotError(f"{what}: unknown set type {rec['type']}") from None
        token = _load_token(rec.get("token"), cgroups, dead, what)
        if (token is None) != (set_type == IoasidSetType.NULL):
            raise SnapshotError(f"{what}: a {set_type.name} set with token {token!r}")
        ioasid_set = IoasidSet(sid, token, _field(rec, "quota", int, what), set_type)
        ioasid_set.reserved = _field(rec, "reserved", int, what)
        ioasid_set.nr_ioasids = _field(rec, "nr_ioasids", int, what)
        ioasid_set.free_requested = _field(rec, "free_requested", bool, what)
        sets[sid] = ioasid_set
        core.restore_set(ioasid_set)
    return sets


def _load_token(
    rec: Any, cgroups: Hierarchy, dead: dict[tuple[int, float], Process], what: str
) -> Process | None:
    if rec is None:
        return None
    if not isinstance(rec, dict):
        raise SnapshotError(f"{what}: token must be null or a mapping")
    pid = _field(rec, "pid", int, what)
    start = _field(rec, "start_time", (int, float), what)
    alive = _field(rec, "alive", bool, what)
    tracked = cgroups.processes.get(pid)
    if alive and tracked is not None and tracked.start_time == start:
        return tracked
    key = (pid, start)
    proc = dead.get(key)
    if proc is None:
        proc = dead[key] = Process(pid, start, cgroups.root)
        proc.alive = alive
    return proc


_STATES = {int(state): state for state in IoasidState}


def _ioasid_fields(rec: Any, what: str) -> tuple[int, int, IoasidState, int, int, Any, bool, bool]:
    """The fields of an IOASID record, checked. A fast path for well-formed records (a state
    may hold a million of them); the careful one names what is wrong."""
    try:
        fields = (rec["id"], rec["set"], _STATES[rec["state"]], rec["refs"], rec["spid"],
                  rec["cgroup"], rec["pooled"], rec["indexed"])
    except (KeyError, TypeError):
        fields = None
    if fields is not None:
        ioasid, sid, _, refs, spid, cgroup, pooled, indexed = fields
        if (type(ioasid) is int and type(sid) is int and type(refs) is int
                and type(rec["state"]) is int
                and type(spid) is int and (cgroup is None or type(cgroup) is int)
                and type(pooled) is bool and type(indexed) is bool):
            return fields
    for name in ("id", "set", "state", "refs", "spid"):
        _field(rec, name, int, what)
    _field(rec, "cgroup", _INT_OR_NONE, what)
    _field(rec, "pooled", bool, what)
    _field(rec, "indexed", bool, what)
    raise SnapshotError(f"{what}: unknown state {rec['state']}")


def _load_ioasids(
    snapshot: Record,
    core: IoasidCore,
    sets: dict[int, IoasidSet],
    by_id: dict[int, Cgroup],
    decode_private: Callable[[Any], Any],
) -> None:
    counts: dict[int, int] = dict.fromkeys(sets, 0)
    insert = core.ioasid_inserter()
    for i, rec in enumerate(_records(snapshot, "ioasids")):
        ioasid, sid, state, refs, spid, cgroup, pooled, indexed = _ioasid_fields(
            rec, f"IOASID record {i}")
        ioasid_set = sets.get(sid)
        if ioasid_set is None:
            raise SnapshotError(f"IOASID record {i}: IOASID {ioasid} in an unknown set")
        if not 0 <= ioasid <= IOASID_MAX_VALUE:
            raise SnapshotError(f"IOASID record {i}: IOASID {ioasid} out of range")
        data = IoasidData(ioasid, ioasid_set, decode_private(rec.get("private")))
        if not insert(ioasid, data):
            raise SnapshotError(f"IOASID record {i}: duplicate IOASID {ioasid}")
        data.state = state
        data.refs = refs
        data.spid = spid
        if cgroup is not None:
            charged = by_id.get(cgroup)
            if charged is None:
                raise SnapshotError(f"IOASID record {i}: charged to unknown cgroup {cgroup}")
            data.cgroup = charged
        data.pooled = pooled
        if indexed:
            ioasid_set.xa.add(ioasid)
            if spid != INVALID_IOASID and ioasid_set.spids.setdefault(spid, ioasid) != ioasid:
                raise SnapshotError(f"IOASID record {i}: SPID {spid} used twice in set {sid}")
        counts[sid] += 1
    for sid, count in counts.items():
        if sets[sid].nr_ioasids != count:
            raise SnapshotError(
                f"set {sid}: nr_ioasids {sets[sid].nr_ioasids} but {count} IOASIDs recorded"
            )
