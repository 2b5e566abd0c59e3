"""Recording live traffic as a trace: a live ``System``'s changes turned into trace rows.

``TraceRecorder(system, clock)`` follows the ``Change`` records of a running ``System`` (the
daemon hands it each one, under the model's lock, while a recording is active; when none is,
nothing is called) and keeps the rows of a trace (``ioasidsd.experiments.trace``: ``time``,
``op``, ``pid``, ``cgroup``, ``count``) until ``take`` hands them over. ``Recordings`` is the
daemon's one recording at a time, with the start, read and stop that the control verb
``trace`` exposes.

What is recorded, so that a policy replaying the trace sees the same requests:

* A process enters the trace when it first asks for IOASIDs (or, at the start, when it holds
  some): a ``spawn`` in the cgroup it is in then, followed by an ``alloc`` of what it holds.
  Processes that never touch ``/dev/ioasid`` (every other process on the machine) are left
  out: they change no charge. Once in the trace, its moves (``move``) and its exit (``exit``)
  are recorded.
* Every allocation request is one ``alloc`` row with its count: one for ``REQUEST_ALLOC``, the
  batch's size for ``REQUEST_ALLOC_BATCH``, whether the daemon granted or refused it (a
  refusal is demand too: other limits may grant it).
* IOASIDs freed while their process lives (``REQUEST_FREE``, a batch free, the last close of
  ``/dev/ioasid``) are one ``free`` row per change and process, with the number freed; what
  an exit releases is the ``exit`` row's.
* ``time`` is seconds since the recording started (``clock``, a monotonic clock), to the
  microsecond. ``pid`` is the process's pid, unless that pid was already used in this trace by
  an earlier process (a reused pid): then a number above ``PID_MAX_LIMIT`` not used yet.

Not recorded: VT-d binds and unbinds (the trace's ``bind``/``unbind`` rows are written by
hand), which IDs were asked for (a trace carries counts), and the order of frees (a replayed
``free`` frees the most recent IOASIDs).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from errno import EBUSY, ESRCH
from typing import TYPE_CHECKING, Any

from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Process

if TYPE_CHECKING:
    from ioasidsd.system import System

__all__ = ["LEASE_S", "MAX_ROWS", "PID_MAX_LIMIT", "Recordings", "TraceRecorder"]

PID_MAX_LIMIT = 1 << 22
"""Linux's largest pid: a reused pid is renamed above it."""
MAX_ROWS = 1 << 20
"""The most rows a recording keeps unread; one more ends the recording (``ended``)."""
LEASE_S = 60.0
"""A recording whose rows nobody takes for this long ends (its client is gone)."""
_ALLOCS = {"REQUEST_ALLOC", "REQUEST_ALLOC_BATCH"}
_IOASID_KINDS = {ChangeKind.SET, ChangeKind.IOASID, ChangeKind.VTD_CLEANUP}
"""The kinds whose records name IOASIDs allocated or freed (a bound IOASID freed by its process
is released later, by the VT-d driver's cleanup)."""

Row = list[Any]
"""``[time, op, pid, cgroup, count]``: one trace row."""


class TraceRecorder:
    """The trace of ``system``'s changes from now on (see the module's documentation).
    ``note(change)`` is to be called under ``system.lock`` with every change; ``take()``
    (also under the lock) returns the rows made since the last ``take``."""

    def __init__(self, system: System, clock: Callable[[], float]) -> None:
        self.system = system
        self.clock = clock
        self.start = clock()
        self.last_take = self.start
        self.rows: list[Row] = []
        self.ended: str | None = None
        """Why the recording ended by itself (``None`` while it runs)."""
        self.pids: dict[Process, int] = {}  # processes in the trace -> their trace pid
        self.used: set[int] = set()
        self.next_pid = PID_MAX_LIMIT + 1
        self.held: dict[int, set[int]] = {}  # set id -> its IOASIDs the trace holds
        self.set_of: dict[int, int] = {}  # IOASID -> its set id
        self.owner: dict[int, Process] = {}  # set id -> the process whose set it is
        core = system.core
        self.index = core.ioasid_index
        self.sets = core.sets_by_id
        for ioasid_set in list(self.sets.values()):  # what processes hold at the start
            token = ioasid_set.token
            if isinstance(token, Process) and token.alive and ioasid_set.xa:
                self._add(ioasid_set.id, token, ioasid_set.xa)
                self._alloc_row(0.0, token, len(ioasid_set.xa))

    # ------------------------------------------------------------------ rows
    def _now(self) -> float:
        return round(self.clock() - self.start, 6)

    def _pid(self, proc: Process, now: float) -> int:
        """``proc``'s trace pid, with a ``spawn`` row if it is not in the trace yet."""
        pid = self.pids.get(proc)
        if pid is None:
            pid = proc.pid
            if pid in self.used:
                pid = self.next_pid
                self.next_pid += 1
            self.used.add(pid)
            self.pids[proc] = pid
            self.rows.append([now, "spawn", pid, proc.cgroup.path, ""])
        return pid

    def _alloc_row(self, now: float, proc: Process, count: int) -> None:
        pid = self._pid(proc, now)
        self.rows.append([now, "alloc", pid, "", count])

    def _add(self, set_id: int, owner: Process, ids: Any) -> None:
        self.owner[set_id] = owner
        held = self.held.setdefault(set_id, set())
        held.update(ids)
        for ioasid in ids:
            self.set_of[ioasid] = set_id

    # ------------------------------------------------------------------ the feed
    def note(self, change: Change) -> None:
        """Turn one change into rows (under ``system.lock``)."""
        if self.ended is not None:
            return
        now = self._now()
        if now - (self.last_take - self.start) > LEASE_S:
            self.ended = f"nobody read the recording for {LEASE_S:.0f} s"
            return
        kind = change.kind
        if kind is ChangeKind.EXIT:
            for proc in change.processes:
                pid = self.pids.pop(proc, None)
                if pid is not None:
                    self.rows.append([now, "exit", pid, "", ""])
        elif kind is ChangeKind.ATTACH:
            for proc in change.processes:
                pid = self.pids.get(proc)
                if pid is not None and proc.alive:
                    self.rows.append([now, "move", pid, proc.cgroup.path, ""])
        elif kind in _IOASID_KINDS:
            self._ioasids(change, now)
        if len(self.rows) > MAX_ROWS:
            self.ended = f"more than {MAX_ROWS} rows were not read"

    def _ioasids(self, change: Change, now: float) -> None:
        refusal = change.refusal
        if refusal is not None:
            if refusal.command in _ALLOCS:
                proc = self.system.cgroups.process(refusal.pid)
                if proc is not None:
                    self._alloc_row(now, proc, refusal.request.get("count", 1))
            return
        added: dict[Process, int] = {}
        removed: dict[Process, int] = {}
        held, set_of, owner = self.held, self.set_of, self.owner
        for set_id in change.sets:  # sets created or released whole
            ioasid_set = self.sets.get(set_id)
            mine = held.get(set_id, set())
            now_held = ioasid_set.xa if ioasid_set is not None else set()
            gone = mine - now_held
            if gone:
                who = owner[set_id]
                removed[who] = removed.get(who, 0) + len(gone)
                mine -= gone
                for ioasid in gone:
                    del set_of[ioasid]
            if ioasid_set is None:
                held.pop(set_id, None)
                owner.pop(set_id, None)
            elif isinstance(ioasid_set.token, Process):
                new = [i for i in now_held if i not in mine]
                if new:
                    self._add(set_id, ioasid_set.token, new)
                    added[ioasid_set.token] = added.get(ioasid_set.token, 0) + len(new)
        for ioasid in change.ids:
            data = self.index.get(ioasid)
            was = set_of.get(ioasid)
            if data is not None and was == data.set.id:
                continue  # written, not allocated
            if was is not None:
                del set_of[ioasid]
                held[was].discard(ioasid)
                who = owner[was]
                removed[who] = removed.get(who, 0) + 1
            if data is not None and isinstance(data.set.token, Process):
                token = data.set.token
                self._add(data.set.id, token, (ioasid,))
                added[token] = added.get(token, 0) + 1
        for proc, count in removed.items():  # an exit's release is its ``exit`` row
            pid = self.pids.get(proc)
            if pid is not None and proc.alive:
                self.rows.append([now, "free", pid, "", count])
        for proc, count in added.items():
            self._alloc_row(now, proc, count)

    def take(self) -> list[Row]:
        """The rows made since the last call (under ``system.lock``)."""
        rows, self.rows = self.rows, []
        self.last_take = self.clock()
        return rows


class Recordings:
    """The daemon's recording, at most one at a time, of ``system``: ``active`` is the
    running ``TraceRecorder`` (``None``: none runs, and the daemon calls nothing).
    Every method is called under ``system.lock``."""

    def __init__(self, system: System, clock: Callable[[], float]) -> None:
        self.system = system
        self.clock = clock
        self.active: TraceRecorder | None = None
        self.token = ""

    def start(self) -> str:
        """Start recording; the token that reads and stops it. ``EBUSY`` while another
        recording runs (one whose client is gone ends after ``LEASE_S`` unread)."""
        active = self.active
        if active is not None:
            if active.ended is None and self.clock() - active.last_take <= LEASE_S:
                raise IoasidError(EBUSY, "another trace recording is running")
            self.active = None
        self.active = TraceRecorder(self.system, self.clock)
        self.token = secrets.token_hex(16)
        return self.token

    def _recorder(self, token: str) -> TraceRecorder:
        active = self.active
        if active is None or not secrets.compare_digest(token, self.token):
            raise IoasidError(ESRCH, "no such trace recording (it was stopped, or another "
                                     "one replaced it)")
        return active

    def take(self, token: str) -> tuple[list[Row], str | None]:
        """The rows recorded since the last take, and why the recording ended by itself
        (``None`` while it runs). ``ESRCH`` for a token that is not the running recording's."""
        recorder = self._recorder(token)
        return recorder.take(), recorder.ended

    def stop(self, token: str) -> tuple[list[Row], str | None]:
        """End the recording: its last rows, as ``take``. ``ESRCH`` as ``take``."""
        recorder = self._recorder(token)
        self.active = None
        self.token = ""
        return recorder.take(), recorder.ended
