"""The change feed: one typed record for every change made to the model.

``System`` (``ioasidsd.system``) hands a ``Change`` to ``on_change`` under the model's lock,
after the change is made and before the call that made it returns; so do the daemon (kind
``vtd_boot``) and the VT-d driver (kind ``vtd_cleanup``, from the work queue). Consumers (the
durable store, experiment metrics, ``top``, a refusal log) read these records and the model; they
never need the model's private names or a table of key names.

The contract of a ``Change``:

* ``kind`` says what happened (``ChangeKind``); it never decides what a consumer must reread.
  What changed is named by the other fields, whatever the kind, so that a new kind needs no
  change in a consumer that only follows records.
* ``cgroups``: cgroups whose own state changed (created, limit, flags, attributes, name,
  counters, events); their ancestors' counters may have changed with them. For ``rmdir`` the
  first one is the removed cgroup, for ``attach`` the cgroup the process left.
* ``processes``: processes tracked, moved or gone (``alive`` tells), or the caller of a refused
  operation whose counters changed; with them the cgroups they are in and the sets they own.
* ``ids``: IOASIDs changed one by one (allocated, freed, referenced): one still allocated was
  written or changed, one absent was freed. After an allocation, the new ID.
* ``sets``: ids of IOASID sets changed as a whole (created, adopted, released) or whose IOASIDs
  changed in bulk: the set with all its IOASIDs.
* ``path``: for ``rmdir`` the removed cgroup's path, for ``rename`` the path it had before.
* ``orphans``: for ``orphans``, the whole new ``System.orphans`` (pid -> start time).
* ``refusal``: for a refused ``/dev/ioasid`` ioctl, who asked what and why it was refused
  (``Refusal``); the other fields then name what the refusal still changed (events counters),
  often nothing.

Values (limits, counters, names) are read from the model, which holds them; a record names what
to read. Records are immutable (frozen, slotted); sequences are tuples, mappings read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from ioasidsd.model.errors import errno_name
from ioasidsd.model.hierarchy import Cgroup, Process

_EMPTY: Mapping[int, float] = MappingProxyType({})
_EMPTY_REQUEST: Mapping[str, int] = MappingProxyType({})


class ChangeKind(StrEnum):
    """What a ``Change`` reports; the value is the name used in logs and journal messages."""

    MKDIR = "mkdir"
    """A cgroup was created (``cgroups``: it)."""
    RMDIR = "rmdir"
    """A cgroup was removed (``cgroups``: it; ``path``: where it was)."""
    RENAME = "rename"
    """A cgroup was renamed (``cgroups``: it; ``path``: its old path)."""
    LIMIT = "limit"
    """A write to ``ioasids.max`` changed a limit or reservation (``cgroups``: it)."""
    FLAG = "flag"
    """``notify_on_release`` or ``cgroup.clone_children`` changed (``cgroups``: it)."""
    CONTROL = "control"
    """A cgroup-v2 core file changed a cgroup: ``cgroup.subtree_control``, ``cgroup.type``,
    ``cgroup.max.depth`` or ``cgroup.max.descendants`` (``cgroups``: it and every cgroup whose
    controller state or counters changed with it)."""
    RELEASE_AGENT = "release_agent"
    """The root's ``release_agent`` changed (read it from the hierarchy)."""
    ATTACH = "attach"
    """A process moved (``processes``: it; ``cgroups``: the cgroup it left)."""
    FORK = "fork"
    """A tracked process forked (``processes``: the child)."""
    EXIT = "exit"
    """A tracked process exited (``processes``: it, no longer alive)."""
    ATTRS = "attrs"
    """File attributes of a cgroup changed (``cgroups``: it)."""
    PLACE = "place"
    """An untracked process was placed in the cgroup it belongs to (``processes``: it)."""
    ORPHANS = "orphans"
    """``System.orphans`` changed (``orphans``: the new mapping)."""
    SET = "set"
    """``/dev/ioasid`` opened or released (``sets``, ``ids``, ``cgroups``; ``processes`` on
    open)."""
    IOASID = "ioasid"
    """A ``/dev/ioasid`` ioctl, or a process's exit through it (``ids``, ``sets``,
    ``cgroups``); a refused ioctl carries a ``refusal``."""
    REFUSED = "refused"
    """A face that calls the core itself reports a refused call that still changed counters
    (``processes``: the caller)."""
    VTD_CLEANUP = "vtd_cleanup"
    """The VT-d driver's FREE cleanup on the work queue (``ids``: the PASID; ``cgroups``: the
    cgroup it was charged to)."""
    VTD_BOOT = "vtd_boot"
    """The VT-d driver booted over a restored state (``sets``: its host set)."""
    CAPACITY = "capacity"
    """The IOASID capacity was installed or changed (the core's scalars: nothing to name)."""
    SYNC = "sync"
    """Something changed that cannot be named: a consumer rereads everything."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused ``/dev/ioasid`` ioctl.

    ``pid``, ``uid``: the real process that made the request, and its uid if the face knows it
    (``None`` otherwise). ``command``: the ioctl's name (``REQUEST_ALLOC``; the number in hex
    for an unknown one). ``cgroup``: the path of the cgroup the caller was in. ``level``: the
    path of the cgroup whose ``ioasids.max`` refused the charge, when a limit refused it
    (``None`` for every other refusal). ``errno``: the error the caller got. ``request``: the
    request's arguments by name (see ``ioasid_uapi.request_fields``), read-only. ``message``:
    the model's explanation.
    """

    pid: int
    uid: int | None
    command: str
    cgroup: str
    level: str | None
    errno: int
    request: Mapping[str, int] = field(default_factory=lambda: _EMPTY_REQUEST)
    message: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.request, MappingProxyType):
            object.__setattr__(self, "request", MappingProxyType(dict(self.request)))

    @property
    def error(self) -> str:
        """The symbolic name of ``errno`` (``EAGAIN``)."""
        return errno_name(self.errno)


@dataclass(frozen=True, slots=True)
class Change:
    """One change to the model; see the module's documentation for what each field names.

    Any iterable may be passed for ``cgroups``, ``processes``, ``ids`` and ``sets`` (kept as
    tuples) and any mapping for ``orphans`` (kept read-only); ``kind`` may be given as its
    value (``"mkdir"``): ``ValueError`` for a name that is not a ``ChangeKind``.
    """

    kind: ChangeKind
    cgroups: tuple[Cgroup, ...] = ()
    processes: tuple[Process, ...] = ()
    ids: tuple[int, ...] = ()
    sets: tuple[int, ...] = ()
    path: str | None = None
    orphans: Mapping[int, float] = field(default_factory=lambda: _EMPTY)
    refusal: Refusal | None = None

    def __post_init__(self) -> None:
        if (type(self.kind) is ChangeKind and type(self.cgroups) is tuple
                and type(self.processes) is tuple and type(self.ids) is tuple
                and type(self.sets) is tuple and self.orphans is _EMPTY):
            return  # what System passes: nothing to convert (a Change per ioctl)
        setter = object.__setattr__
        if type(self.kind) is not ChangeKind:
            setter(self, "kind", ChangeKind(self.kind))
        for name in ("cgroups", "processes", "ids", "sets"):
            values = getattr(self, name)
            if type(values) is not tuple:
                setter(self, name, tuple(values))
        if self.orphans is not _EMPTY and not isinstance(self.orphans, MappingProxyType):
            setter(self, "orphans", MappingProxyType(dict(self.orphans)))


_SLOT_SETTERS = tuple(Change.__dict__[name].__set__ for name in
                      ("kind", "cgroups", "processes", "ids", "sets", "path", "orphans",
                       "refusal"))


def exact_change(kind: ChangeKind, cgroups: tuple[Cgroup, ...], processes: tuple[Process, ...],
                 ids: tuple[int, ...], sets: tuple[int, ...],
                 refusal: Refusal | None = None) -> Change:
    """A ``Change`` from values already of the fields' types (a ``ChangeKind``, tuples), with no
    ``path`` or ``orphans``: nothing is converted or checked. For the hot path (one ``Change``
    per ioctl), where it costs a quarter of ``Change(...)``; equal to the ``Change`` made from
    the same values."""
    change = _new_change(Change)
    k, c, p, i, s, path, orphans, r = _SLOT_SETTERS
    k(change, kind)
    c(change, cgroups)
    p(change, processes)
    i(change, ids)
    s(change, sets)
    path(change, None)
    orphans(change, _EMPTY)
    r(change, refusal)
    return change


_new_change = object.__new__

__all__ = ["Change", "ChangeKind", "Refusal", "exact_change"]
