"""The ``ioasids`` cgroup controller (``kernel/cgroup/ioasids.c`` of the V4 series) and the
cgroup-v1 hierarchy it lives in.

A ``Cgroup`` has a limit (``None`` is ``max``), a counter of the IOASIDs charged to it and its
descendants, a peak, refusal events and the processes that are members. ``IoasidsController``
owns the tree and the processes, charges and uncharges along the walk from a cgroup up to (not
including) the root, grants limits against the core's capacity as ``knobs.capacity_model`` says,
and moves charges with a migrating process as ``knobs.migration`` says.

Processes are identified by pid and start time. Every process the controller does not know is in
the root cgroup. A forked child starts in its parent's cgroup; an exiting process leaves its
cgroup and the ``exit_hooks`` release what it holds (the user API closes its ``/dev/ioasid``).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from errno import EAGAIN, EBUSY, EEXIST, EINVAL, EIO, ENODEV, ENOENT, ENOSPC, EPERM, ESRCH
from typing import TYPE_CHECKING, Any

from ioasidsd.model.errors import IoasidError

if TYPE_CHECKING:
    from ioasidsd.model.core import IoasidCore, IoasidData, IoasidSet

U32_MASK = 0xFFFFFFFF
NAME_MAX = 255


def _valid_name(name: str) -> bool:
    """Whether ``name`` may name a cgroup: not empty, ``.`` or ``..``; no ``/``, NUL or newline."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\0\n")


class Process:
    """A real (or simulated) process: pid and start time, its cgroup and its thread count.

    The process is also its own mm token: the MM set of ``/dev/ioasid`` uses ``process.mm``.
    Equality and hashing use ``(pid, start_time)`` so that a token survives a daemon restart.
    """

    __slots__ = ("alive", "cgroup", "pid", "start_time", "threads")

    def __init__(self, pid: int, start_time: float, cgroup: Cgroup, threads: int = 1) -> None:
        self.pid = pid
        self.start_time = start_time
        self.cgroup = cgroup
        self.threads = threads
        self.alive = True

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.start_time)

    @property
    def mm(self) -> Process:
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Process) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, cgroup={self.cgroup.path!r}, alive={self.alive})"


class Cgroup:
    """One cgroup of the hierarchy, with the controller's per-cgroup state.

    ``counter`` is ``ioasids.current``, ``limit`` is ``ioasids.max`` (``None`` for ``max``),
    ``reserved`` the capacity this cgroup holds from the pool for its limit, ``events`` and
    ``events_local`` the refusals (``ioasids.events``, ``ioasids.events.local``).
    ``attrs`` holds file attributes a face set (``chmod``, ``chown``, times), by file name, ``""``
    for the directory itself; the model does not interpret them.
    """

    __slots__ = (
        "attrs",
        "chain",
        "children",
        "clone_children",
        "counter",
        "events",
        "events_local",
        "limit",
        "name",
        "notify_on_release",
        "parent",
        "peak",
        "procs",
        "reserved",
    )

    def __init__(self, name: str, parent: Cgroup | None, limit: int | None) -> None:
        self.attrs: dict[str, dict[str, int]] = {}
        self.name = name
        self.parent = parent
        self.children: dict[str, Cgroup] = {}
        self.procs: set[Process] = set()
        self.limit = limit
        self.reserved = 0
        self.counter = 0
        self.peak = 0
        self.events = 0
        self.events_local = 0
        self.notify_on_release = False
        self.clone_children = False
        # The charge walk: this cgroup and its ancestors below the root. The tree only ever
        # renames within a parent, so the walk of a cgroup never changes.
        self.chain: tuple[Cgroup, ...] = () if parent is None else (self, *parent.chain)

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def path(self) -> str:
        """The path from the root, ``/`` for the root, ``/a/b`` below it."""
        parts: list[str] = []
        node: Cgroup | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/" + "/".join(reversed(parts))

    def walk(self) -> Iterator[Cgroup]:
        """This cgroup and its ancestors, stopping before the root (the charge walk)."""
        return iter(self.chain)

    def descendants(self) -> Iterator[Cgroup]:
        """This cgroup and everything below it, parents before children, by name."""
        yield self
        for name in sorted(self.children):
            yield from self.children[name].descendants()

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r}, limit={self.limit}, current={self.counter})"


class IoasidsController:
    """The cgroup tree and the ``ioasids`` controller over an ``IoasidCore``.

    Creating a controller attaches it to ``core`` (``core.cgroups``); both share ``core.lock``.
    ``releases`` collects the paths of cgroups with ``notify_on_release`` that became empty; the
    daemon runs the release agent for each.
    """

    def __init__(self, core: IoasidCore) -> None:
        self.core = core
        self.knobs = core.knobs
        self.lock = core.lock
        self.root = Cgroup("", None, None)
        self.processes: dict[int, Process] = {}
        self.exit_hooks: list[Callable[[Process], None]] = []
        self.releases: deque[str] = deque()
        self.release_agent = ""
        self.sane_behavior = False
        self._warned_negative = False
        self._raised: list[tuple[Cgroup, int]] | None = None  # peaks the last try_charge raised
        # Knobs are fixed for the life of the controller; hot paths read these copies.
        self._limits_reserve = self.knobs.capacity_model != "overcommit"
        self._skip_defunct = self.knobs.uncharge_skips_defunct_mm
        self._uncharge_current = self.knobs.uncharge_target == "current"
        core.cgroups = self

    # ------------------------------------------------------------------ the tree
    def lookup(self, path: str) -> Cgroup:
        """The cgroup at ``path`` (``/`` or ``a/b`` or ``/a/b``); ``ENOENT`` if there is none."""
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            child = node.children.get(part)
            if child is None:
                raise IoasidError(ENOENT, f"no cgroup {path}")
            node = child
        return node

    def cgroups(self) -> Iterator[Cgroup]:
        """Every cgroup, the root first, then depth-first by name."""
        return self.root.descendants()

    def mkdir(
        self, parent: Cgroup, name: str, *, reserved_names: frozenset[str] = frozenset()
    ) -> Cgroup:
        """Create a child cgroup (``mkdir``).

        ``EEXIST`` if the name is taken by a cgroup or one of ``reserved_names`` (the face's
        files); ``EINVAL`` for an empty name, ``.``, ``..`` or one with ``/``, NUL or a newline
        (``cgroup_mkdir`` refuses ``\\n``);
        ``ENAMETOOLONG`` over 255 bytes. The new cgroup's limit follows ``new_cgroup_max``;
        ``notify_on_release`` and ``cgroup.clone_children`` are inherited from the parent.
        """
        with self.lock:
            self.core._enter()
            if not _valid_name(name):
                raise IoasidError(EINVAL, f"invalid cgroup name {name!r}")
            if len(name.encode()) > NAME_MAX:
                raise IoasidError(36, "cgroup name too long")  # ENAMETOOLONG
            if name in parent.children or name in reserved_names:
                raise IoasidError(EEXIST, f"{name} exists")
            if self.parent_gone(parent):
                raise IoasidError(ENODEV, f"{parent.path} was removed")
            limit = None if self.knobs.new_cgroup_max == "max" else 0
            cg = Cgroup(name, parent, limit)
            cg.notify_on_release = parent.notify_on_release
            cg.clone_children = parent.clone_children
            parent.children[name] = cg
            return cg

    def parent_gone(self, cg: Cgroup) -> bool:
        """Whether ``cg`` has been removed from the tree."""
        node = cg
        while node.parent is not None:
            if node.parent.children.get(node.name) is not node:
                return True
            node = node.parent
        return node is not self.root

    def rmdir(self, cg: Cgroup) -> None:
        """Remove a cgroup (``rmdir``): ``EBUSY`` for the root or while it has processes or
        children. In ``fixed`` its capacity reservation goes back to the pool; in ``v4`` it
        leaks (quirk 6). Charges still recorded against it stay until their IOASIDs go."""
        with self.lock:
            self.core._enter()
            if cg.parent is None or self.parent_gone(cg):
                code = EBUSY if cg.parent is None else ENOENT
                raise IoasidError(code, f"cannot remove {cg.path}")
            if cg.procs or cg.children:
                raise IoasidError(EBUSY, f"{cg.path} has processes or children")
            if cg.reserved:
                self.core.cancel_capacity_locked(cg.reserved)
                cg.reserved = 0
            del cg.parent.children[cg.name]
            self._check_release(cg.parent)

    def rename(self, cg: Cgroup, new_parent: Cgroup, new_name: str, *,
               reserved_names: frozenset[str] = frozenset()) -> None:
        """Rename a cgroup within its parent: ``EIO`` for a move to another parent (cgroup-v1
        refuses that), ``EEXIST`` onto an existing name, ``EINVAL`` for a bad name (as for
        ``mkdir``; ``cgroup1_rename`` refuses ``\\n``), ``ENAMETOOLONG`` over 255 bytes, ``EBUSY``
        for the root."""
        with self.lock:
            self.core._enter()
            if "\n" in new_name:
                raise IoasidError(EINVAL, f"invalid cgroup name {new_name!r}")
            if cg.parent is None:
                raise IoasidError(EBUSY, "cannot rename the root")
            if new_parent is not cg.parent:
                raise IoasidError(EIO, "cgroups can only be renamed within their parent")
            if not _valid_name(new_name):
                raise IoasidError(EINVAL, f"invalid cgroup name {new_name!r}")
            if len(new_name.encode()) > NAME_MAX:
                raise IoasidError(36, "cgroup name too long")  # ENAMETOOLONG
            if new_name == cg.name:
                return
            if new_name in cg.parent.children or new_name in reserved_names:
                raise IoasidError(EEXIST, f"{new_name} exists")
            del cg.parent.children[cg.name]
            cg.name = new_name
            cg.parent.children[new_name] = cg

    # ------------------------------------------------------------------ limits
    def set_max(self, cg: Cgroup, limit: int | None) -> None:
        """Set ``ioasids.max`` (``None`` is the literal ``max``), granting it against capacity.

        ``reserve`` (fixed): a number reserves itself from the pool (``ENOSPC`` when the pool
        lacks the growth), the reservation is returned on shrink, ``max`` means no limit and
        reserves nothing. ``reserve-v4``: the series' algorithm, leaks included (quirk 5).
        ``overcommit``: nothing is reserved. ``EINVAL`` for the root or a negative limit, and in
        ``v4`` for writing the current limit again.
        """
        with self.lock:
            self.core._enter()
            if cg.parent is None:
                raise IoasidError(EINVAL, "the root cgroup has no limit")
            if limit is not None and limit < 0:
                raise IoasidError(EINVAL, f"negative limit {limit}")
            model = self.knobs.capacity_model
            if model == "reserve-v4":
                self._set_max_v4(cg, limit)
                return
            if limit == cg.limit:
                if self.knobs.same_limit_einval:
                    raise IoasidError(EINVAL, "the limit is already that value")
                return
            if model == "reserve":
                want = 0 if limit is None else limit
                if want > cg.reserved:
                    self.core.reserve_capacity_locked(want - cg.reserved)
                elif want < cg.reserved:
                    self.core.cancel_capacity_locked(cg.reserved - want)
                cg.reserved = want
            cg.limit = limit

    def _set_max_v4(self, cg: Cgroup, limit: int | None) -> None:
        core = self.core
        current = cg.limit or 0
        if limit is None:
            new = core.reserve_capacity_locked(0)
            with contextlib.suppress(IoasidError):  # nothing is left: the series ignores it
                core.reserve_capacity_locked((new - current) & U32_MASK)
            cg.limit = new
            return
        if limit == current and self.knobs.same_limit_einval:
            raise IoasidError(EINVAL, "the limit is already that value")
        if limit < current:
            core.cancel_capacity_locked((current - limit) & U32_MASK)
        elif limit > current:
            core.reserve_capacity_locked((limit - current) & U32_MASK)
        cg.limit = limit

    # ------------------------------------------------------------------ charging
    def try_charge(self, cg: Cgroup, n: int) -> bool:
        """Charge ``n`` along the walk from ``cg``, refusing at the first level over its limit.

        On refusal every level is restored (counters and peaks), the refusal is counted
        (``events`` knob) and ``EAGAIN`` is raised. Returns whether some level of the walk has a
        numeric limit (its reservation then covers the charge). Peaks rise with the charge;
        ``cancel_charge`` undoes both if the allocation that charged is refused afterwards, so
        that a refused allocation leaves every peak as it was.
        """
        covered = False
        chain = cg.chain
        raised: list[tuple[Cgroup, int]] | None = None
        for node in chain:
            counter = node.counter + n
            node.counter = counter
            limit = node.limit
            if limit is not None:
                covered = True
                if counter > limit:
                    self._refuse(chain, node, n, raised)
            if counter > node.peak:
                if raised is None:
                    raised = []
                raised.append((node, node.peak))
                node.peak = counter
        self._raised = raised
        return covered and self._limits_reserve

    def cancel_charge(self, cg: Cgroup, n: int) -> None:
        """Undo the ``try_charge`` just made from ``cg`` (the allocation was refused later):
        counters and the peaks it raised go back."""
        self.uncharge(cg, n)
        self._restore_peaks(self._raised)
        self._raised = None

    @staticmethod
    def _restore_peaks(raised: list[tuple[Cgroup, int]] | None) -> None:
        if raised is not None:
            for node, peak in raised:
                node.peak = peak

    def _refuse(self, chain: tuple[Cgroup, ...], refusing: Cgroup, n: int,
                raised: list[tuple[Cgroup, int]] | None) -> None:
        for done in chain:
            done.counter -= n
            if done is refusing:
                break
        self._restore_peaks(raised)
        if self.knobs.events == "hierarchical":
            refusing.events_local += 1
            for above in refusing.chain:
                above.events += 1
        raise IoasidError(EAGAIN, f"{refusing.path}: ioasids.max {refusing.limit} reached")

    def charge(self, cg: Cgroup, n: int) -> None:
        """Charge ``n`` along the walk with no limit check (migration)."""
        for node in cg.chain:
            node.counter += n
            if node.counter > node.peak:
                node.peak = node.counter

    def uncharge(self, cg: Cgroup, n: int) -> None:
        """Uncharge ``n`` along the walk. Going below zero is logged once (and still done)."""
        for node in cg.chain:
            node.counter -= n
            if node.counter < 0 and not self._warned_negative:
                self._warned_negative = True
                self.core._warn(f"ioasids_cg: {node.path} counter went negative")

    def charge_alloc(self, ioasid_set: IoasidSet, task: Process | None) -> tuple[Cgroup, bool]:
        """``ioasid_cg_charge``: charge one IOASID of an MM set to the calling task's cgroup.

        ``EINVAL`` if there is no task (kernel context) or it has exited, ``EPERM`` if the task
        does not own the set, ``EAGAIN`` if a limit refuses. Returns the charged cgroup and
        whether a limit's reservation covers the charge.
        """
        if task is None or not task.alive:
            raise IoasidError(EINVAL, "no mm to charge")
        token = ioasid_set.token
        if token is not task and token != task.mm:
            self.core._warn(f"ioasids_cg: pid {task.pid} does not own set {ioasid_set.id}")
            raise IoasidError(EPERM, "the calling process does not own the set")
        cg = task.cgroup
        return cg, self.try_charge(cg, 1)

    def uncharge_reclaim(self, data: IoasidData, task: Process | None) -> None:
        """``ioasid_cg_uncharge`` at the final release of an MM-set IOASID.

        ``charged`` (fixed): the cgroup recorded at charge time. ``current`` (v4, quirk 7): the
        reclaiming task's cgroup (nothing for kernel context); with ``uncharge_skips_defunct_mm``
        nothing when the owner has exited.
        """
        if self._skip_defunct:
            owner = data.set.token
            if isinstance(owner, Process) and not owner.alive:
                self.core._warn(f"ioasids_cg: MM defunct, IOASID {data.id} not uncharged")
                return
        if self._uncharge_current:
            if task is not None:
                self.uncharge(task.cgroup, 1)
            return
        cg = data.cgroup
        if cg is not None:
            data.cgroup = None
            for node in cg.chain:
                node.counter -= 1
                if node.counter < 0:
                    self.uncharge(node, 0)  # logs the negative counter once

    # ------------------------------------------------------------------ processes
    def process(self, pid: int) -> Process | None:
        """The tracked process with ``pid``, or ``None`` (then it is in the root cgroup)."""
        return self.processes.get(pid)

    def track(self, pid: int, start_time: float, cgroup: Cgroup | None = None,
              threads: int = 1) -> Process:
        """Start tracking a process (or return the tracked one with that key) in ``cgroup``
        (default root). A tracked process with the same pid but another start time is an
        earlier process that exited unnoticed: it is released first."""
        with self.lock:
            old = self.processes.get(pid)
            if old is not None:
                if old.start_time == start_time:
                    return old
                self.exit(old)
            cg = cgroup or self.root
            proc = Process(pid, start_time, cg, threads)
            self.processes[pid] = proc
            cg.procs.add(proc)
            return proc

    def fork(self, parent_pid: int, pid: int, start_time: float) -> Process | None:
        """A process forked: the child starts in its parent's cgroup. Children of untracked
        (root) parents are not tracked; returns the child when it is."""
        with self.lock:
            parent = self.processes.get(parent_pid)
            if parent is None or parent.cgroup is self.root:
                return None
            return self.track(pid, start_time, parent.cgroup)

    def exit(self, proc: Process) -> None:
        """A process exited: it leaves its cgroup and the exit hooks release what it held.

        As in the kernel's ``do_exit``, the mm is gone before the files are closed: the hooks
        run with ``proc.alive`` already false (which ``uncharge_skips_defunct_mm`` observes).
        """
        with self.lock:
            if not proc.alive:
                return
            proc.alive = False
            for hook in self.exit_hooks:
                hook(proc)
            if self.processes.get(proc.pid) is proc:
                del self.processes[proc.pid]
            cg = proc.cgroup
            cg.procs.discard(proc)
            self._check_release(cg)

    def _check_release(self, cg: Cgroup) -> None:
        if cg.parent is not None and cg.notify_on_release and not cg.procs and not cg.children:
            self.releases.append(cg.path)

    def _moved_set(self, proc: Process) -> IoasidSet | None:
        ioasid_set = self.core._find_mm_set(proc.mm)
        return ioasid_set if ioasid_set is not None and self.core.set_valid(ioasid_set) else None

    def can_attach(self, procs: list[Process], dst: Cgroup) -> None:
        """The ``can_attach`` callback: move each process's charges to ``dst`` as the
        ``migration`` knob says. Never refuses: ``current`` may exceed ``max`` afterwards."""
        if self.knobs.migration != "move":
            return
        for proc in procs:
            ioasid_set = self._moved_set(proc)
            if ioasid_set is None or proc.cgroup is dst:
                continue
            if self.knobs.uncharge_target == "current":
                n = ioasid_set.nr_ioasids
                self.charge(dst, n)
                self.uncharge(proc.cgroup, n)
                continue
            for data in self._charged_ids(ioasid_set):
                if data.cgroup is not dst and data.cgroup is not None:
                    self.charge(dst, 1)
                    self.uncharge(data.cgroup, 1)
                    data.cgroup = dst

    def cancel_attach(self, procs: list[Process], src: Cgroup, dst: Cgroup) -> None:
        """The ``cancel_attach`` callback: undo ``can_attach``. In ``v4`` (quirk 9) it moves
        back one charge per task, whatever was moved; in ``fixed`` exactly what moved."""
        if self.knobs.migration != "move":
            return
        for proc in procs:
            if self.knobs.cancel_attach_per_task:
                self.charge(src, proc.threads)
                self.uncharge(dst, proc.threads)
                continue
            ioasid_set = self._moved_set(proc)
            if ioasid_set is None or src is dst:
                continue
            if self.knobs.uncharge_target == "current":
                n = ioasid_set.nr_ioasids
                self.charge(src, n)
                self.uncharge(dst, n)
                continue
            for data in self._charged_ids(ioasid_set):
                if data.cgroup is dst:
                    self.charge(src, 1)
                    self.uncharge(dst, 1)
                    data.cgroup = src

    def _charged_ids(self, ioasid_set: IoasidSet) -> list[IoasidData]:
        return [d for d in self.core.set_members(ioasid_set) if d.cgroup is not None]

    def attach(self, proc: Process, dst: Cgroup) -> None:
        """Move a process into ``dst`` (a write to ``cgroup.procs``), with its charges.

        ``ESRCH`` if the process has exited, ``ENODEV`` if ``dst`` was removed.
        """
        with self.lock:
            self.core._enter()
            if not proc.alive:
                raise IoasidError(ESRCH, f"process {proc.pid} has exited")
            if self.parent_gone(dst):
                raise IoasidError(ENODEV, f"{dst.path} was removed")
            src = proc.cgroup
            if src is dst:
                return
            self.can_attach([proc], dst)
            src.procs.discard(proc)
            dst.procs.add(proc)
            proc.cgroup = dst
            self._check_release(src)

    def ensure_tracked(self, pid: int, start_time: float, threads: int = 1) -> Process:
        """The process for ``pid`` (tracked in the root when unknown)."""
        return self.track(pid, start_time, None, threads)

    def check_owner(self, writer_uid: int, target_uids: tuple[int, ...]) -> None:
        """cgroup-v1's permission rule for moving a process: root, or a writer whose euid
        matches the target's uid or suid. ``EACCES`` otherwise. The writer's euid is that of
        the credentials the file was opened with (``of->file->f_cred``)."""
        if writer_uid != 0 and writer_uid not in target_uids:
            raise IoasidError(13, "not allowed to move that process")  # EACCES

    def stats(self) -> dict[str, Any]:
        """Counts for status output."""
        return {
            "cgroups": sum(1 for _ in self.cgroups()),
            "processes": len(self.processes),
        }


# Errnos re-exported for faces that match them without importing errno.
__all__ = ["EAGAIN", "EBUSY", "EEXIST", "ENOSPC", "EPERM", "Cgroup", "IoasidsController", "Process"]
