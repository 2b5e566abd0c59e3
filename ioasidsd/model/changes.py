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
* ``ids``: IOASIDs changed (allocated, freed, referenced): one still allocated was written or
  changed, one absent was freed. After an allocation, the new ID; after a batch, its IDs (what
  changed, however large the set they belong to).
* ``ids_alike``: ``True`` when ``ids`` are exactly what one batch allocation made, changed by
  nothing since: each is live in its set's index with the fields of the first (state,
  references, SPID, charged cgroup, pooling) and no private data, so a consumer may read the
  first for all. ``False`` tells nothing.
* ``sets``: ids of IOASID sets changed as a whole (created, adopted, released): the set with
  all its IOASIDs.
* ``path``: for ``rmdir`` the removed cgroup's path, for ``rename`` the path it had before.
* ``orphans``: for ``orphans``, the whole new ``System.orphans`` (pid -> start time).
* ``refusal``: for a refused ``/dev/ioasid`` ioctl, who asked what and why it was refused
  (``Refusal``); the other fields then name what the refusal still changed (events counters),
  often nothing.

Values (limits, counters, names) are read from the model, which holds them; a record names what
to read. Records are immutable; sequences are tuples, mappings read-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import FrozenInstanceError, dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

from ioasidsd.model.errors import errno_name
from ioasidsd.model.hierarchy import Cgroup, Process

_EMPTY: Mapping[int, float] = MappingProxyType({})
_EMPTY_REQUEST: Mapping[str, int] = MappingProxyType({})
_new_change = tuple.__new__  # the named tuple's own ``__new__`` is a Python call


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


class _ChangeFields(NamedTuple):
    kind: ChangeKind
    cgroups: tuple[Cgroup, ...] = ()
    processes: tuple[Process, ...] = ()
    ids: tuple[int, ...] = ()
    sets: tuple[int, ...] = ()
    path: str | None = None
    orphans: Mapping[int, float] = _EMPTY
    refusal: Refusal | None = None
    ids_alike: bool = False


class Change(_ChangeFields):
    """One change to the model; see the module's documentation for what each field names.

    Any iterable may be passed for ``cgroups``, ``processes``, ``ids`` and ``sets`` (kept as
    tuples) and any mapping for ``orphans`` (kept read-only); ``kind`` may be given as its
    value (``"mkdir"``): ``ValueError`` for a name that is not a ``ChangeKind``. Assigning a
    field raises ``dataclasses.FrozenInstanceError``, as a frozen dataclass does; there are no
    other attributes. A typed named tuple rather than a dataclass: one is made for every
    ``/dev/ioasid`` ioctl, and a tuple is made in one step where a slotted dataclass sets its
    fields one by one (five times the cost).
    """

    __slots__ = ()

    def __new__(cls, kind: ChangeKind | str, cgroups: Iterable[Cgroup] = (),
                processes: Iterable[Process] = (), ids: Iterable[int] = (),
                sets: Iterable[int] = (), path: str | None = None,
                orphans: Mapping[int, float] = _EMPTY, refusal: Refusal | None = None,
                ids_alike: bool = False) -> Change:
        if orphans is not _EMPTY and not isinstance(orphans, MappingProxyType):
            orphans = MappingProxyType(dict(orphans))
        return _new_change(cls, (
            kind if type(kind) is ChangeKind else ChangeKind(kind),
            cgroups if type(cgroups) is tuple else tuple(cgroups),
            processes if type(processes) is tuple else tuple(processes),
            ids if type(ids) is tuple else tuple(ids),
            sets if type(sets) is tuple else tuple(sets),
            path, orphans, refusal, ids_alike))

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


def exact_change(kind: ChangeKind, cgroups: tuple[Cgroup, ...], processes: tuple[Process, ...],
                 ids: tuple[int, ...], sets: tuple[int, ...],
                 refusal: Refusal | None = None, ids_alike: bool = False) -> Change:
    """A ``Change`` from values already of the fields' types (a ``ChangeKind``, tuples), with no
    ``path`` or ``orphans``: nothing is converted or checked. For the hot path (one ``Change``
    per ioctl), where it costs a third of ``Change(...)``; equal to the ``Change`` made from
    the same values."""
    return _new_change(Change, (kind, cgroups, processes, ids, sets, None, _EMPTY, refusal,
                                ids_alike))



__all__ = ["Change", "ChangeKind", "Refusal", "exact_change"]
