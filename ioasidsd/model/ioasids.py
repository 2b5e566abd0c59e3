"""The ``ioasids`` cgroup controller (``kernel/cgroup/ioasids.c`` of the V4 series).

The controller limits how many IOASIDs the processes of a cgroup and its descendants may hold.
It is hosted by a ``Hierarchy`` (``ioasidsd.model.hierarchy``) through the ``Controller`` hooks
and knows the tree only through them and the ``Cgroup`` nodes they pass; the hierarchy, in turn,
never touches the controller's per-cgroup state (the ``Cgroup`` slots ``limit``, ``reserved``,
``counter``, ``peak``, ``events``, ``events_local``, set up by ``css_alloc``).

* ``ioasids.max`` (``set_max``): the limit of a cgroup, ``None`` for ``max``; the root has none.
  A limit is granted against the IOASID core's capacity as ``knobs.capacity_model`` says
  (``reserve``: see below; ``reserve-v4``: the series' algorithm, where every numeric limit
  reserves from the pool, nested or not, with its leaks; ``overcommit``: nothing).
* ``reserve``, reservations that cannot escape a subtree: a numeric limit with no numerically
  limited ancestor (a *top* limit) holds its value from the pool (``Cgroup.reserved``). A numeric
  limit below a numerically limited ancestor (the nearest one, ``max`` levels skipped) is carved
  out of that ancestor's limit and holds nothing from the pool: the limits carved out of one
  cgroup add up to at most its own (``ENOSPC`` otherwise, whatever the pool holds), and a limit
  cannot go below what is carved out of it (``EBUSY``). A top limit that shrinks, turns to
  ``max`` or whose cgroup is removed gives back only what no live IOASID needs: a live IOASID it
  covered that no limit covers any more becomes *pooled* (``IoasidData.pooled``: it holds one
  unit of its own, returned when it is reclaimed). ``over_reserved`` lists what the nested
  limits of a state saved under the flat rule still hold from the pool; it goes back when those
  limits are written again or their cgroups removed.
* ``ioasids.current`` (``counter``) counts the IOASIDs charged to a cgroup and its descendants.
  A charge walks from the charged cgroup up to, not including, the root (``Cgroup.chain``);
  ``try_charge`` refuses with ``EAGAIN`` at the first level over its limit and leaves every
  counter and peak as it was. It returns a ``Charge`` that ``cancel_charge`` takes to undo it
  exactly when the allocation that charged is refused afterwards; its ``EAGAIN`` names the
  refusing cgroup's path in ``IoasidError.level``. ``peak`` is the highest ``counter`` seen;
  ``events``/``events_local`` count refusals (``knobs.events``).
* A counter that goes below zero is logged once (``warned_negative``) and kept.
* Migration: ``can_attach`` moves a migrating process's charges to the destination as
  ``knobs.migration`` says (it never refuses: ``current`` may exceed ``max`` afterwards);
  ``cancel_attach`` moves them back (``cancel_attach_per_task``: one per task in ``v4``).
* The core calls ``charge_alloc`` when it allocates an IOASID of an MM set and
  ``uncharge_reclaim`` when it reclaims one (``knobs.uncharge_target``).

Every method runs under ``core.lock`` (the hierarchy's lock is the same).
"""

from __future__ import annotations

import contextlib
from errno import EAGAIN, EBUSY, EINVAL, ENOSPC, EPERM
from typing import TYPE_CHECKING, NamedTuple

from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Cgroup, Controller, Hierarchy, Process, TaskSet

if TYPE_CHECKING:
    from ioasidsd.model.core import IoasidCore, IoasidData, IoasidSet

U32_MASK = 0xFFFFFFFF


class Charge(NamedTuple):
    """What one successful ``try_charge`` did, for ``cancel_charge`` to undo: ``n`` charged
    along the walk from ``cgroup``, and the peaks it raised with the values they had
    (``raised``). ``covered``: some level of the walk has a numeric limit whose reservation
    covers the charge. Immutable (a named tuple: made on every allocation, so the cheapest
    immutable record)."""

    cgroup: Cgroup
    n: int
    covered: bool
    raised: tuple[tuple[Cgroup, int], ...] = ()


_new_charge = tuple.__new__


class IoasidsController(Controller):
    """The ``ioasids`` controller over an ``IoasidCore``, bound to ``hierarchy``.

    Without ``hierarchy``, a new one is made for it over ``core.lock`` (as ``mount -t cgroup -o
    ioasids`` makes a hierarchy with only this controller). Creating a controller attaches it to
    ``core`` (``core.controller``). ``ValueError`` if ``hierarchy`` does not use ``core.lock``;
    ``EBUSY`` from ``Hierarchy.bind`` if it already has cgroups below its root.
    """

    name = "ioasids"

    def __init__(self, core: IoasidCore, hierarchy: Hierarchy | None = None) -> None:
        self.core = core
        self.knobs = core.knobs
        self.lock = core.lock
        self.warned_negative = False
        """Whether the negative-counter warning was given (it is given once). Read by the
        store on every change, so an attribute: only the controller and a snapshot's load
        (``restore_warned_negative``) set it."""
        self._bound = False
        self._pooled: list[IoasidData] = []
        # Knobs are fixed for the life of the controller; hot paths read these copies.
        self._limits_reserve = self.knobs.capacity_model != "overcommit"
        self._skip_defunct = self.knobs.uncharge_skips_defunct_mm
        self._uncharge_current = self.knobs.uncharge_target == "current"
        if hierarchy is None:
            hierarchy = Hierarchy(core.lock, enter=core.check_not_in_notifier)
        elif hierarchy.lock is not core.lock:
            raise ValueError("the hierarchy must use the core's lock")
        self.hierarchy = hierarchy
        hierarchy.bind(self)
        core.controller = self

    def restore_warned_negative(self, warned: bool) -> None:
        """Set whether the negative-counter warning was given (``snapshot.load``)."""
        self.warned_negative = warned

    # ------------------------------------------------------------------ hierarchy hooks
    def bound(self, hierarchy: Hierarchy) -> None:
        """Bound to ``hierarchy`` (the one given to ``__init__``); ``EBUSY`` for a second
        binding: the controller lives on one hierarchy."""
        if self._bound:
            raise IoasidError(EBUSY, "the ioasids controller is bound to a hierarchy already")
        self._bound = True

    def css_alloc(self, cg: Cgroup) -> None:
        """A cgroup's state: nothing charged, no refusal; the root has no limit, a new cgroup
        the limit ``knobs.new_cgroup_max`` gives (``0`` or ``max``). Never refuses."""
        if cg.parent is None or self.knobs.new_cgroup_max == "max":
            cg.limit = None
        else:
            cg.limit = 0
        cg.reserved = 0
        cg.counter = 0
        cg.peak = 0
        cg.events = 0
        cg.events_local = 0

    def css_offline(self, cg: Cgroup) -> None:
        """A cgroup being removed gives its reservation back to the pool (``reserve``): a top
        limit only what no live IOASID charged to it needs, the rest of them becoming pooled;
        in ``reserve-v4`` nothing is reserved by a cgroup, so its limit leaks. Charges
        still recorded against it stay until their IOASIDs go. ``EINVAL``, refusing the
        ``rmdir``, if the pool cannot take the reservation back (a capacity installed since,
        with ``install_capacity_resets``)."""
        if not cg.reserved:
            return
        keep: list[IoasidData] = []
        if self.knobs.capacity_model == "reserve" and _limited_above(cg) is None:
            keep = self._covered_ids(cg, ())[: cg.reserved]
        self.core.cancel_capacity_locked(cg.reserved - len(keep))
        cg.reserved = 0
        self._pool(keep)

    # ------------------------------------------------------------------ limits
    def set_max(self, cg: Cgroup, limit: int | None) -> None:
        """Set ``ioasids.max`` (``None`` is the literal ``max``), granting it against capacity.

        ``reserve`` (fixed): see the module's documentation; ``ENOSPC`` when the pool (for a
        top limit) or the nearest numerically limited ancestor (for a nested one) lacks the
        growth, ``EBUSY`` below what limits under it carve out of it; ``max`` means no limit.
        ``reserve-v4``: the series' algorithm, leaks included (``max`` takes what is left and
        reads back a number): every numeric limit reserves from the pool, nested or not.
        ``overcommit``: nothing is reserved. ``EINVAL`` for the root or a negative limit, and in
        ``v4`` for writing the current limit again. The live IOASIDs that became pooled are kept
        for ``take_pooled``.
        """
        with self.lock:
            self.core.check_not_in_notifier()
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
                self._set_max_reserve(cg, limit)
                return
            cg.limit = limit

    def _set_max_reserve(self, cg: Cgroup, limit: int | None) -> None:
        """``set_max`` in the ``reserve`` model: every check first, then the changes."""
        above = _limited_above(cg)
        below = _limited_below(cg)
        carved = _carved(below)
        if limit is not None and limit < carved:
            raise IoasidError(EBUSY, f"{cg.path}: limits below it hold {carved} of it")
        core = self.core
        if above is not None:  # carved out of `above`: the pool is not touched
            old_share = carved if cg.limit is None else cg.limit
            new_share = carved if limit is None else limit
            if new_share > old_share:
                others = _carved([d for d in _limited_below(above) if cg not in d.chain])
                room = (above.limit or 0) - others
                if new_share > room:
                    raise IoasidError(ENOSPC, f"{above.path}: {room} of its ioasids.max "
                                              f"{above.limit} left to carve out")
            if cg.reserved:  # held from the pool under the flat rule of an earlier state
                core.cancel_capacity_locked(cg.reserved)
                cg.reserved = 0
            cg.limit = limit
            return
        if limit is not None:  # a top limit: it holds `limit`, the limits below re-home in it
            rehomed = sum(d.reserved for d in below) if cg.limit is None else 0
            keep = self._covered_ids(cg, ()) if limit < cg.reserved else []
            keep = keep[: max(0, min(len(keep), cg.reserved) - limit)]
            growth = limit + len(keep) - cg.reserved - rehomed
            if growth > 0:
                core.reserve_capacity_locked(growth)
            elif growth < 0:
                core.cancel_capacity_locked(-growth)
            for d in below if cg.limit is None else ():
                d.reserved = 0
            cg.reserved, cg.limit = limit, limit
            self._pool(keep)
            return
        # a top limit turned to `max`: the limits below become top limits, each holding its
        # limit; the live IOASIDs they do not cover keep what they need of cg's reservation
        keep = self._covered_ids(cg, below)
        for d in below:
            covered = self._covered_ids(d, ())
            keep += covered[: max(0, len(covered) - (d.limit or 0))]
        keep = keep[: max(0, cg.reserved - carved)]
        growth = carved - sum(d.reserved for d in below) + len(keep) - cg.reserved
        if growth > 0:
            core.reserve_capacity_locked(growth)
        elif growth < 0:
            core.cancel_capacity_locked(-growth)
        for d in below:
            d.reserved = d.limit or 0
        cg.reserved, cg.limit = 0, None
        self._pool(keep)

    def _covered_ids(self, cg: Cgroup, under: list[Cgroup] | tuple[Cgroup, ...],
                     ) -> list[IoasidData]:
        """The live IOASIDs charged in ``cg``'s subtree, not pooled and not charged under one
        of ``under``, ascending by set and ID."""
        found = []
        for ioasid_set in self.core.sets:
            for data in self.core.set_members(ioasid_set):
                charged = data.cgroup
                if charged is None or data.pooled or cg not in charged.chain:
                    continue
                if not any(d in charged.chain for d in under):
                    found.append(data)
        return found

    def _pool(self, ids: list[IoasidData]) -> None:
        """Make ``ids`` pooled: each holds the unit of capacity the caller kept for it."""
        for data in ids:
            data.pooled = True
        self._pooled.extend(ids)

    def take_pooled(self) -> list[int]:
        """The IOASIDs that became pooled (``set_max``, ``css_offline``) since the last call,
        for the caller to report as changed."""
        ids = [data.id for data in self._pooled]
        self._pooled.clear()
        return ids

    @property
    def over_reserved(self) -> list[tuple[str, int]]:
        """``reserve``: what nested limits hold from the pool, which the rule of the module's
        documentation never does (a state saved under the flat rule), as ``(path, amount)`` by
        path; empty when the rule holds."""
        if self.knobs.capacity_model != "reserve":
            return []
        return [(cg.path, cg.reserved) for cg in self.hierarchy.cgroups()
                if cg.reserved and _limited_above(cg) is not None]

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
    def try_charge(self, cg: Cgroup, n: int) -> Charge:
        """Charge ``n`` along the walk from ``cg``, refusing at the first level over its limit.

        On refusal every level is restored (counters and peaks), the refusal is counted
        (``events`` knob) and ``EAGAIN`` is raised. Peaks rise with the charge. Returns the
        ``Charge`` that ``cancel_charge`` takes if the allocation that charged is refused
        afterwards, so that a refused allocation leaves every counter and peak as it was.
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
        covered = covered and self._limits_reserve
        if raised is None and n == 1:  # every allocation but a cgroup's first: made once
            units = cg.unit_charges
            if not units:
                units = cg.unit_charges = (Charge(cg, 1, False), Charge(cg, 1, True))
            return units[covered]
        return _new_charge(Charge, (cg, n, covered, () if raised is None else tuple(raised)))

    def cancel_charge(self, charge: Charge) -> None:
        """Undo the ``try_charge`` that returned ``charge`` (the allocation was refused later):
        the counters and the peaks it raised go back. Call it at most once per ``Charge``, before
        any other charge on the same walk changes a peak."""
        self.uncharge(charge.cgroup, charge.n)
        self._restore_peaks(charge.raised)

    @staticmethod
    def _restore_peaks(raised: list[tuple[Cgroup, int]] | tuple[tuple[Cgroup, int], ...] | None,
                       ) -> None:
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
        exc = IoasidError(EAGAIN, f"{refusing.path}: ioasids.max {refusing.limit} reached")
        exc.level = refusing.path  # the refusing level, for the refusal's report
        raise exc

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
            if node.counter < 0 and not self.warned_negative:
                self.warned_negative = True
                self.core.warn(f"ioasids_cg: {node.path} counter went negative")

    def charge_alloc(self, ioasid_set: IoasidSet, task: Process | None) -> Charge:
        """``ioasid_cg_charge``: charge one IOASID of an MM set to the calling task's cgroup.

        ``EINVAL`` if there is no task (kernel context) or it has exited, ``EPERM`` if the task
        does not own the set, ``EAGAIN`` if a limit refuses. Returns the ``Charge`` (its
        cgroup, and whether a limit's reservation covers it).
        """
        if task is None or not task.alive:
            raise IoasidError(EINVAL, "no mm to charge")
        token = ioasid_set.token
        if token is not task and token != task.mm:
            self.core.warn(f"ioasids_cg: pid {task.pid} does not own set {ioasid_set.id}")
            raise IoasidError(EPERM, "the calling process does not own the set")
        return self.try_charge(task.cgroup, 1)

    def charge_alloc_many(self, ioasid_set: IoasidSet, task: Process | None,
                          n: int) -> Charge | None:
        """``n`` ``charge_alloc`` calls at once, when all ``n`` would succeed: the one
        ``Charge`` of ``n`` along the walk (peaks raised to the final counters, as ``n`` single
        charges raise them). ``None``, with nothing changed and nothing counted, when any of
        them would be refused (no task, an exited task or one that does not own the set, a
        level whose limit ``n`` more would pass): the caller then charges one by one, so that
        a refusal is reported, counted and undone exactly as ``charge_alloc`` does it."""
        if task is None or not task.alive:
            return None
        token = ioasid_set.token
        if token is not task and token != task.mm:
            return None
        chain = task.cgroup.chain
        for node in chain:
            limit = node.limit
            if limit is not None and node.counter + n > limit:
                return None
        return self.try_charge(task.cgroup, n)

    def uncharge_reclaim_many(self, datas: list[IoasidData], task: Process | None) -> bool:
        """``uncharge_reclaim`` for each of ``datas`` (MM-set IOASIDs reclaimed together), made
        at once when that is sure to be the same: ``False``, with nothing changed, when one of
        them would warn (an owner that has exited under ``uncharge_skips_defunct_mm``, a counter
        that would go below zero); the caller then reclaims them one by one."""
        if self._skip_defunct:
            for data in datas:
                owner = data.set.token
                if isinstance(owner, Process) and not owner.alive:
                    return False
        if self._uncharge_current:
            if task is None:
                return True
            n = len(datas)
            chain = task.cgroup.chain
            for node in chain:
                if node.counter < n:
                    return False
            for node in chain:
                node.counter -= n
            return True
        counts: dict[Cgroup, int] = {}
        for data in datas:
            cg = data.cgroup
            if cg is not None:
                counts[cg] = counts.get(cg, 0) + 1
        below: dict[Cgroup, int] = {}  # what each level loses, over every charged cgroup
        for cg, n in counts.items():
            for node in cg.chain:
                below[node] = below.get(node, 0) + n
        for node, n in below.items():
            if node.counter < n:
                return False
        for node, n in below.items():
            node.counter -= n
        for data in datas:
            data.cgroup = None
        return True

    def uncharge_reclaim(self, data: IoasidData, task: Process | None) -> None:
        """``ioasid_cg_uncharge`` at the final release of an MM-set IOASID.

        ``charged`` (fixed): the cgroup recorded at charge time. ``current`` (v4): the
        reclaiming task's cgroup (nothing for kernel context); with ``uncharge_skips_defunct_mm``
        nothing when the owner has exited.
        """
        if self._skip_defunct:
            owner = data.set.token
            if isinstance(owner, Process) and not owner.alive:
                self.core.warn(f"ioasids_cg: MM defunct, IOASID {data.id} not uncharged")
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

    def walks_changed(self, old_walks: dict[Cgroup, tuple[Cgroup, ...]]) -> None:
        """The hook of a v2 hierarchy enabling or disabling the controller: each IOASID charged
        to a cgroup of ``old_walks`` leaves that cgroup's old walk for its new one (``chain``),
        with no limit check; peaks rise with it. A removed cgroup still charged (not in the tree,
        so not in ``old_walks``) has the cgroups that lost the controller taken out of its walk:
        their state is reset, and its IOASIDs are not counted there."""
        moved: dict[Cgroup, int] = {}
        lost = {node for node, walk in old_walks.items() if node in walk and node not in node.chain}
        for data in self.core.ioasids():
            cg = data.cgroup
            if cg is None:
                continue
            if cg in old_walks:
                moved[cg] = moved.get(cg, 0) + 1
            elif lost and not lost.isdisjoint(cg.chain):
                # a removed cgroup still charged: its walk leaves the cgroups whose state is
                # reset, as the kernel's dead css keeps counting only on dead ancestors
                cg.chain = tuple(node for node in cg.chain if node not in lost)
        for cg, n in moved.items():
            for node in old_walks[cg]:
                node.counter -= n
            self.charge(cg, n)

    # ------------------------------------------------------------------ migration
    def _moved_set(self, proc: Process) -> IoasidSet | None:
        ioasid_set = self.core.find_mm_set_locked(proc.mm)
        return ioasid_set if ioasid_set is not None and self.core.set_valid(ioasid_set) else None

    def can_attach(self, tset: TaskSet) -> None:
        """The ``can_attach`` hook: move each process's charges to ``tset.dst`` as the
        ``migration`` knob says. Never refuses: ``current`` may exceed ``max`` afterwards."""
        if self.knobs.migration != "move":
            return
        dst = tset.dst
        for proc in tset.procs:
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

    def cancel_attach(self, tset: TaskSet) -> None:
        """The ``cancel_attach`` hook: undo ``can_attach``. In ``v4`` it moves
        back one charge per task, whatever was moved; in ``fixed`` exactly what moved."""
        if self.knobs.migration != "move":
            return
        src, dst = tset.src, tset.dst
        for proc in tset.procs:
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


def _limited_above(cg: Cgroup) -> Cgroup | None:
    """The nearest ancestor of ``cg`` below the root with a numeric limit, or ``None``."""
    for node in cg.chain[1:]:
        if node.limit is not None:
            return node
    return None


def _carved(limited: list[Cgroup]) -> int:
    """What the numeric limits of ``limited`` add up to."""
    return sum(cg.limit or 0 for cg in limited)


def _limited_below(cg: Cgroup) -> list[Cgroup]:
    """The cgroups under ``cg`` with a numeric limit and none between them and ``cg``."""
    found = []
    todo = list(cg.children.values())
    while todo:
        node = todo.pop()
        if node.limit is not None:
            found.append(node)
        else:
            todo.extend(node.children.values())
    return found


__all__ = ["Charge", "IoasidsController"]
