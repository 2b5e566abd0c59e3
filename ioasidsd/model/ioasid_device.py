"""The ``/dev/ioasid`` misc device (``drivers/iommu/ioasid_user.c`` of the series), as a model.

``IoasidDevice`` is the driver: ``open`` creates the opener's ``IoasidUser`` (one per process,
holding the process's MM set), ``ioctl`` runs one command of ``ioasid_uapi`` on an open file,
``release`` drops the file's reference and, with the last one, frees every IOASID of the set.
``user_get_from_task``/``user_put``/``user_for_each_id`` are the exports the series gives VFIO.

Pure model: no I/O, no threads. Every method takes ``core.lock`` (the model's one lock). Errors
raise ``IoasidError`` with the errno the ioctl returns, and change nothing; a successful ioctl
returns ``(result, output bytes)``. The ``task`` argument is the calling process (the kernel's
``current``): a ``Process`` of the cgroup controller.

Profiles (the knobs that change what the device answers):

* ``user_errors``: ``v4`` answers ``EINVAL`` for every ALLOC failure and for unknown commands,
  and 0 for every FREE. ``distinct`` keeps the core's errno (``EAGAIN`` cgroup limit, ``ENOSPC``
  capacity or range exhausted, ``EDQUOT`` set quota, ``EINVAL`` bad arguments), reports
  ``ENOENT``/``EACCES`` from FREE for unknown (or already freed) and foreign IDs, ``ENOTTY`` for
  unknown commands, ``EBADF`` on a released file, and refuses ALLOC, FREE and the extensions
  with ``EPERM`` when the caller is not the process that opened the file (the series enforces
  that only through the cgroup charge, i.e. for ALLOC).
* ``user_min_zero``: ``v4`` may hand out IOASID 0; ``fixed`` starts every range at 1.
* ``user_reopen_eexist``: an open while the process's MM set still exists gives ``EEXIST`` in
  ``v4``; ``fixed`` adopts the set (after a daemon restart, or a release that left IOASIDs
  FREE_PENDING).
* The set quota (``set_quota_zero_takes_all``) and the set's lifetime (``set_lifetime``) are
  the core's: in ``v4`` the first opener's quota-0 set takes the whole pool (a second process's
  open then fails with ``ENOSPC`` when a VT-d host set holds the rest) and a set whose last
  IOASID is reclaimed is gone, so later ALLOCs on that file fail.

Every MM set whose token is a process is the set of that process's ``/dev/ioasid`` (nothing else
in this emulator creates MM sets for real processes). When a process exits, its file is released
and a set that no file holds any more (left by a daemon restart) is released the same way.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable, Iterable
from errno import EACCES, EBADF, EBUSY, EEXIST, EFAULT, EINVAL, ENODEV, ENOENT, ENOTTY, EPERM
from typing import TYPE_CHECKING, Protocol

from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change, ChangeKind, Refusal, exact_change
from ioasidsd.model.core import IoasidSetType, IoasidState
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Process

if TYPE_CHECKING:
    from ioasidsd.model.core import IoasidCore, IoasidData, IoasidSet
    from ioasidsd.model.hierarchy import Cgroup

_MM = IoasidSetType.MM  # read once: an enum member is a class attribute lookup away
_SYNC = ChangeKind.SYNC

ID_LIMIT = 1 << uapi.IOASID_BITS
"""User-space IDs are below 2^31: an ID is the non-negative ``int`` result of the ioctl."""


class GuestBinder(Protocol):
    """The IOMMU side of the bind extension (the VT-d driver facade), as the generic layer
    (``iommu_uapi_sva_bind_gpasid``) calls it: ownership is checked by the binder through
    ``core.get_if_owned``. Both raise ``IoasidError`` with the errno to report."""

    def bind_gpasid(self, task: Process, hpasid: int, gpasid: int | None, devid: int, *,
                    addr_width: int, gpgd: int) -> None: ...

    def unbind_gpasid(self, task: Process, hpasid: int, devid: int) -> None: ...


class IoasidUser:
    """``struct ioasid_user``: one process's handle, its MM set and a reference count."""

    __slots__ = ("ioasid_set", "refs", "token")

    def __init__(self, token: Process, ioasid_set: IoasidSet) -> None:
        self.token = token
        self.ioasid_set = ioasid_set
        self.refs = 1

    def __repr__(self) -> str:
        return f"IoasidUser(pid={self.token.pid}, set={self.ioasid_set.id}, refs={self.refs})"


class IoasidFile:
    """One open file of ``/dev/ioasid``; ``user`` is its private data (``None`` once released).

    ``closes_at_exit``: the opener's descriptor is the only one, so its exit is the last close
    (a model driven without descriptors). ``False`` when a face holds the file through
    descriptors that may outlive the opener (a socket connection inherited over ``fork()``):
    the face then calls ``release`` at the last close, whoever holds it.
    """

    __slots__ = ("closes_at_exit", "opener", "user")

    def __init__(self, user: IoasidUser, opener: Process, *, closes_at_exit: bool = True) -> None:
        self.user: IoasidUser | None = user
        self.opener = opener
        self.closes_at_exit = closes_at_exit

    @property
    def released(self) -> bool:
        return self.user is None

    def __repr__(self) -> str:
        return f"IoasidFile(pid={self.opener.pid}, released={self.released})"


class Touched:
    """What the operations since the last ``IoasidDevice.take_touched()`` changed: ``ids``,
    IOASIDs changed (allocated, freed, referenced), batches included; ``sets``, sets changed as
    a whole (created, adopted, released); ``leaves``, the cgroups charged, uncharged or refused,
    whose walks' counters or events changed; ``alike``, when the first IDs of ``ids`` were
    made by one batch allocation (all alike: ``alloc_many_locked``), how many (else 0): they
    are all of ``ids`` until another change records its IDs after them. Kept by the device
    and emptied by each ``take_touched``."""

    __slots__ = ("alike", "ids", "leaves", "sets")

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.sets: list[IoasidSet] = []
        self.leaves: set[Cgroup] = set()
        self.alike = 0


TouchedFields = tuple[tuple["Cgroup", ...], tuple[int, ...], tuple[int, ...]]
"""What ``IoasidDevice.take_touched`` gives: the cgroups whose counters or events may have
changed (the charge walks, up to and not including the root, each cgroup once), the IOASIDs
and the ids of the sets, as the fields of a ``Change`` (``ioasidsd.model.changes``)."""


_Handler = Callable[["IoasidDevice", IoasidUser, bytes, "Process"], tuple[int, bytes]]


class IoasidDevice:
    """The ``/dev/ioasid`` driver over an ``IoasidCore`` with its cgroup controller.

    ``binder`` serves the bind extension (``ENODEV`` without one). ``users`` is the series'
    ``ioasid_user_list``, by process.
    """

    def __init__(self, core: IoasidCore, binder: GuestBinder | None = None) -> None:
        self.core = core
        self.knobs = core.knobs
        self.lock = core.lock
        self.binder = binder
        self.users: dict[Process, IoasidUser] = {}
        self._files: dict[Process, IoasidFile] = {}
        self._touched = Touched()

    # ------------------------------------------------------------------ bookkeeping
    def take_touched(self) -> TouchedFields | None:
        """What the operations since the last call changed (``TouchedFields``), or ``None``
        if they changed nothing; the record starts empty again."""
        change = self.take_change(_SYNC)
        return None if change is None else (change.cgroups, change.ids, change.sets)

    def take_change(self, kind: ChangeKind, processes: tuple[Process, ...] = (),
                    refusal: Refusal | None = None) -> Change | None:
        """What the operations since the last call changed (as ``take_touched``), as the
        ``Change`` of ``kind`` that reports it with ``processes`` and ``refusal``, made in one
        step; ``None`` when they changed nothing and there is no ``refusal``. The record
        starts empty again."""
        touched = self._touched
        ids, sets, leaves = touched.ids, touched.sets, touched.leaves
        if not (ids or sets or leaves):
            return None if refusal is None else exact_change(kind, (), processes, (), (),
                                                             refusal)
        cgroups: tuple[Cgroup, ...] = ()
        if len(leaves) == 1:  # one caller, charged in its own cgroup: every ioctl but a few
            leaf = leaves.pop()
            cgroups = leaf.chain
            if not cgroups and leaf.limit is not None:  # the root, counting its own charges
                cgroups = (leaf,)
        elif leaves:
            cgroups = tuple(dict.fromkeys([cg for leaf in leaves
                                           for cg in leaf.chain or _counted_root(leaf)]))
            leaves.clear()
        alike = touched.alike
        taken = exact_change(kind, cgroups, processes, tuple(ids),
                             () if not sets else (sets[0].id,) if len(sets) == 1  # one set
                             else tuple([s.id for s in sets]), refusal,
                             alike != 0 and alike == len(ids))
        if alike:
            touched.alike = 0
        ids.clear()
        if sets:
            sets.clear()
        return taken

    def forget_touched(self) -> None:
        """Empty the record of what was touched without making a ``Change`` of it (what
        ``take_change`` leaves, for a caller whose change nobody reads)."""
        touched = self._touched
        touched.ids.clear()
        touched.sets.clear()
        touched.leaves.clear()
        touched.alike = 0

    def _touch_ids(self, ids: list[int], task: Process | None) -> None:
        """Record ``ids`` (before the change, so charged cgroups are still known)."""
        self._touched.ids.extend(ids)
        self._touch_charged(ids, task)

    def _touch_charged(self, ids: Iterable[int], task: Process | None) -> None:
        """Record the cgroups charged for ``ids`` and ``task``'s (before the change)."""
        leaves = self._touched.leaves
        live = self.core.ioasid_index.get  # ``None`` for an ID that is not live
        for ioasid in ids:
            data = live(ioasid)
            if data is not None:
                cg = data.cgroup
                if cg is not None:
                    leaves.add(cg)
        if task is not None:
            leaves.add(task.cgroup)

    def _touch_set(self, ioasid_set: IoasidSet) -> None:
        if not self._touched.sets or self._touched.sets[-1] is not ioasid_set:
            self._touched.sets.append(ioasid_set)

    # ------------------------------------------------------------------ open / release
    def open(self, task: Process, *, closes_at_exit: bool = True) -> IoasidFile:
        """``open("/dev/ioasid")`` by ``task``: create its ``IoasidUser`` and MM set.
        ``closes_at_exit``: see ``IoasidFile``.

        ``EINVAL`` for an exited task; ``EBUSY`` if the process has it open already; for an MM
        set that already exists ``EEXIST`` (``user_reopen_eexist``) or adoption; then the
        errors of ``set_alloc`` (``ENOSPC`` when, in ``v4``, no capacity or set index is left).
        """
        with self.lock:
            return self.open_locked(task, closes_at_exit=closes_at_exit)

    def open_locked(self, task: Process, *, closes_at_exit: bool = True) -> IoasidFile:
        """``open`` for a caller that holds ``core.lock`` (and is not a notifier callback:
        ``EDEADLK`` otherwise, as ``open`` refuses)."""
        if self.core.notifier_depth:
            self.core.check_not_in_notifier()
        if task is None or not task.alive:
            raise IoasidError(EINVAL, "the opener has no mm")
        if task in self.users:
            raise IoasidError(EBUSY, f"process {task.pid} has /dev/ioasid open already")
        # the core's ``_locked`` forms: the lock is held and the notifier check made above
        core = self.core
        mm = task.mm
        ioasid_set = core.find_mm_set_locked(mm)
        if ioasid_set is None:  # the usual case: a new set (no need to look for one again)
            ioasid_set = core.mm_set_alloc_locked(mm)
        elif core.set_valid(ioasid_set):
            if self.knobs.user_reopen_eexist:
                raise IoasidError(EEXIST, f"an IOASID set of process {task.pid} exists")
            ioasid_set.free_requested = False  # adopt: cancel the deferred free
        else:
            ioasid_set = core.set_alloc_locked(mm, 0, _MM)
        user = IoasidUser(task, ioasid_set)
        self.users[task] = user
        file = IoasidFile(user, task, closes_at_exit=closes_at_exit)
        self._files[task] = file
        sets = self._touched.sets  # ``_touch_set`` inlined
        if not sets or sets[-1] is not ioasid_set:
            sets.append(ioasid_set)
        return file

    def release(self, file: IoasidFile, task: Process | None = None) -> None:
        """``close()``: drop the file's reference on its user; the last reference frees every
        IOASID of the set (FREE_PENDING where others hold references) and then the set.
        ``task`` is the closing process (default: the opener). Releasing twice does nothing."""
        with self.lock:
            self.core.check_not_in_notifier()
            self._release_locked(file, task if task is not None else file.opener)

    def _release_locked(self, file: IoasidFile, task: Process) -> None:
        user = file.user
        if user is None:
            return
        file.user = None
        if self._files.get(file.opener) is file:
            del self._files[file.opener]
        self._put(user, task)

    def process_exit(self, proc: Process) -> None:
        """A process exited: its file is closed when its descriptor was the only one
        (``closes_at_exit``; otherwise the file lives on until the face releases it), and a
        set no file holds (left by a daemon restart) is released as that file would have been.
        The cgroup controller's exit hook."""
        with self.lock:
            file = self._files.get(proc)
            if file is not None and file.closes_at_exit:
                if self.core.notifier_depth:
                    self.core.check_not_in_notifier()  # EDEADLK, as ``release`` refuses
                self._release_locked(file, proc)
            if proc in self.users:
                return  # another holder (``user_get_from_task``) keeps it
            ioasid_set = self.core.find_mm_set_locked(proc.mm)
            if ioasid_set is not None and self.core.set_valid(ioasid_set):
                self._free_set(ioasid_set, proc)

    def release_at_exit_locked(self, proc: Process) -> bool:
        """``process_exit(proc)`` made at once in the common case, for a caller holding
        ``core.lock``: the process's own file, closed at its exit, is the only reference on
        its user, and the core releases the set in one step (``IoasidCore.release_set_locked``);
        what is touched is recorded as ``process_exit`` records it. ``False``, with nothing
        changed, otherwise: the caller then calls ``process_exit``."""
        file = self._files.get(proc)
        if file is None or not file.closes_at_exit or file.opener is not proc:
            return False
        user = file.user
        core = self.core
        if (user is None or user.refs != 1 or user.token is not proc or core.notifier_depth
                or self.users.get(proc) is not user):
            return False
        ioasid_set = user.ioasid_set
        touched = self._touched
        leaves = touched.leaves
        if not core.release_set_locked(ioasid_set, task=proc, charged=leaves):
            return False
        leaves.add(proc.cgroup)
        sets = touched.sets  # ``_touch_set`` inlined
        if not sets or sets[-1] is not ioasid_set:
            sets.append(ioasid_set)
        file.user = None
        del self._files[proc]
        user.refs = 0
        del self.users[proc]
        other = core.find_mm_set_locked(proc)  # another set of the same mm (a restore's)
        if other is not None and core.set_valid(other):
            self._free_set(other, proc)
        return True

    def release_unheld(self) -> int:
        """Release, as their last close would have, the MM sets whose process has exited and
        that no file holds: sets whose file outlived the opener (a descriptor inherited over
        ``fork()``) when a daemon restart ended the connection. A set already released (its
        IOASIDs FREE_PENDING, or its free requested) is left to the reclaim. Returns how many
        sets were released."""
        released = 0
        with self.lock:
            self.core.check_not_in_notifier()
            held = {user.ioasid_set for user in self.users.values()}
            for ioasid_set in self.core.sets:
                token = ioasid_set.token
                if (ioasid_set.type != IoasidSetType.MM or not isinstance(token, Process)
                        or token.alive or ioasid_set in held or ioasid_set.free_requested):
                    continue
                ids = [self.core.data(i) for i in ioasid_set.xa if i in self.core]
                if ids and all(d.state == IoasidState.FREE_PENDING for d in ids):
                    continue
                self._free_set(ioasid_set, token)
                released += 1
        return released

    def _put(self, user: IoasidUser, task: Process) -> None:
        user.refs -= 1
        if user.refs:
            return
        if self.users.get(user.token) is user:
            del self.users[user.token]
        self._free_set(user.ioasid_set, task)

    def _free_set(self, ioasid_set: IoasidSet, task: Process) -> None:
        core = self.core
        self._touch_charged(ioasid_set.xa, task)
        self._touch_set(ioasid_set)
        # the core's ``_locked`` forms: the lock is held; the notifier check is made once, here,
        # where ``free_all_in_set`` made it (a refusal leaves the same touched record)
        if core.notifier_depth:
            core.check_not_in_notifier()
        if core.release_set_locked(ioasid_set, task=task):
            return  # every ID reclaimed and the set gone at once: the common case
        core.free_all_in_set_locked(ioasid_set, task=task)
        if not core.set_valid(ioasid_set):
            return  # auto-destroyed (v4) when its last IOASID went
        if self.knobs.set_lifetime == "explicit":
            core.set_free_locked(ioasid_set, when_empty=True)
        else:
            try:
                core.set_free_locked(ioasid_set)
            except IoasidError as exc:  # the series ignores it: EBUSY while IDs are pending
                core.warn(f"ioasid_user: set {ioasid_set.id} not freed: {exc}")

    # ------------------------------------------------------------------ kernel-facing exports
    def user_get_from_task(self, task: Process) -> IoasidUser | None:
        """The user of ``task``'s mm with a reference taken, or ``None``."""
        with self.lock:
            user = self.users.get(task)
            if user is not None:
                user.refs += 1
            return user

    def user_put(self, user: IoasidUser, task: Process | None = None) -> None:
        """Drop a reference taken by ``user_get_from_task``; the last one releases."""
        with self.lock:
            self.core.check_not_in_notifier()
            self._put(user, task if task is not None else user.token)

    def user_for_each_id(self, user: IoasidUser, fn: Callable[[int, object], None],
                         data: object = None) -> None:
        """Call ``fn(id, data)`` for every IOASID of the user's set, ascending."""
        with self.lock:
            self.core.set_for_each_ioasid(user.ioasid_set, fn, data)

    # ------------------------------------------------------------------ ioctl
    def ioctl(self, file: IoasidFile, cmd: int, arg: bytes, task: Process) -> tuple[int, bytes]:
        """Run command ``cmd`` with argument bytes ``arg`` for ``task`` on ``file``.

        Returns ``(result, output bytes)``; the output is copied over the start of the caller's
        argument (``GET_INFO``) or is the reply's data (batch allocation: the IDs). Raises
        ``IoasidError``: ``EFAULT`` when ``arg`` is shorter than the command reads, ``EINVAL``
        (``EBADF`` in ``distinct``) on a released file, ``EINVAL``/``ENOTTY`` for an unknown
        command, and each command's own errors (see the handlers).
        """
        with self.lock:
            if self.core.notifier_depth:
                self.core.check_not_in_notifier()  # EDEADLK
            return self.ioctl_locked(file, cmd, arg, task)

    def ioctl_locked(self, file: IoasidFile, cmd: int, arg: bytes,
                     task: Process) -> tuple[int, bytes]:
        """``ioctl`` for a caller that holds ``core.lock`` (and is not a notifier callback)."""
        distinct = self.knobs.user_errors == "distinct"
        user = file.user
        if user is None:
            raise IoasidError(EBADF if distinct else EINVAL, "the file was released")
        handler = _HANDLERS.get(cmd)
        if handler is None:
            self.core.warn(f"ioasid_user: Unsupported cmd {cmd}")
            raise IoasidError(ENOTTY if distinct else EINVAL, f"unknown command {cmd:#x}")
        owner = user.token
        if task is not owner and distinct and cmd in _OWNER_ONLY and task != owner:
            raise IoasidError(
                EPERM, f"process {task.pid} did not open this file (pid {owner.pid} did)"
            )
        return handler(self, user, arg, task)

    def _get_api_version(self, user: IoasidUser, arg: bytes, task: Process) -> tuple[int, bytes]:
        return uapi.IOASID_API_VERSION, b""

    def _get_info(self, user: IoasidUser, arg: bytes, task: Process) -> tuple[int, bytes]:
        argsz, flags, _bits = _copy_in(uapi.INFO, arg)
        if argsz < uapi.INFO.size or flags:
            raise IoasidError(EINVAL, "GET_INFO: argsz below 12 or flags set")
        return 0, uapi.INFO.pack(argsz, flags, uapi.IOASID_BITS)

    def _range(self, lo: int, hi: int) -> tuple[int, int]:
        """The range to allocate from: ``EINVAL`` for a bad one; 0 is left out in ``fixed``."""
        if lo > hi or lo >= ID_LIMIT or hi >= ID_LIMIT:
            raise IoasidError(EINVAL, f"bad range [{lo}, {hi}]")
        if not self.knobs.user_min_zero and lo == 0:
            lo = 1  # IOASID 0 is VT-d's RID_PASID: never a user's
            if hi == 0:
                raise IoasidError(EINVAL, "IOASID 0 is reserved")
        return lo, hi

    def _alloc_error(self, exc: IoasidError) -> IoasidError:
        if self.knobs.user_errors == "distinct":
            return exc
        collapsed = IoasidError(EINVAL, f"allocation failed ({exc.name})")
        collapsed.level = exc.level
        return collapsed

    def _alloc(self, user: IoasidUser, arg: bytes, task: Process) -> tuple[int, bytes]:
        """``IOASID_REQUEST_ALLOC``: the lowest free ID in the range, as the result."""
        if len(arg) < 16:
            _copy_in(uapi.ALLOC_REQUEST, arg)  # EFAULT
        argsz, flags, lo, hi = _unpack_alloc(arg)
        if argsz < 16 or flags:
            raise IoasidError(EINVAL, "ALLOC: argsz below 16 or flags set")
        if not 0 < lo <= hi < ID_LIMIT:
            lo, hi = self._range(lo, hi)
        touched = self._touched
        touched.leaves.add(task.cgroup)
        try:
            ioasid = self.core.alloc_locked(user.ioasid_set, lo, hi, None, task=task)
        except IoasidError as exc:
            raise self._alloc_error(exc) from None
        touched.ids.append(ioasid)
        return ioasid, b""

    def _check_free(self, user: IoasidUser, ioasid: int) -> IoasidData:
        """``distinct``: why freeing ``ioasid`` through ``user`` cannot work, if it cannot;
        else its record."""
        data = self.core.data(ioasid)  # ENOENT if it is not allocated
        if data.set is not user.ioasid_set:
            raise IoasidError(EACCES, f"IOASID {ioasid} belongs to another process")
        if data.state == IoasidState.FREE_PENDING:
            raise IoasidError(ENOENT, f"IOASID {ioasid} was freed already (FREE_PENDING)")
        return data

    def _free_one(self, user: IoasidUser, ioasid: int, task: Process) -> None:
        core = self.core
        if self.knobs.user_errors == "distinct":
            charged = self._check_free(user, ioasid).cgroup
            touched = self._touched
            touched.ids.append(ioasid)
            if charged is not None:
                touched.leaves.add(charged)
            touched.leaves.add(task.cgroup)
            core.free_locked(user.ioasid_set, ioasid, task=task)
            return
        if ioasid in core:
            self._touch_ids([ioasid], task)
        try:
            core.free_locked(user.ioasid_set, ioasid, task=task)
        except IoasidError as exc:  # the series only logs
            core.warn(f"ioasid_user: free of {ioasid}: {exc}")

    def _free(self, user: IoasidUser, arg: bytes, task: Process) -> tuple[int, bytes]:
        """``IOASID_REQUEST_FREE``: result 0; ``EINVAL`` for a negative ID."""
        (ioasid,) = _copy_in(uapi.FREE_ARG, arg)
        if ioasid < 0:
            raise IoasidError(EINVAL, f"negative IOASID {ioasid}")
        self._free_one(user, ioasid, task)
        return 0, b""

    # ------------------------------------------------------------------ extensions
    def _alloc_batch(self, user: IoasidUser, arg: bytes, task: Process) -> tuple[int, bytes]:
        """``IOASID_REQUEST_ALLOC_BATCH``: ``count`` IDs, each the lowest free in the range, or
        none: on the first failure those already allocated are freed again and the failure is
        reported as ALLOC would report it. ``EINVAL`` for a count of 0 or above the maximum."""
        argsz, flags, lo, hi, count = _copy_in(uapi.ALLOC_BATCH, arg)
        if argsz < uapi.ALLOC_BATCH.size or flags:
            raise IoasidError(EINVAL, "ALLOC_BATCH: argsz below 20 or flags set")
        if not 0 < count <= uapi.IOASID_BATCH_MAX:
            raise IoasidError(EINVAL, f"ALLOC_BATCH: count {count} not in 1..65536")
        if not 0 < lo <= hi < ID_LIMIT:
            lo, hi = self._range(lo, hi)
        core = self.core
        ioasid_set = user.ioasid_set
        self._touched.leaves.add(task.cgroup)
        ids = core.alloc_many_locked(ioasid_set, lo, hi, count, task=task)
        if ids is not None:  # the usual case: all of them at once, alike
            touched = self._touched
            if not touched.ids:
                touched.alike = count
            touched.ids.extend(ids)
            return count, ids.tobytes()
        ids = array("I")  # one refuses (or notifiers are called): one by one, as ALLOC would
        alloc = core.alloc_locked
        try:
            for _ in range(count):
                ids.append(alloc(ioasid_set, lo, hi, None, task=task))
        except IoasidError as exc:
            for ioasid in reversed(ids):
                core.free_locked(ioasid_set, ioasid, task=task)
            raise self._alloc_error(exc) from None
        self._touched.ids.extend(ids)
        return count, ids.tobytes()

    def _free_batch(self, user: IoasidUser, arg: bytes, task: Process) -> tuple[int, bytes]:
        """``IOASID_REQUEST_FREE_BATCH``: free ``count`` IDs; the result is ``count``.
        ``distinct``: every ID is checked first (``ENOENT``, ``EACCES``, ``EINVAL`` for one
        given twice) and nothing is freed unless all can be. ``v4``: each as FREE would."""
        ids = _free_batch_ids(arg)
        count = len(ids)
        core = self.core
        ioasid_set = user.ioasid_set
        if self.knobs.user_errors == "distinct":
            if len(set(ids)) != count:
                raise IoasidError(EINVAL, "FREE_BATCH: an ID is given twice")
            touched = self._touched
            touched.ids.extend(ids)
            leaves = touched.leaves
            leaves.add(task.cgroup)
            # the usual case: all at once; its own checks decline (nothing changed) whatever
            # the checks below would refuse
            charged = core.free_many_locked(ioasid_set, ids, task=task)
            if charged is not None:
                charged.discard(None)
                leaves.update(charged)
                return count, b""
            check = self._check_free
            for ioasid in ids:
                charged_to = check(user, ioasid).cgroup
                if charged_to is not None:
                    leaves.add(charged_to)
            free = core.free_locked
            for ioasid in ids:
                free(ioasid_set, ioasid, task=task)
        else:
            for ioasid in ids:
                self._free_one(user, ioasid, task)
        return count, b""

    def check_free_batch_locked(self, file: IoasidFile, arg: bytes) -> bool:
        """Whether ``IOASID_REQUEST_FREE_BATCH`` with ``arg`` through ``file`` would free every
        ID it names, as far as this moment tells: its argument is well formed and, where a
        batch frees all or nothing (the ``distinct`` errors), every ID can be freed. Changes
        nothing; for a caller holding ``core.lock`` (a face serving a batch in parts checks
        the whole first)."""
        user = file.user
        if user is None:
            return False
        try:
            ids = _free_batch_ids(arg)
            if self.knobs.user_errors == "distinct":
                if len(set(ids)) != len(ids):
                    return False
                for ioasid in ids:
                    self._check_free(user, ioasid)
        except IoasidError:
            return False
        return True

    def _binder(self) -> GuestBinder:
        if self.binder is None:
            raise IoasidError(ENODEV, "no IOMMU to bind to (no VT-d unit configured)")
        return self.binder

    def _bind(self, user: IoasidUser, arg: bytes, task: Process) -> tuple[int, bytes]:
        """``IOASID_BIND_GPASID``: bind ``hpasid`` on device ``devid`` for the guest, with
        ``gpasid`` as its SPID when ``IOASID_BIND_GPASID_VAL`` is set. Errors: ``EINVAL`` for
        argsz or unknown flags, ``ENODEV`` without an IOMMU, then the binder's (ownership:
        ``ENOENT``, ``EINVAL``, ``EPERM``, ``EBUSY``)."""
        argsz, flags, hpasid, gpasid, devid, addr_width, gpgd = _copy_in(uapi.BIND_GPASID, arg)
        if argsz < uapi.BIND_GPASID.size or flags & ~uapi.IOASID_BIND_GPASID_VAL:
            raise IoasidError(EINVAL, "BIND_GPASID: argsz below 32 or unknown flags")
        binder = self._binder()
        guest = gpasid if flags & uapi.IOASID_BIND_GPASID_VAL else None
        self._touch_ids([hpasid] if hpasid in self.core else [], task)
        binder.bind_gpasid(task, hpasid, guest, devid, addr_width=addr_width, gpgd=gpgd)
        return 0, b""

    def _unbind(self, user: IoasidUser, arg: bytes, task: Process) -> tuple[int, bytes]:
        """``IOASID_UNBIND_GPASID``: undo a bind of ``hpasid`` on ``devid``; the binder's errors."""
        argsz, flags, hpasid, devid = _copy_in(uapi.UNBIND_GPASID, arg)
        if argsz < uapi.UNBIND_GPASID.size or flags:
            raise IoasidError(EINVAL, "UNBIND_GPASID: argsz below 16 or flags set")
        binder = self._binder()
        self._touch_ids([hpasid] if hpasid in self.core else [], task)
        binder.unbind_gpasid(task, hpasid, devid)
        return 0, b""


def _copy_in(layout: struct.Struct, arg: bytes) -> tuple[int, ...]:
    """``copy_from_user`` of ``layout``: ``EFAULT`` when fewer bytes were passed."""
    if len(arg) < layout.size:
        raise IoasidError(EFAULT, f"argument of {len(arg)} bytes, {layout.size} needed")
    return layout.unpack_from(arg)


_unpack_alloc = uapi.ALLOC_REQUEST.unpack_from

_HANDLERS: dict[int, _Handler] = {
    uapi.IOASID_GET_API_VERSION: IoasidDevice._get_api_version,
    uapi.IOASID_GET_INFO: IoasidDevice._get_info,
    uapi.IOASID_REQUEST_ALLOC: IoasidDevice._alloc,
    uapi.IOASID_REQUEST_FREE: IoasidDevice._free,
    uapi.IOASID_REQUEST_ALLOC_BATCH: IoasidDevice._alloc_batch,
    uapi.IOASID_REQUEST_FREE_BATCH: IoasidDevice._free_batch,
    uapi.IOASID_BIND_GPASID: IoasidDevice._bind,
    uapi.IOASID_UNBIND_GPASID: IoasidDevice._unbind,
}

_OWNER_ONLY = frozenset(_HANDLERS) - {uapi.IOASID_GET_API_VERSION, uapi.IOASID_GET_INFO}


def _counted_root(root: Cgroup) -> tuple[Cgroup, ...]:
    """What a charge in the root cgroup (whose walk is empty) changed: the root itself while
    it has a limit (``IoasidsController.set_root_max``: it counts its own charges), else
    nothing."""
    return () if root.limit is None else (root,)


def _free_batch_ids(arg: bytes) -> array[int]:
    """The IDs of a ``IOASID_REQUEST_FREE_BATCH`` argument; ``EINVAL`` for a bad header, count
    or ID, ``EFAULT`` for fewer IDs than announced."""
    argsz, flags, count = _copy_in(uapi.FREE_BATCH, arg)
    if argsz < uapi.FREE_BATCH.size or flags:
        raise IoasidError(EINVAL, "FREE_BATCH: argsz below 12 or flags set")
    if not 0 < count <= uapi.IOASID_BATCH_MAX:
        raise IoasidError(EINVAL, f"FREE_BATCH: count {count} not in 1..65536")
    end = uapi.FREE_BATCH.size + 4 * count
    if argsz < end:
        raise IoasidError(EINVAL, f"FREE_BATCH: argsz {argsz} does not cover {count} IDs")
    if len(arg) < end:
        raise IoasidError(EFAULT, f"FREE_BATCH: {count} IDs announced, fewer sent")
    ids = array("I")
    ids.frombytes(arg[uapi.FREE_BATCH.size:end])
    if max(ids) >= ID_LIMIT:
        raise IoasidError(EINVAL, "FREE_BATCH: an ID is negative as an int")
    return ids
