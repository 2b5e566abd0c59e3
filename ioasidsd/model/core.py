"""The IOASID core (``drivers/iommu/ioasid.c`` of the V4 series), as one object.

``IoasidCore`` holds the system-wide capacity, the IOASID sets, every live IOASID with its state,
reference count, private data and set-private ID, the notifier chains and the shared ordered work
queue. Method names follow the kernel's without the ``ioasid_`` prefix (``ioasid_set_alloc`` is
``set_alloc``, ``ioasid_get_locked`` is ``get_locked``).

Conventions:

* Failures raise ``IoasidError`` with the kernel's errno and change nothing. Where the kernel
  returns ``INVALID_IOASID`` or only logs (``ioasid_alloc``, ``ioasid_free``), the model raises
  the errno that names the cause; faces that must behave like V4 map it back (for example the
  ``v4`` user API answers ``-EINVAL`` for every ALLOC failure).
* "The calling task" of the kernel (``current``) is the ``task`` argument: a ``Process`` of the
  cgroup controller, or ``None`` for kernel context (a worker thread in the root cgroup).
* One re-entrant lock (``core.lock``, a ``ModelLock``) protects the core and the cgroup
  controller; the VT-d driver and the faces use the same lock. Notifier callbacks run under it,
  as under the kernel's spinlock: from a callback only the ``*_locked`` forms may be called, the
  others raise ``EDEADLK``.
* Deferred work (``queue_work``: FREE cleanups, notifier-driven teardown) runs as the work
  queue's mode says. In ``step`` mode, the default, it runs when the outermost call returns:
  the last release of ``core.lock`` runs everything queued, in order, on the calling thread,
  before the call returns to its face (whether the call returned or raised). A face that holds
  ``core.lock`` around several calls is one outermost call. See ``ioasidsd.model.workqueue``.
* Behaviour that differs between the ``fixed`` and ``v4`` profiles is chosen by ``core.knobs``.
"""

from __future__ import annotations

import collections
import enum
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from errno import EACCES, EAGAIN, EBUSY, EDEADLK, EDQUOT, EEXIST, EINVAL, ENOENT, ENOSPC, EPERM
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ioasidsd.model.errors import IoasidError
from ioasidsd.model.idspace import IdLookup, IdSpace
from ioasidsd.model.knobs import Knobs
from ioasidsd.model.modellock import ModelLock, hold, let_go
from ioasidsd.model.notifier import (
    IOASID_NOTIFY_FLAG_ALL,
    IOASID_NOTIFY_FLAG_SET,
    IoasidNbArgs,
    IoasidNotify,
    NotifierBlock,
    NotifierChain,
)
from ioasidsd.model.workqueue import OrderedWorkQueue, Work

if TYPE_CHECKING:
    from ioasidsd.model.hierarchy import Cgroup
    from ioasidsd.model.ioasids import IoasidsController

INVALID_IOASID = 0xFFFFFFFF
PCI_PASID_MAX = 0x100000
IOASID_MAX_VALUE = 0xFFFFFFFE


class IoasidState(enum.IntEnum):
    """``enum ioasid_state``."""

    IDLE = 0
    ACTIVE = 1
    FREE_PENDING = 2


class IoasidSetType(enum.IntEnum):
    """``enum ioasid_set_type``; 0 is not a valid type."""

    NULL = 1
    MM = 2
    NR = 3


_MM = IoasidSetType.MM
_NULL = IoasidSetType.NULL
_NR = IoasidSetType.NR
_IDLE = IoasidState.IDLE
_ACTIVE = IoasidState.ACTIVE
_FREE_PENDING = IoasidState.FREE_PENDING


class IoasidSet:
    """``struct ioasid_set``: a pool of IOASIDs with a token, a type, a quota and a chain.

    ``xa`` is the set's index: the IOASIDs listed in it (their records are in the core);
    ``nr_ioasids`` counts the IDs that still hold the set alive (it includes FREE_PENDING ones).
    ``reserved`` is the capacity this set took from the pool (its quota). A set is valid while
    the core still registers it.
    """

    __slots__ = (
        "free_requested",
        "id",
        "nh",
        "nr_ioasids",
        "quota",
        "reserved",
        "spids",
        "token",
        "type",
        "xa",
    )

    def __init__(self, set_id: int, token: Any, quota: int, set_type: IoasidSetType) -> None:
        self.id = set_id
        self.token = token
        self.type = set_type
        self.quota = quota
        self.reserved = quota
        self.nr_ioasids = 0
        self.nh = NotifierChain()
        self.xa: set[int] = set()
        self.spids: dict[int, int] = {}  # SPID -> IOASID, for the IOASIDs in ``xa``
        self.free_requested = False

    def __repr__(self) -> str:
        return (
            f"IoasidSet(id={self.id}, type={self.type.name}, quota={self.quota}, "
            f"nr_ioasids={self.nr_ioasids})"
        )


class IoasidData:
    """``struct ioasid_data``: one live IOASID.

    ``cgroup`` is the cgroup charged for it (``None`` when nothing was charged) and ``pooled``
    says whether it drew one unit from the capacity pool at allocation (see ``IoasidCore.alloc``).
    """

    __slots__ = ("cgroup", "id", "pooled", "private", "refs", "set", "spid", "state")

    def __init__(self, ioasid: int, ioasid_set: IoasidSet, private: Any) -> None:
        self.id = ioasid
        self.set = ioasid_set
        self.private = private
        self.refs = 1
        self.state = _IDLE
        self.spid = INVALID_IOASID
        self.cgroup: Cgroup | None = None
        self.pooled = False

    def __repr__(self) -> str:
        return (
            f"IoasidData(id={self.id}, set={self.set.id}, state={self.state.name}, "
            f"refs={self.refs}, spid={self.spid:#x})"
        )


@dataclass(eq=False)
class AllocatorOps:
    """``struct ioasid_allocator_ops``: a custom allocator.

    ``alloc(min, max, pdata)`` returns an ID in ``[min, max]`` or ``INVALID_IOASID``;
    ``free(id, pdata)`` gives one back. Allocators whose two functions are the same objects share
    one ID space (they are grouped).
    """

    alloc: Callable[[int, int, Any], int]
    free: Callable[[int, Any], None]
    pdata: Any = None


@dataclass(eq=False)
class _AllocatorGroup:
    alloc: Callable[[int, int, Any], int]
    free: Callable[[int, Any], None]
    ops: list[AllocatorOps] = field(default_factory=list)


@dataclass(eq=False)
class SetNb:
    """``struct ioasid_set_nb``: a registration by mm token, attached to a set when one exists."""

    token: Any
    nb: NotifierBlock
    set: IoasidSet | None = None
    active: bool = False


class IoasidCore:
    """The IOASID core: capacity, sets, IOASIDs, notifiers, the work queue.

    ``knobs`` chooses the semantics (see ``ioasidsd.model.knobs``). ``wq`` may be passed in, and
    is the core's for life: by default a ``step`` mode queue, whose work runs when the outermost
    call returns; the daemon passes a ``thread`` mode queue, tests that look at pending work a
    ``manual`` one. ``controller`` is attached by ``IoasidsController`` when one is created over
    this core; without it allocation is bounded only by quotas and capacity.

    Public state, written by the core only unless stated: ``capacity`` and ``capacity_avail``
    (the pool, 2.3; a snapshot load sets them), ``capacity_installed`` (whether
    ``install_capacity`` has run; a snapshot load sets it), ``notifier_depth`` (how many notifier
    callbacks are running, 0 outside any; a hot path's cheap test before
    ``check_not_in_notifier``), ``sets_by_id`` (a read-only live mapping, set id -> registered
    set), ``ioasid_index`` (a live index, every live IOASID -> its ``IoasidData``, read-only by
    its type), ``messages`` (what the kernel would have logged, newest last).
    """

    def __init__(self, knobs: Knobs | None = None, *, wq: OrderedWorkQueue | None = None) -> None:
        self.knobs = knobs or Knobs()
        self.wq = wq if wq is not None else OrderedWorkQueue()  # an empty queue is falsy
        self.lock = ModelLock(self.wq.call_returned, when=self.wq.due)
        self._due = self.wq.due  # what the hottest calls test before ``lock.finish()``
        self.capacity = PCI_PASID_MAX
        self.capacity_avail = PCI_PASID_MAX
        self.capacity_installed = False
        self._sets: dict[int, IoasidSet] = {}
        self.sets_by_id: Mapping[int, IoasidSet] = MappingProxyType(self._sets)
        # MM sets by token, each list in registration order (as ``_sets`` iterates): the
        # lookup of a process's set on every open and exit, without a scan of every set
        self._mm_sets: dict[Any, list[IoasidSet]] = {}
        self._mm_unhashable: list[IoasidSet] = []
        self._set_ids = IdSpace()  # set index allocation
        self._ids = IdSpace()  # every live IOASID -> its IoasidData (the active allocator's xa)
        self.ioasid_index: IdLookup = self._ids  # the same object: no call on a reader's path
        self._groups: list[_AllocatorGroup] = []
        self._active: _AllocatorGroup | None = None  # None: the default allocator
        self.notifier = NotifierChain()  # the global chain
        self._nb_pending: list[SetNb] = []
        self.controller: IoasidsController | None = None
        self.messages: collections.deque[str] = collections.deque(maxlen=512)
        self.notifier_depth = 0
        # Knobs are fixed for the life of a core; the hot paths read these copies.
        self._quota_zero_takes_all = self.knobs.set_quota_zero_takes_all
        self._pool_per_id = self.knobs.capacity_model != "reserve-v4"
        self._free_null_set_fails = self.knobs.free_null_set_fails
        self._auto_destroy = self.knobs.set_lifetime == "auto"

    # ------------------------------------------------------------------ helpers
    def warn(self, message: str) -> None:
        """Record ``message`` as what the kernel would log (appended to ``messages``, which
        keeps the newest 512); the daemon forwards these to its log. Never raises."""
        self.messages.append(message)

    def check_not_in_notifier(self) -> None:
        """Refuse a lock-taking API from inside a notifier callback (the kernel would deadlock).

        Every lock-taking entry point, of the core or of a module over it (the controller, the
        hierarchy, ``/dev/ioasid``), calls this first. Raises ``IoasidError(EDEADLK)`` while a
        notifier callback runs (``notifier_depth`` > 0); otherwise does nothing.
        """
        if self.notifier_depth:
            raise IoasidError(EDEADLK, "called from a notifier callback: use the _locked form")

    def _data(self, ioasid: int, errno: int = ENOENT) -> IoasidData:
        data: IoasidData | None = self._ids.get(ioasid) if 0 <= ioasid < INVALID_IOASID else None
        if data is None:
            raise IoasidError(errno, f"IOASID {ioasid} is not allocated")
        return data

    def set_valid(self, ioasid_set: IoasidSet | None) -> bool:
        """Whether ``ioasid_set`` is still registered (a destroyed set is stale)."""
        return ioasid_set is not None and self._sets.get(ioasid_set.id) is ioasid_set

    def __contains__(self, ioasid: int) -> bool:
        return 0 <= ioasid < INVALID_IOASID and ioasid in self._ids

    def __len__(self) -> int:
        """The number of live IOASIDs (FREE_PENDING included)."""
        return len(self._ids)

    def data(self, ioasid: int) -> IoasidData:
        """The record of a live IOASID, for inspection; ``ENOENT`` if there is none."""
        return self._data(ioasid)

    def ioasids(self) -> Iterator[IoasidData]:
        """Every live IOASID record, in ascending order."""
        yield from self._ids.values()

    @property
    def sets(self) -> list[IoasidSet]:
        """The registered sets, by set id."""
        return [self._sets[k] for k in sorted(self._sets)]

    def restore_set(self, ioasid_set: IoasidSet) -> None:
        """Register ``ioasid_set``, rebuilt from a snapshot, under its own id (for
        ``ioasidsd.model.snapshot`` only; the caller holds ``lock``). Nothing is checked or
        accounted beyond the id: quota, reservation and counts are the caller's to restore
        consistently. ``ValueError`` if a set with that id is registered or the id is out of
        range; nothing changes then."""
        sid = ioasid_set.id
        if sid in self._sets or not self._set_ids.insert(sid, True):
            raise ValueError(f"set id {sid} is taken or out of range")
        self._sets[sid] = ioasid_set
        self._index_mm_set(ioasid_set)

    def ioasid_inserter(self) -> Callable[[int, IoasidData], bool]:
        """The function that places an IOASID record, rebuilt from a snapshot, in the index
        of live IOASIDs (for ``ioasidsd.model.snapshot`` only; the caller holds ``lock``):
        ``insert(ioasid, data)`` returns ``False``, changing nothing, when ``ioasid`` is live
        or out of range. Nothing is accounted (set counts, capacity, charges): that is the
        caller's to restore consistently. Returned once per load, so that a large load pays
        no extra call per IOASID."""
        return self._ids.insert

    @property
    def reserved(self) -> int:
        """Capacity taken from the pool: set quotas, cgroup reservations, pooled IOASIDs."""
        return self.capacity - self.capacity_avail

    # ------------------------------------------------------------------ capacity
    def install_capacity(self, total: int) -> None:
        """Set the system capacity (``ioasid_install_capacity``).

        ``v4``: ignored with a warning once the capacity differs from the default
        0x100000; otherwise capacity and available both become ``total``, which discards earlier
        reservations. ``fixed``: possible once; available becomes ``total`` minus what is
        already reserved. Raises ``EINVAL`` for a negative or too large total, ``EBUSY`` if
        already installed (fixed) and ``ENOSPC`` if reservations exceed ``total`` (fixed).
        """
        with self.lock:
            self.check_not_in_notifier()
            if not 0 <= total <= IOASID_MAX_VALUE + 1:
                raise IoasidError(EINVAL, f"capacity {total} out of range")
            if self.knobs.install_capacity_resets:
                if self.capacity and self.capacity != PCI_PASID_MAX:
                    self.warn(f"capacity already set to {self.capacity}")
                    return
                self.capacity = self.capacity_avail = total
                return
            if self.capacity_installed:
                raise IoasidError(EBUSY, f"capacity already installed ({self.capacity})")
            reserved = self.capacity - self.capacity_avail
            if reserved > total:
                raise IoasidError(ENOSPC, f"{reserved} already reserved, more than {total}")
            self.capacity = total
            self.capacity_avail = total - reserved
            self.capacity_installed = True

    def reserve_capacity(self, nr: int) -> int:
        """Take ``nr`` from the available capacity (0: all of it); returns the amount taken.

        Raises ``ENOSPC`` if fewer than ``nr`` are available, ``EINVAL`` if ``nr`` < 0.
        """
        with self.lock:
            self.check_not_in_notifier()
            return self.reserve_capacity_locked(nr)

    def reserve_capacity_locked(self, nr: int) -> int:
        """``reserve_capacity`` for a caller that holds ``core.lock``."""
        if nr < 0:
            raise IoasidError(EINVAL, f"cannot reserve {nr}")
        if nr > self.capacity_avail:
            raise IoasidError(ENOSPC, f"{nr} requested, {self.capacity_avail} available")
        if nr == 0:
            nr = self.capacity_avail
        self.capacity_avail -= nr
        return nr

    def cancel_capacity(self, nr: int) -> int:
        """Give ``nr`` back to the pool; returns the new available count.

        Raises ``EINVAL`` if that would exceed the capacity or ``nr`` < 0.
        """
        with self.lock:
            self.check_not_in_notifier()
            return self.cancel_capacity_locked(nr)

    def cancel_capacity_locked(self, nr: int) -> int:
        """``cancel_capacity`` for a caller that holds ``core.lock``."""
        if nr < 0 or nr + self.capacity_avail > self.capacity:
            raise IoasidError(
                EINVAL, f"cannot return {nr}: {self.capacity_avail} of {self.capacity} available"
            )
        self.capacity_avail += nr
        return self.capacity_avail

    # ------------------------------------------------------------------ sets
    def set_alloc(self, token: Any, quota: int, set_type: int) -> IoasidSet:
        """Create a set (``ioasid_set_alloc``).

        Errors, checked in the kernel's order: ``EINVAL`` for a type outside NULL/MM; ``ENOSPC``
        if ``quota`` exceeds the available capacity; ``EINVAL`` for an MM set without a token or
        a NULL set with one; ``EEXIST`` for a second MM set with the same token; ``ENOSPC`` if no
        set index is free. Quota 0 means, in ``v4``, "take everything available" (and
        set indexes are bounded by the capacity available); in ``fixed``, "no quota of its own":
        the set reserves nothing and its IDs are bounded by capacity and cgroups.
        """
        with self.lock:
            self.check_not_in_notifier()
            return self.set_alloc_locked(token, quota, set_type)

    def set_alloc_locked(self, token: Any, quota: int, set_type: int) -> IoasidSet:
        """``set_alloc`` for a caller that holds ``lock`` (and is not a notifier callback)."""
        if not isinstance(set_type, int) or set_type >= _NR:
            raise IoasidError(EINVAL, f"invalid set type {set_type}")
        if quota < 0:
            raise IoasidError(EINVAL, f"invalid quota {quota}")
        takes_all = self.knobs.set_quota_zero_takes_all
        quota = self._set_quota(quota, takes_all)
        if set_type == _MM:
            if token is None:
                raise IoasidError(EINVAL, "an MM set needs a token")
            if self.find_mm_set_locked(token) is not None:
                raise IoasidError(EEXIST, "an MM set for this mm exists")
        elif set_type == _NULL:
            if token is not None:
                raise IoasidError(EINVAL, "a NULL set takes no token")
        else:
            raise IoasidError(EINVAL, f"invalid set type {set_type}")
        return self._register_set(token, quota, set_type if type(set_type) is IoasidSetType
                                  else IoasidSetType(set_type), takes_all)

    def mm_set_alloc_locked(self, token: Any) -> IoasidSet:
        """``set_alloc_locked(token, 0, MM)`` for a caller that has just found, under the same
        hold of ``lock``, that ``token`` has no MM set (``find_mm_set_locked`` gave ``None``):
        the same set and the same errors, without looking for one again. The open of
        ``/dev/ioasid``, for every process."""
        takes_all = self.knobs.set_quota_zero_takes_all
        quota = self._set_quota(0, takes_all)
        if token is None:
            raise IoasidError(EINVAL, "an MM set needs a token")
        return self._register_set(token, quota, _MM, takes_all)

    def _set_quota(self, quota: int, takes_all: bool) -> int:
        """The quota a new set gets for ``quota`` (0 takes everything available when
        ``takes_all``); ``ENOSPC``, with a warning, when it exceeds the available capacity."""
        if quota == 0 and takes_all:
            quota = self.capacity_avail
        if quota > self.capacity_avail:
            self.warn(f"set quota {quota} exceeds available {self.capacity_avail}")
            raise IoasidError(ENOSPC, f"quota {quota}, {self.capacity_avail} available")
        return quota

    def _register_set(self, token: Any, quota: int, set_type: IoasidSetType,
                      takes_all: bool) -> IoasidSet:
        """The end of ``set_alloc_locked``, once the arguments are checked: a set index
        (``ENOSPC`` when none is free), the set, registered, its quota taken from the pool and
        the pending notifier blocks of its token on its chain."""
        bound = self.capacity_avail if takes_all else IOASID_MAX_VALUE
        set_id = self._set_ids.alloc(0, bound, True)
        if set_id < 0:
            raise IoasidError(ENOSPC, "no free set index")
        ioasid_set = IoasidSet(set_id, token, quota, set_type)
        self._sets[set_id] = ioasid_set
        self._index_mm_set(ioasid_set)
        self.capacity_avail -= quota
        if set_type == _MM:
            for rec in self._nb_pending:
                if not rec.active and rec.token == token:
                    ioasid_set.nh.register(rec.nb)
                    rec.set = ioasid_set
                    rec.active = True
        return ioasid_set

    def set_free(self, ioasid_set: IoasidSet, *, when_empty: bool = False) -> bool:
        """Destroy an empty set (``ioasid_set_free``); returns whether it is gone now.

        Raises ``EINVAL`` for a stale set and ``EBUSY`` if it still counts IOASIDs. With
        ``when_empty=True`` (the later Intel tree's ``free_pending``, used by release paths in the
        ``fixed`` profile) a busy set is instead marked and destroyed when its count reaches 0.
        """
        with self.lock:
            self.check_not_in_notifier()
            return self.set_free_locked(ioasid_set, when_empty=when_empty)

    def set_free_locked(self, ioasid_set: IoasidSet, *, when_empty: bool = False) -> bool:
        """``set_free`` for a caller that holds ``lock`` (and is not a notifier callback)."""
        if not self.set_valid(ioasid_set):
            raise IoasidError(EINVAL, "stale or unknown set")
        if ioasid_set.nr_ioasids:
            if when_empty:
                ioasid_set.free_requested = True
                return False
            raise IoasidError(EBUSY, f"set {ioasid_set.id} holds {ioasid_set.nr_ioasids}")
        self._destroy_set(ioasid_set)
        return True

    def _destroy_set(self, ioasid_set: IoasidSet) -> None:
        if ioasid_set.xa:
            self.warn(f"set {ioasid_set.id} destroyed with IDs in its index")
        for rec in self._nb_pending:
            if rec.active and rec.set is ioasid_set:
                rec.active = False
                rec.set = None
        del self._sets[ioasid_set.id]
        if ioasid_set.type == _MM:
            token = ioasid_set.token
            try:  # taken out, and put back if other sets of the token remain: one lookup
                same = self._mm_sets.pop(token, None)
            except TypeError:
                same = self._mm_unhashable
            if same is not None:
                if ioasid_set in same:
                    same.remove(ioasid_set)
                if same and same is not self._mm_unhashable:
                    self._mm_sets[token] = same
        self._set_ids.remove(ioasid_set.id)
        if not self.knobs.set_quota_leak and ioasid_set.reserved:
            self.capacity_avail += ioasid_set.reserved
            ioasid_set.reserved = 0

    def find_mm_set_locked(self, token: Any) -> IoasidSet | None:
        """``find_mm_set`` for a caller that holds ``lock``: the registered MM set whose token
        equals ``token``, or ``None``. Takes no lock and never raises."""
        try:
            same = self._mm_sets.get(token)
        except TypeError:  # unhashable: compared with the sets whose tokens are too
            same = [s for s in self._mm_unhashable if s.token == token]
        return same[0] if same else None

    def _index_mm_set(self, ioasid_set: IoasidSet) -> None:
        if ioasid_set.type == _MM and ioasid_set.token is not None:
            try:
                self._mm_sets.setdefault(ioasid_set.token, []).append(ioasid_set)
            except TypeError:
                self._mm_unhashable.append(ioasid_set)

    def find_mm_set(self, token: Any) -> IoasidSet | None:
        """The MM set whose token is ``token``, or ``None`` (``ioasid_find_mm_set``)."""
        with self.lock:
            return self.find_mm_set_locked(token)

    def find_set(self, ioasid: int) -> IoasidSet:
        """The set of a live IOASID (``ioasid_find_set``); ``ENOENT`` if unknown."""
        return self._data(ioasid).set

    def set_for_each_ioasid(
        self, ioasid_set: IoasidSet, fn: Callable[[int, Any], None], data: Any = None
    ) -> None:
        """Call ``fn(id, data)`` for every IOASID in the set's index, ascending. Takes no lock."""
        for ioasid in sorted(ioasid_set.xa):
            fn(ioasid, data)

    def set_members(self, ioasid_set: IoasidSet) -> list[IoasidData]:
        """The records of the IOASIDs in the set's index, ascending."""
        ids = self._ids
        return [ids.get(i) for i in sorted(ioasid_set.xa)]

    # ------------------------------------------------------------------ allocation
    def alloc(
        self,
        ioasid_set: IoasidSet | None,
        lo: int,
        hi: int,
        private: Any = None,
        *,
        task: Any = None,
    ) -> int:
        """Allocate the lowest free IOASID in ``[lo, hi]`` for ``ioasid_set`` (``ioasid_alloc``).

        For an MM set the calling ``task`` is charged to its cgroup first. Raises, changing
        nothing: ``EINVAL`` for a missing or stale set or a bad range; the charge's ``EINVAL``
        (no task), ``EPERM`` (the task does not own the set) or ``EAGAIN`` (a cgroup limit);
        ``EDQUOT`` when the set's quota is used up; ``ENOSPC`` when no capacity is left or no
        value in the range is free. In ``v4`` a quota refusal keeps the charge.
        Emits ALLOC on the set's chain.
        """
        lock = self.lock
        hold(lock)  # not ``with``: this is every allocation (see ``ioasidsd.model.modellock``)
        try:
            if self.notifier_depth:  # the call only when it refuses
                self.check_not_in_notifier()
            return self.alloc_locked(ioasid_set, lo, hi, private, task=task)
        finally:
            let_go(lock)
            if self._due:
                lock.finish()

    def alloc_locked(
        self,
        ioasid_set: IoasidSet | None,
        lo: int,
        hi: int,
        private: Any = None,
        *,
        task: Any = None,
    ) -> int:
        """``alloc`` for a caller that holds ``core.lock`` (and is not a notifier callback)."""
        if ioasid_set is None or self._sets.get(ioasid_set.id) is not ioasid_set:
            raise IoasidError(EINVAL, "no such set (NULL or destroyed)")
        if ioasid_set.free_requested:
            raise IoasidError(EINVAL, f"set {ioasid_set.id} is being freed")
        if lo < 0 or hi < lo or lo > IOASID_MAX_VALUE:
            raise IoasidError(EINVAL, f"bad range [{lo}, {hi}]")
        charge = charged = None
        covered = ioasid_set.reserved > 0
        controller = self.controller
        if ioasid_set.type is _MM and controller is not None:
            charge = controller.charge_alloc(ioasid_set, task)
            charged, _, charge_covered, _ = charge  # unpacked: cheaper than two attribute reads
            covered = covered or charge_covered
        quota = ioasid_set.quota
        if (quota or self._quota_zero_takes_all) and quota <= ioasid_set.nr_ioasids:
            if charge is not None and not self.knobs.charge_leak_on_failure:
                controller.cancel_charge(charge)  # type: ignore[union-attr]
            self.warn(f"set {ioasid_set.id} out of quota {quota}")
            raise IoasidError(EDQUOT, f"set {ioasid_set.id} quota {quota} used up")
        pooled = not covered and self._pool_per_id
        if pooled and self.capacity_avail <= 0:
            if charge is not None:
                controller.cancel_charge(charge)  # type: ignore[union-attr]
            raise IoasidError(ENOSPC, "no IOASID capacity available")
        data = IoasidData(-1, ioasid_set, private)
        if self._active is None:
            ioasid = self._ids.alloc(lo, hi, data)
        else:
            ioasid = self._custom_alloc(lo, hi, data)
        if ioasid < 0:
            if charge is not None:
                controller.cancel_charge(charge)  # type: ignore[union-attr]
            raise IoasidError(ENOSPC, f"no free IOASID in [{lo}, {hi}]")
        data.id = ioasid
        data.cgroup = charged
        if pooled:
            data.pooled = True
            self.capacity_avail -= 1
        ioasid_set.xa.add(ioasid)
        ioasid_set.nr_ioasids += 1
        if ioasid_set.nh:
            self._notify(IoasidNotify.ALLOC, data, IOASID_NOTIFY_FLAG_SET)
        return ioasid

    def alloc_many_locked(self, ioasid_set: IoasidSet | None, lo: int, hi: int, count: int, *,
                          task: Any = None) -> array[int] | None:
        """``count`` IDs of ``ioasid_set`` in ``[lo, hi]``, each the lowest free, with no
        private data: what ``count`` ``alloc_locked`` calls would return, in order, made at a
        fraction of their cost. For a caller holding ``core.lock``.

        ``None``, with nothing changed, when the calls could not all be made this way: one of
        them would be refused (a stale or freeing set, a bad range, the set's quota, a limit,
        the capacity, no free ID left in the range), the set has notifier blocks to call, or a
        custom allocator is active. The caller then makes the calls one by one, which refuse,
        warn and count exactly as they always do.
        """
        if (ioasid_set is None or self._sets.get(ioasid_set.id) is not ioasid_set
                or ioasid_set.free_requested
                or ioasid_set.nh or self._active is not None
                or lo < 0 or hi < lo or lo > IOASID_MAX_VALUE or count <= 0):
            return None
        quota = ioasid_set.quota
        if (quota or self._quota_zero_takes_all) and quota < ioasid_set.nr_ioasids + count:
            return None
        charge = None
        charged = None
        covered = ioasid_set.reserved > 0
        controller = self.controller
        if ioasid_set.type is _MM and controller is not None:
            charge = controller.charge_alloc_many(ioasid_set, task, count)
            if charge is None:
                return None
            charged = charge.cgroup
            covered = covered or charge.covered
        pooled = not covered and self._pool_per_id
        if pooled and self.capacity_avail < count:
            if charge is not None:
                controller.cancel_charge(charge)  # type: ignore[union-attr]
            return None
        ids: array[int] = array("I")
        take = self._ids.alloc
        add = ids.append
        for _ in range(count):
            data = IoasidData(-1, ioasid_set, None)
            ioasid = take(lo, hi, data)
            if ioasid < 0:  # the range ran out: give back what was taken
                for taken in ids:
                    self._ids.remove(taken)
                if charge is not None:
                    controller.cancel_charge(charge)  # type: ignore[union-attr]
                return None
            data.id = ioasid
            data.cgroup = charged
            if pooled:
                data.pooled = True
            add(ioasid)
        if pooled:
            self.capacity_avail -= count
        ioasid_set.xa.update(ids)
        ioasid_set.nr_ioasids += count
        return ids

    def _custom_alloc(self, lo: int, hi: int, data: IoasidData) -> int:
        group = self._active
        assert group is not None
        value = group.alloc(lo, hi, group.ops[0].pdata)
        if value == INVALID_IOASID or not lo <= value <= hi:
            return -1
        if not self._ids.insert(value, data):
            group.free(value, group.ops[0].pdata)
            return -1
        return value

    # ------------------------------------------------------------------ references
    def get(self, ioasid_set: IoasidSet | None, ioasid: int) -> None:
        """Take a reference (``ioasid_get``).

        Raises ``EINVAL`` for an unknown ID, ``EBUSY`` if it is FREE_PENDING, ``EACCES`` if
        ``ioasid_set`` is given and does not own it (checked in that order).
        """
        with self.lock:
            self.check_not_in_notifier()
            self.get_locked(ioasid_set, ioasid)

    def get_locked(self, ioasid_set: IoasidSet | None, ioasid: int) -> None:
        """``get`` for a caller holding ``core.lock``, e.g. a notifier callback."""
        data = self._data(ioasid, EINVAL)
        if data.state == IoasidState.FREE_PENDING:
            raise IoasidError(EBUSY, f"IOASID {ioasid} is being freed")
        if ioasid_set is not None and data.set is not ioasid_set:
            raise IoasidError(EACCES, f"IOASID {ioasid} belongs to another set")
        data.refs += 1
        if not self.knobs.active_state_unused:
            data.state = IoasidState.ACTIVE

    def get_if_owned(self, ioasid: int, task: Any) -> None:
        """Take a reference if ``task`` owns the ID's MM set (``ioasid_get_if_owned``).

        Raises ``ENOENT`` (unknown), ``EINVAL`` (not an MM set), ``EPERM`` (``task``'s mm is not
        the set's token), then what ``get_locked`` raises (``EBUSY``).
        """
        with self.lock:
            self.check_not_in_notifier()
            data = self._data(ioasid, ENOENT)
            if data.set.type != IoasidSetType.MM:
                raise IoasidError(EINVAL, f"IOASID {ioasid} is not in an MM set")
            if task is None or data.set.token != getattr(task, "mm", None):
                raise IoasidError(EPERM, f"IOASID {ioasid} is not owned by the caller")
            self.get_locked(data.set, ioasid)

    def put(self, ioasid_set: IoasidSet | None, ioasid: int, *, task: Any = None) -> bool:
        """Drop a reference (``ioasid_put``); ``True`` if that reclaimed the ID.

        Unknown IDs and a mismatching non-None set return ``False`` and change nothing (the
        kernel only logs). Reaching zero reclaims without any notification.
        """
        with self.lock:
            self.check_not_in_notifier()
            return self.put_locked(ioasid_set, ioasid, task=task)

    def put_locked(self, ioasid_set: IoasidSet | None, ioasid: int, *, task: Any = None) -> bool:
        """``put`` for a caller holding ``core.lock``, e.g. a notifier callback."""
        data = self._ids.get(ioasid) if 0 <= ioasid < INVALID_IOASID else None
        if data is None:
            self.warn(f"put of unknown IOASID {ioasid}")
            return False
        if ioasid_set is not None and data.set is not ioasid_set:
            self.warn(f"put of IOASID {ioasid} through a set that does not own it")
            return False
        data.refs -= 1
        if data.refs == 0:
            self._reclaim(data, task)
            return True
        if data.refs == 1 and data.state == IoasidState.ACTIVE:
            data.state = IoasidState.IDLE
        return False

    def free(self, ioasid_set: IoasidSet | None, ioasid: int, *, task: Any = None) -> None:
        """Request the release of an ID (``ioasid_free``).

        The core drops its own reference: if it was the last, the ID is reclaimed at once with no
        notification; otherwise it becomes FREE_PENDING and FREE is emitted on the global chain,
        then on the set's chain. A second free of a FREE_PENDING ID does nothing. Raises
        ``ENOENT`` for an unknown ID, ``EACCES`` when ``ioasid_set`` does not own it (in ``v4``
        a ``None`` set never matches; in ``fixed`` it skips the check) and ``EINVAL``
        when the owning set is no longer registered.
        """
        lock = self.lock
        hold(lock)  # not ``with``: this is every free (see ``ioasidsd.model.modellock``)
        try:
            if self.notifier_depth:  # the call only when it refuses
                self.check_not_in_notifier()
            self.free_locked(ioasid_set, ioasid, task=task)
        finally:
            let_go(lock)
            if self._due:
                lock.finish()

    def free_locked(self, ioasid_set: IoasidSet | None, ioasid: int, *, task: Any = None) -> None:
        """``free`` for a caller holding ``core.lock``."""
        data = self._ids.get(ioasid) if 0 <= ioasid < INVALID_IOASID else None
        if data is None:
            self.warn(f"free of unknown IOASID {ioasid}")
            raise IoasidError(ENOENT, f"IOASID {ioasid} is not allocated")
        owner = data.set
        if owner is not ioasid_set and (ioasid_set is not None or self._free_null_set_fails):
            self.warn(f"free of IOASID {ioasid} by a set that does not own it")
            raise IoasidError(EACCES, f"IOASID {ioasid} belongs to another set")
        if self._sets.get(owner.id) is not owner:
            self.warn(f"free of IOASID {ioasid} whose set is gone")
            raise IoasidError(EINVAL, f"the set of IOASID {ioasid} is no longer registered")
        if data.state is _FREE_PENDING:
            return
        data.state = _FREE_PENDING
        data.refs -= 1
        if data.refs == 0:
            self._reclaim(data, task)
        else:
            self._notify(IoasidNotify.FREE, data, IOASID_NOTIFY_FLAG_ALL | IOASID_NOTIFY_FLAG_SET)

    def free_many_locked(self, ioasid_set: IoasidSet | None, ids: Iterable[int], *,
                         task: Any = None) -> set[Any] | None:
        """``free_locked`` of each of ``ids`` (distinct IDs of ``ioasid_set``), made at once
        when that is sure to be the same as one by one: each ID live in the set, holding no
        reference but its allocation's and no SPID, no custom allocator active, and no
        uncharge that would warn. Returns the cgroups the IDs were charged to
        (``IoasidData.cgroup``, ``None`` among them for an ID charged nowhere). ``None``, with
        nothing changed, otherwise: the caller then frees them one by one, which refuses,
        warns and notifies exactly as it always does. For a caller holding ``core.lock``."""
        if ioasid_set is None:
            return None
        if self._sets.get(ioasid_set.id) is not ioasid_set or self._active is not None:
            return None
        get = self._ids.get
        datas: list[IoasidData] = []
        for ioasid in ids:
            data = get(ioasid) if 0 <= ioasid < INVALID_IOASID else None
            if (data is None or data.set is not ioasid_set or data.refs != 1
                    or data.state is _FREE_PENDING or data.spid != INVALID_IOASID):
                return None
            datas.append(data)
        charged = {data.cgroup for data in datas}
        controller = self.controller
        if (ioasid_set.type is _MM and controller is not None
                and not controller.uncharge_reclaim_many(datas, task)):
            return None
        remove = self._ids.remove
        pooled = 0
        for data in datas:
            data.state = _FREE_PENDING
            data.refs = 0
            remove(data.id)
            if data.pooled:
                pooled += 1
        ioasid_set.nr_ioasids -= len(datas)
        self.capacity_avail += pooled
        ioasid_set.xa.difference_update(ids)
        # registered, as checked first (nothing here destroys a set): gone with its last ID
        if ioasid_set.nr_ioasids == 0 and (self._auto_destroy or ioasid_set.free_requested):
            self._destroy_set(ioasid_set)
        return charged

    def free_all_in_set(self, ioasid_set: IoasidSet, *, task: Any = None) -> None:
        """Free every ID of the set's index, ascending (``ioasid_free_all_in_set``).

        Returns silently for a stale or empty set. In ``v4`` IDs that stay
        FREE_PENDING are removed from the index while they still count against the set.
        """
        with self.lock:
            self.check_not_in_notifier()
            self.free_all_in_set_locked(ioasid_set, task=task)

    def free_all_in_set_locked(self, ioasid_set: IoasidSet, *, task: Any = None) -> None:
        """``free_all_in_set`` for a caller that holds ``lock`` (and is not a notifier
        callback)."""
        if not self.set_valid(ioasid_set) or not ioasid_set.xa or not ioasid_set.nr_ioasids:
            return
        hide = self.knobs.free_all_hides_pending
        for ioasid in sorted(ioasid_set.xa):
            data = self._ids.get(ioasid)
            if data is None or data.set is not ioasid_set:
                continue
            if not self.set_valid(ioasid_set):
                break  # the set went with its last IOASID (auto lifetime)
            self.free_locked(ioasid_set, ioasid, task=task)
            if hide and ioasid in ioasid_set.xa:
                ioasid_set.xa.discard(ioasid)  # hidden from iteration and SPID checks
                self._unindex_spid(data)

    def release_set_locked(self, ioasid_set: IoasidSet, *, task: Any = None,
                           charged: set[Cgroup] | None = None) -> bool:
        """``free_all_in_set_locked`` and then, if the set is still registered,
        ``set_free_locked`` (with or without ``when_empty``: the same here), made at once when
        that is sure to free every ID of the set and destroy it: the set registered, its count
        that of its index (no FREE_PENDING ID hidden from it), each ID live in it with no
        reference but its allocation's. The IDs are reclaimed ascending, each as ``free_locked``
        reclaims an ID's last reference (its uncharge, which warns as it always does, its SPID,
        a custom allocator's free), then the set goes. ``False``, with nothing changed,
        otherwise: the caller then makes the two calls. For a caller holding ``core.lock`` (and
        not a notifier callback): the release of a process's ``/dev/ioasid`` set, at every
        exit. ``charged``: a set the cgroups charged for the set's IDs are added to, before
        they are reclaimed, when the release is made (what its caller records as touched)."""
        xa = ioasid_set.xa
        if self._sets.get(ioasid_set.id) is not ioasid_set or ioasid_set.nr_ioasids != len(xa):
            return False
        get = self._ids.get
        datas = []
        for ioasid in (sorted(xa) if len(xa) > 1 else xa):
            data = get(ioasid)
            if (data is None or data.set is not ioasid_set or data.refs != 1
                    or data.state is _FREE_PENDING):
                return False
            datas.append(data)
        if charged is not None:
            for data in datas:
                cg = data.cgroup
                if cg is not None:
                    charged.add(cg)
        for data in datas:  # what ``free_locked`` does with an ID's last reference
            data.state = _FREE_PENDING
            data.refs = 0
            self._reclaim(data, task)
        if self._sets.get(ioasid_set.id) is ioasid_set:  # not gone with its last ID
            self._destroy_set(ioasid_set)
        return True

    def _reclaim(self, data: IoasidData, task: Any) -> None:
        """``ioasid_do_free_locked``: the last reference is gone."""
        ioasid = data.id
        ioasid_set = data.set
        group = self._active
        if group is not None:
            group.free(ioasid, group.ops[0].pdata)
        self._ids.remove(ioasid)
        data.state = _FREE_PENDING
        ioasid_set.nr_ioasids -= 1
        if data.pooled:
            self.capacity_avail += 1
        if ioasid_set.type is _MM and self.controller is not None:
            self.controller.uncharge_reclaim(data, task)
        ioasid_set.xa.discard(ioasid)
        if data.spid != INVALID_IOASID:
            self._unindex_spid(data)
        if (
            ioasid_set.nr_ioasids == 0
            and (self._auto_destroy or ioasid_set.free_requested)
            and self._sets.get(ioasid_set.id) is ioasid_set
        ):
            self._destroy_set(ioasid_set)

    # ------------------------------------------------------------------ private data
    def attach_data(self, ioasid: int, private: Any) -> None:
        """Attach private data (``ioasid_attach_data``).

        ``ENOENT`` for an unknown ID, ``EBUSY`` if non-None data is already attached.
        """
        with self.lock:
            self.check_not_in_notifier()
            data = self._data(ioasid)
            if data.private is not None:
                raise IoasidError(EBUSY, f"IOASID {ioasid} already has private data")
            data.private = private

    def detach_data(self, ioasid: int) -> None:
        """Clear private data (``ioasid_detach_data``). May sleep in the kernel, so it refuses
        to run from a notifier callback (``EDEADLK``). ``ENOENT`` for an unknown ID."""
        with self.lock:
            self.check_not_in_notifier()
            self._data(ioasid).private = None

    def find(
        self,
        ioasid_set: IoasidSet | None,
        ioasid: int,
        getter: Callable[[Any], bool] | None = None,
    ) -> Any:
        """The private data of an ID (``ioasid_find``), or ``None`` if unset or rejected by
        ``getter``. ``ENOENT`` for an unknown ID, ``EACCES`` for a foreign set."""
        data = self._data(ioasid)
        if ioasid_set is not None and data.set is not ioasid_set:
            raise IoasidError(EACCES, f"IOASID {ioasid} belongs to another set")
        private = data.private
        if private is not None and getter is not None and not getter(private):
            return None
        return private

    # ------------------------------------------------------------------ set-private IDs
    def attach_spid(self, ioasid: int, spid: int) -> None:
        """Attach a set-private ID (``ioasid_attach_spid``) and emit BIND on the set's chain.

        ``EINVAL`` for ``INVALID_IOASID`` or a SPID already used in the set (by any ID of its
        index, this one included); ``ENOENT`` for an unknown ID.
        """
        if spid == INVALID_IOASID or not 0 <= spid <= INVALID_IOASID:
            raise IoasidError(EINVAL, f"invalid SPID {spid:#x}")
        with self.lock:
            self.check_not_in_notifier()
            data = self._data(ioasid)
            spids = data.set.spids
            if spid in spids:
                raise IoasidError(EINVAL, f"SPID {spid} already used in set {data.set.id}")
            if spids.get(data.spid) == ioasid:
                del spids[data.spid]  # re-attaching replaces the ID's previous SPID
            if ioasid in data.set.xa:
                spids[spid] = ioasid
            data.spid = spid
            self._notify(IoasidNotify.BIND, data, IOASID_NOTIFY_FLAG_SET)

    @staticmethod
    def _unindex_spid(data: IoasidData) -> None:
        spids = data.set.spids
        if spids.get(data.spid) == data.id:
            del spids[data.spid]

    def detach_spid(self, ioasid: int) -> None:
        """Emit UNBIND on the set's chain (with the old SPID), then clear the SPID
        (``ioasid_detach_spid``). ``ENOENT`` for an unknown ID or one without a SPID."""
        with self.lock:
            self.check_not_in_notifier()
            data = self._data(ioasid)
            if data.spid == INVALID_IOASID:
                self.warn(f"IOASID {ioasid} has no SPID to detach")
                raise IoasidError(ENOENT, f"IOASID {ioasid} has no SPID")
            self._notify(IoasidNotify.UNBIND, data, IOASID_NOTIFY_FLAG_SET)
            self._unindex_spid(data)
            data.spid = INVALID_IOASID

    def find_by_spid(self, ioasid_set: IoasidSet, spid: int, get: bool = False) -> int:
        """The ID of the set's index carrying ``spid``, or ``INVALID_IOASID``
        (``ioasid_find_by_spid``); a stale set also gives ``INVALID_IOASID``.

        With ``get`` a reference is taken on the match. In ``v4`` that happens even for
        a FREE_PENDING ID; in ``fixed`` such a match raises ``EBUSY``.
        """
        with self.lock:
            self.check_not_in_notifier()
            if not self.set_valid(ioasid_set):
                self.warn("find_by_spid on a stale set")
                return INVALID_IOASID
            ioasid = ioasid_set.spids.get(spid)
            if ioasid is None:
                return INVALID_IOASID
            data = self._ids.get(ioasid)
            if get:
                pending = data.state == IoasidState.FREE_PENDING
                if pending and not self.knobs.find_by_spid_get_pending:
                    raise IoasidError(EBUSY, f"IOASID {data.id} is being freed")
                data.refs += 1
                if not pending and not self.knobs.active_state_unused:
                    data.state = IoasidState.ACTIVE
            return ioasid

    # ------------------------------------------------------------------ notifiers
    def _notify(self, event: IoasidNotify, data: IoasidData, flags: int) -> int:
        if flags & ~(IOASID_NOTIFY_FLAG_ALL | IOASID_NOTIFY_FLAG_SET):
            raise IoasidError(EINVAL, f"bad notify flags {flags:#x}")
        args = IoasidNbArgs(data.id, data.spid, data.set, data.private)
        ret = 0
        self.notifier_depth += 1
        try:
            if flags & IOASID_NOTIFY_FLAG_ALL:
                ret = self.notifier.call(event, args, self.warn)
            if flags & IOASID_NOTIFY_FLAG_SET:
                ret = data.set.nh.call(event, args, self.warn)
        finally:
            self.notifier_depth -= 1
        return ret

    def register_notifier(self, ioasid_set: IoasidSet | None, nb: NotifierBlock) -> int:
        """Subscribe ``nb`` to a set's chain, or to the global chain when ``ioasid_set`` is None.
        Always returns 0 (a duplicate is refused with a warning on the chain)."""
        with self.lock:
            self.check_not_in_notifier()
            chain = self.notifier if ioasid_set is None else ioasid_set.nh
            return chain.register(nb)

    def unregister_notifier(self, ioasid_set: IoasidSet | None, nb: NotifierBlock) -> None:
        """The mirror of ``register_notifier``; unknown blocks are ignored."""
        with self.lock:
            self.check_not_in_notifier()
            (self.notifier if ioasid_set is None else ioasid_set.nh).unregister(nb)

    def register_notifier_mm(self, token: Any, nb: NotifierBlock) -> int:
        """Subscribe ``nb`` to the MM set of ``token``, now or when it is created.

        ``EINVAL`` for a None token; ``EBUSY`` if the same (token, nb) is registered already. If
        the set exists and holds IDs: ``v4`` refuses with ``EBUSY``; ``fixed``
        subscribes and replays ALLOC (and BIND for IDs with a SPID) to ``nb`` alone.
        """
        with self.lock:
            self.check_not_in_notifier()
            if token is None:
                raise IoasidError(EINVAL, "no mm token")
            for rec in self._nb_pending:
                if rec.token == token and rec.nb is nb:
                    raise IoasidError(EBUSY, "already registered for this mm")
            ioasid_set = self.find_mm_set_locked(token)
            rec = SetNb(token, nb)
            if ioasid_set is not None:
                if ioasid_set.nr_ioasids and self.knobs.mm_notifier_needs_empty_set:
                    raise IoasidError(EBUSY, "the mm's set already holds IOASIDs")
                ioasid_set.nh.register(nb)
                rec.set, rec.active = ioasid_set, True
                self._nb_pending.append(rec)
                self._replay(ioasid_set, nb)
            else:
                self._nb_pending.append(rec)
            return 0

    def _replay(self, ioasid_set: IoasidSet, nb: NotifierBlock) -> None:
        self.notifier_depth += 1
        try:
            for data in self.set_members(ioasid_set):
                if data.state is _FREE_PENDING:
                    continue  # already being freed: a new subscriber has nothing to set up
                args = IoasidNbArgs(data.id, data.spid, ioasid_set, data.private)
                nb.callback(nb, IoasidNotify.ALLOC, args)
                if data.spid != INVALID_IOASID:
                    nb.callback(nb, IoasidNotify.BIND, args)
        finally:
            self.notifier_depth -= 1

    def unregister_notifier_mm(self, token: Any, nb: NotifierBlock) -> None:
        """Drop the (token, nb) registration; ``ENOENT`` if there is none."""
        with self.lock:
            self.check_not_in_notifier()
            for i, rec in enumerate(self._nb_pending):
                if rec.token == token and rec.nb is nb:
                    if rec.active and rec.set is not None:
                        rec.set.nh.unregister(nb)
                    del self._nb_pending[i]
                    return
            raise IoasidError(ENOENT, "no such mm registration")

    def pending_registrations(self) -> list[SetNb]:
        """The mm-keyed registrations, active or waiting for their set."""
        return list(self._nb_pending)

    # ------------------------------------------------------------------ work queue
    def queue_work(self, work: Work) -> bool:
        """Queue ``work`` on the shared ordered queue (``ioasid_queue_work``); ``False`` if it
        is already pending. Allowed from notifier callbacks. A model call itself: in step mode,
        work queued from outside any call has run when this returns. ``RuntimeError`` if the
        queue is stopped."""
        with self.lock:
            return self.wq.queue(work)

    # ------------------------------------------------------------------ custom allocators
    def register_allocator(self, ops: AllocatorOps) -> None:
        """Register a custom allocator (``ioasid_register_allocator``).

        ``EEXIST`` if ``ops`` is registered already; ``EAGAIN`` if it would become the active
        allocator while the default one holds IDs. Ops with the same functions as a registered
        group join it and share its ID space.
        """
        with self.lock:
            self.check_not_in_notifier()
            for group in self._groups:
                if any(o is ops for o in group.ops):
                    raise IoasidError(EEXIST, "allocator already registered")
            if self._active is None:
                if len(self._ids):
                    raise IoasidError(EAGAIN, "the default allocator holds IOASIDs")
                group = _AllocatorGroup(ops.alloc, ops.free, [ops])
                self._groups.append(group)
                self._active = group
                return
            for group in self._groups:
                if group.alloc is ops.alloc and group.free is ops.free:
                    group.ops.append(ops)
                    return
            self._groups.append(_AllocatorGroup(ops.alloc, ops.free, [ops]))

    def unregister_allocator(self, ops: AllocatorOps) -> None:
        """Remove a custom allocator; the next group, or the default allocator, takes over."""
        with self.lock:
            self.check_not_in_notifier()
            for group in self._groups:
                if any(o is ops for o in group.ops):
                    group.ops = [o for o in group.ops if o is not ops]
                    if not group.ops:
                        self._groups.remove(group)
                        if self._active is group:
                            self._active = self._groups[0] if self._groups else None
                    return
            self.warn("unregister of an unknown allocator")
