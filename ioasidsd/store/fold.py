"""Journal records, and folding them into the SQLite database in the background.

A record is what one change left behind, as *state*: the new content of every row the change
touched (or the row's removal), computed from the model when the change was made. It is a list
of operations (tuples), written down by ``ioasidsd.store.codec``:

==========================================  ==============================================
``(META, key, value)``                      a row of ``meta`` (``value`` as JSON data)
``(CORE, values)``                          the ``core`` row of ``meta``: the values of
                                            ``snapshot.core_record``, in ``CORE_KEYS`` order
``(CGROUP, row, fields or None)``           a cgroup row (``None``: the row is gone)
``(PROCESS, pid, fields or None)``          a process row
``(SET, id, fields or None)``               a set row
``(IOASID, id, fields)``                    an IOASID row
``(IOASID, id, None, set)``                 the IOASID row is gone (it was in ``set``)
``(SET_IOASIDS, set, groups)``              every IOASID row of a set at once: the set holds
                                            exactly these IDs; ``groups`` pairs the fields
                                            shared by some of them with their IDs
                                            (``ids_bytes``: little-endian u32s)
``(IOASIDS, set, fields or None, ids)``     many IOASID rows of one set at once (a slice of
                                            a batch): each of ``ids`` (``ids_bytes``) has
                                            ``fields``, or is gone (``None``)
``(REFUSAL, seq, fields or None)``          an entry of the refusal log: its cgroup and
                                            the entry as JSON text (``store.refusals``)
``(EVERYTHING,)``                           every table is replaced by what follows
==========================================  ==============================================

``fields`` are the row's columns after its key, as ``store.py`` lays them out (a cgroup's
``attrs`` and ``control`` stay plain data until they are written), but for a set's
``nr_ioasids``: that count is derived, recounted from the IOASID rows for every set a fold
touched, so that a single IOASID's change records no set row. Applying records in order is
idempotent: each operation says what a row *is*, not what to do to it, so a record folded twice
(a daemon that died after folding and before removing the journal) leaves the database as
once.

``FoldPlan`` folds many records in one transaction: the last state of each row wins, and a set
whose IOASIDs are given whole twice in a row (a batch allocation, then its batch free) is written
once. ``Folder`` owns the journal's writing end and a thread that takes the records not yet
folded (from memory: the file is only read back after a crash), folds them every ``interval``
seconds, and removes the journal segments whose records are all in the database.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from itertools import repeat
from pathlib import Path
from typing import Any

from ioasidsd.store import journal
from ioasidsd.store.idmap import ascending_run

META, CGROUP, PROCESS, SET, IOASID, SET_IOASIDS, EVERYTHING, CORE, REFUSAL, IOASIDS = range(10)

CORE_KEYS = ("capacity", "capacity_avail", "capacity_installed", "release_agent",
             "sane_behavior", "warned_negative", "hierarchy")
"""The keys of ``snapshot.core_record``, the order of a ``CORE`` operation's values."""

Fields = tuple[Any, ...] | None
Op = tuple[Any, ...]

_TABLES = {  # op -> (table, key column, placeholders after the key)
    META: ("meta", "key", 1),
    CGROUP: ("cgroups", "id", 13),
    PROCESS: ("processes", "pid", 3),
    SET: ("sets", "id", 8),  # fields: 7 columns, nr_ioasids (derived) left out
    REFUSAL: ("refusals", "seq", 2),
}
_INSERT_IOASID = "INSERT OR REPLACE INTO ioasids VALUES (?,?,?,?,?,?,?,?,?)"
_INSERT_IOASID_RUN = ("WITH RECURSIVE run(id) AS (SELECT ?1 UNION ALL SELECT id + 1 FROM run "
                      "WHERE id < ?2) INSERT OR REPLACE INTO ioasids "
                      "SELECT id, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 FROM run")
_RUN_ROWS = 8  # from this many consecutive IDs alike, one statement makes their rows
_ALL_TABLES = ("meta", "cgroups", "processes", "sets", "ioasids", "refusals")


_SWAP = sys.byteorder != "little"  # IDs are little-endian in a record, whatever the machine


def ids_bytes(ids: array) -> bytes:
    """A ``SET_IOASIDS`` group's IDs (an ``array('I')``) as a record holds them."""
    if _SWAP:
        ids = array("I", ids)
        ids.byteswap()
    return ids.tobytes()


def ids_array(data: bytes) -> array:
    """The IDs of a ``SET_IOASIDS`` group (the inverse of ``ids_bytes``)."""
    ids = array("I")
    ids.frombytes(data)
    if _SWAP:
        ids.byteswap()
    return ids


def id_runs(ids: Iterable[int]) -> list[tuple[int, int]]:
    """``ids`` (distinct) as runs of consecutive IDs, ``(first, last)``, ascending: the rows
    a slice of a batch freed are removed with one statement a run, not one a row."""
    runs: list[tuple[int, int]] = []
    ordered = sorted(ids)
    if not ordered:
        return runs
    if ordered[-1] - ordered[0] + 1 == len(ordered):  # one run (a slice of a batch)
        return [(ordered[0], ordered[-1])]
    first = last = ordered[0]
    for i in ordered[1:]:
        if i != last + 1:
            runs.append((first, last))
            first = i
        last = i
    runs.append((first, last))
    return runs


def _insert_ioasids(db: sqlite3.Connection, ids: Iterable[int],
                    fields: tuple[Any, ...]) -> None:
    """The IOASID rows of ``ids`` (distinct), all with ``fields``: each run of consecutive IDs
    (a slice of a batch, a set allocated in one go) in one statement that makes its rows in
    SQLite, a quarter of the CPU of binding a row at a time; the others a row at a time."""
    singles: list[int] = []
    for first, last in id_runs(ids):
        if last - first + 1 >= _RUN_ROWS:
            db.execute(_INSERT_IOASID_RUN, (first, last, *fields))
        else:
            singles.extend(range(first, last + 1))
    if singles:
        db.executemany(_INSERT_IOASID, zip(singles, *map(repeat, fields), strict=False))


def _delete_runs(db: sqlite3.Connection, runs: list[tuple[int, int]]) -> None:
    """Remove the IOASID rows of ``runs`` (``(first, last)``, in any order, overlapping or
    not): runs that touch or overlap are merged first, one statement each."""
    runs.sort()
    merged: list[tuple[int, int]] = []
    first, last = runs[0]
    for lo, hi in runs[1:]:
        if lo > last + 1:
            merged.append((first, last))
            first = lo
        if hi > last:
            last = hi
    merged.append((first, last))
    db.executemany("DELETE FROM ioasids WHERE id BETWEEN ? AND ?", merged)


class _IdRows:
    """A run of single IOASID operations: the last state of each ID, and the sets of the rows
    it holds (to find them when a set is then given whole)."""

    __slots__ = ("rows", "sets")

    def __init__(self) -> None:
        self.rows: dict[int, Fields] = {}
        self.sets: set[int] = set()


class _RunRows:
    """A run of consecutive IOASIDs alike (a slice of a batch): ``first`` to ``last`` all have
    ``fields``, or are gone (``None``); written with one statement, without a step per ID."""

    __slots__ = ("fields", "first", "last")

    def __init__(self, first: int, last: int, fields: Fields) -> None:
        self.first = first
        self.last = last
        self.fields = fields


class _SetRows:
    """The IOASIDs of one set, given whole."""

    __slots__ = ("groups", "set_id")

    def __init__(self, set_id: int, groups: tuple[tuple[tuple[Any, ...], bytes], ...]) -> None:
        self.set_id = set_id
        self.groups = groups


_MERGE_REACH = 64
"""How many steps back ``FoldPlan`` looks for a run given again (a batch is cut into 64
slices at most)."""


class FoldPlan:
    """Records coalesced into the writes that give the database the state of the last one.

    ``add`` takes the operations of one record; ``write`` makes the writes on a connection the
    caller holds a transaction on. Rows of ``meta``, ``cgroups``, ``processes`` and ``sets``
    are keyed, so only their last state is kept. IOASID rows keep their order relative to sets
    given whole: a ``SET_IOASIDS`` replaces what the set had, so a ``SET_IOASIDS`` of the same
    set right before it is dropped, and earlier single rows of that set in the run right before
    it become removals (the set's new content adds back those it still holds). A run of
    consecutive IDs given alike (``IOASIDS``, a batch's slice) is one step; given again before
    a step of another kind, it takes its earlier step's place unless a step in between
    overlaps it.
    """

    def __init__(self) -> None:
        self.everything = False
        self.tables: dict[int, dict[Any, Any]] = {code: {} for code in (*_TABLES, CORE)}
        self.steps: list[_IdRows | _RunRows | _SetRows] = []
        self._runs: dict[tuple[int, int], int] = {}  # the trailing _RunRows: range -> step
        self.counted: set[int] = set()  # sets whose nr_ioasids to recount
        self.records = 0

    def __bool__(self) -> bool:
        return self.records > 0

    def add(self, ops: Iterable[Op]) -> None:
        """Fold in one record's operations. ``ValueError`` for an unknown operation."""
        self.records += 1
        tables = self.tables
        steps = self.steps
        for op in ops:
            code = op[0]
            if code == IOASID:
                step = steps[-1] if steps else None
                if step.__class__ is not _IdRows:
                    step = _IdRows()
                    steps.append(step)
                fields = op[2]
                step.rows[op[1]] = fields
                if fields is not None:
                    step.sets.add(fields[0])
                    self.counted.add(fields[0])
                elif len(op) > 3:
                    self.counted.add(op[3])
            elif code == IOASIDS:
                set_id, fields = op[1], op[2]
                ids = ids_array(op[3])
                self.counted.add(set_id)
                run = ascending_run(ids) if len(ids) >= _RUN_ROWS else None
                if run is not None:
                    self._add_run(run, fields)
                    continue
                step = steps[-1] if steps else None
                if step.__class__ is not _IdRows:
                    step = _IdRows()
                    steps.append(step)
                step.rows.update(dict.fromkeys(ids, fields))
                if fields is not None:
                    step.sets.add(set_id)
            elif code == CORE:
                tables[CORE][None] = op[1]
            elif code in tables:
                tables[code][op[1]] = op[2]
                if code == SET:
                    self.counted.add(op[1])
            elif code == SET_IOASIDS:
                self._add_set_rows(op[1], op[2])
                self.counted.add(op[1])
            elif code == EVERYTHING:
                self.everything = True
                for rows in tables.values():
                    rows.clear()
                steps.clear()
                self._runs.clear()
                self.counted.clear()
            else:
                raise ValueError(f"unknown journal operation {code!r}")

    def _add_run(self, run: tuple[int, int], fields: Fields) -> None:
        """A run of IOASIDs given alike. The same run given again since the last step of
        another kind (a batch's slice freed after it was allocated) takes the new fields in
        its step, unless a step after it overlaps it: the last state of its rows wins, at the
        cost of a step, not of a step per ID. Only the last ``_MERGE_REACH`` steps are looked
        at, so that a fold of many runs costs linear time: an older run given again is a new
        step (applied after, so still the last state)."""
        steps = self.steps
        if steps and steps[-1].__class__ is not _RunRows:
            self._runs.clear()
        at = self._runs.get(run)
        if at is not None and len(steps) - at <= _MERGE_REACH:
            first, last = run
            if not any(step.first <= last and first <= step.last  # type: ignore[union-attr]
                       for step in steps[at + 1:]):
                steps[at].fields = fields  # type: ignore[union-attr]
                return
        self._runs[run] = len(steps)
        steps.append(_RunRows(run[0], run[1], fields))

    def _add_set_rows(self, set_id: int, groups: Any) -> None:
        steps = self.steps
        while steps and isinstance(steps[-1], _SetRows) and steps[-1].set_id == set_id:
            steps.pop()
        if steps and isinstance(steps[-1], _IdRows) and set_id in steps[-1].sets:
            run = steps[-1]
            for ioasid, fields in run.rows.items():
                if fields is not None and fields[0] == set_id:
                    run.rows[ioasid] = None
            run.sets.discard(set_id)
        steps.append(_SetRows(set_id, groups))

    def write(self, db: sqlite3.Connection) -> None:
        """Make the writes (inside the caller's transaction)."""
        if self.everything:
            for table in _ALL_TABLES:
                db.execute(f"DELETE FROM {table}")
        removed: list[tuple[int, int]] = []  # runs removed by consecutive steps: removals
        for step in self.steps:               # commute, so adjacent runs are one statement
            if isinstance(step, _RunRows) and step.fields is None:
                removed.append((step.first, step.last))
                continue
            if removed:
                _delete_runs(db, removed)
                removed = []
            if isinstance(step, _RunRows):
                alike_fields = step.fields or ()  # not None: removals were taken above
                db.execute(_INSERT_IOASID_RUN, (step.first, step.last, *alike_fields))
            elif isinstance(step, _IdRows):
                gone_ids: list[int] = []
                alike: dict[tuple[Any, ...], list[int]] = {}  # fields -> the IDs that have them
                for i, fields in step.rows.items():
                    if fields is None:
                        gone_ids.append(i)
                    else:
                        same = alike.get(fields)
                        if same is None:
                            alike[fields] = [i]
                        else:
                            same.append(i)
                if gone_ids:
                    db.executemany("DELETE FROM ioasids WHERE id BETWEEN ? AND ?",
                                   id_runs(gone_ids))
                for fields, same in alike.items():
                    _insert_ioasids(db, same, fields)
            else:
                db.execute("DELETE FROM ioasids WHERE set_id=?", (step.set_id,))
                for fields, ids in step.groups:  # the shared fields repeat for every ID
                    _insert_ioasids(db, ids_array(ids), fields)
        if removed:
            _delete_runs(db, removed)
        core = self.tables[CORE].get(None)
        if core is not None:
            if len(core) == len(CORE_KEYS) - 1:  # a record of schema 1: a v1 hierarchy
                core = (*core, 1)
            self.tables[META]["core"] = dict(zip(CORE_KEYS, core, strict=True))
        for code, (table, column, width) in _TABLES.items():
            gone: list[tuple[Any]] = []
            rows: list[tuple[Any, ...]] = []
            for key, fields in self.tables[code].items():
                if fields is None:
                    gone.append((key,))
                elif code == META:
                    rows.append((key, json.dumps(fields, sort_keys=True)))
                elif code == CGROUP:
                    if len(fields) == width - 1:  # a record of schema 1: no control
                        fields = (*fields, None)
                    attrs, control = fields[-2], fields[-1]
                    rows.append((key, *fields[:-2],
                                 json.dumps(attrs, sort_keys=True) if attrs else "{}",
                                 None if control is None else json.dumps(control,
                                                                         sort_keys=True)))
                elif code == SET:
                    rows.append((key, *fields[:6], 0, fields[6]))  # nr_ioasids: see below
                else:
                    rows.append((key, *fields))
            if gone:
                db.executemany(f"DELETE FROM {table} WHERE {column}=?", gone)
            if rows:
                db.executemany(f"INSERT OR REPLACE INTO {table} VALUES "
                               f"(?{',?' * width})", rows)
        if self.everything:
            db.execute("UPDATE sets SET nr_ioasids="
                       "(SELECT count(*) FROM ioasids WHERE set_id=sets.id)")
        elif self.counted:
            db.executemany("UPDATE sets SET nr_ioasids="
                           "(SELECT count(*) FROM ioasids WHERE set_id=?1) WHERE id=?1",
                           [(sid,) for sid in self.counted])


# ---------------------------------------------------------------------------------- the folder
FOLD_BYTES = 16 << 20
"""Records waiting beyond this many bytes are folded without waiting for the interval."""

RETRY_MAX = 30.0
"""Longest wait between attempts after failed folds (seconds)."""

Fold = Callable[[list[bytes]], None]
Log = Callable[[str], None]


class Folder:
    """The journal's writing end and the thread that folds its records into the database.

    ``append`` (under the caller's lock: one writer) writes a record to the newest segment and
    keeps it in memory. The thread wakes when records wait, lets more arrive for ``interval``
    seconds, takes them, starts a new segment, calls ``fold`` with their payloads (which writes
    them into the database in one transaction, or raises) and removes the older segments. It
    makes each next segment ahead, off the lock, as the journal's spare: a segment the writer
    or a rotation needs is then only named under the lock (``journal.SegmentWriter``). A
    failed fold is logged once (``warn``), kept in ``error`` and retried, later and later
    (up to ``RETRY_MAX`` seconds) or at once when ``fold_now`` asks; its records stay in the
    journal and in memory. ``stop`` folds what is left and removes the journal if that worked.
    """

    def __init__(self, directory: Path, fold: Fold, *, first: int, interval: float = 1.0,
                 sync: bool = False, warn: Log | None = None, note: Log | None = None,
                 what: str = "the database", folded: Iterable[int] = ()) -> None:
        self.directory = directory
        self.interval = interval
        self._fold = fold
        self._sync = sync
        self._warn = warn or (lambda message: None)
        self._note = note or (lambda message: None)
        self._what = what
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._next = first
        self._segments: list[int] = sorted(folded)  # every segment file, oldest first
        self._removal_failed = False
        self._writer: journal.SegmentWriter | None = None
        self._spare: journal.SegmentWriter | None = None  # the next segment, made ahead
        self._pending: list[bytes] = []  # payloads (bytes: no work for the garbage collector)
        self._kinds: list[str] = []  # the kind of change of each, for error messages
        self._pending_bytes = 0
        self._since = 0.0  # when the oldest waiting record came (time.monotonic)
        self._not_before = 0.0  # no retry before this after a failure
        self._appended = 0
        self._folded = 0
        self._attempts = 0
        self._failures = 0
        self._requested = False
        self._stopping = False
        self.append_error: str | None = None
        self.fold_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="store-folder", daemon=True)

    # ------------------------------------------------------------------ writing
    def start(self) -> None:
        """Remove the ``folded`` segments given at creation (a journal already in the
        database), create the first segment (``OSError`` if the directory cannot take it) and
        start the thread."""
        self._remove_before(self._next)
        with self._lock:
            self._writer = self._new_segment()
        self._thread.start()

    def _new_segment(self, size: int = journal.SEGMENT_BYTES) -> journal.SegmentWriter:
        """The next segment, of at least ``size`` bytes (under the lock): the spare when there
        is one that large (named now: a link), else one made now. ``OSError`` if neither can
        be had."""
        spare = self._spare
        writer = None
        if spare is not None and size <= spare.size:
            self._spare = None
            try:
                spare.take_number(self._next)
            except OSError:
                spare.close()
                with contextlib.suppress(OSError):
                    journal.remove(spare.path)
            else:
                writer = spare
        if writer is None:
            writer = journal.SegmentWriter(self.directory, self._next, sync=self._sync,
                                           size=max(size, journal.SEGMENT_BYTES))
        self._segments.append(self._next)
        self._next += 1
        return writer

    def _make_spare(self) -> None:
        """Make the spare segment if there is none (on the folder's thread, without the lock:
        reserving and mapping a segment's blocks takes milliseconds, which no change should
        wait for). A spare that cannot be made is no error: the next segment is then made
        when it is needed, as before."""
        with self._lock:
            if self._spare is not None or self._stopping:
                return
        try:
            spare = journal.SegmentWriter(self.directory, None, sync=self._sync)
        except OSError:
            return
        with self._lock:
            if self._spare is None and not self._stopping:
                self._spare = spare
                return
        spare.close()  # stopping meanwhile
        with contextlib.suppress(OSError):
            journal.remove(spare.path)

    @property
    def error(self) -> str | None:
        """Why the last append or fold failed, until one succeeds again."""
        return self.append_error or self.fold_error

    @property
    def pending(self) -> int:
        """Records not folded yet."""
        return self._appended - self._folded

    def append(self, kind: str, payload: bytes) -> None:
        """Write one record (``kind`` names the change in error messages). Never raises: when
        the journal cannot be written the record is still folded from memory, but is not
        durable until then; ``error`` says so and the next append starts a new segment."""
        lock = self._lock
        lock.acquire()  # not ``with``: this is every change
        try:
            try:
                self._writer.append(payload)  # type: ignore[union-attr]
            except (journal.SegmentFull, OSError, AttributeError) as exc:  # Attr...: none open
                self._append_again(kind, payload, exc)
            else:
                if self.append_error is not None:
                    self._note("the journal is written again")
                    self.append_error = None
            pending = self._pending
            if not pending:  # the folder waits for the first record, not for the others
                self._since = time.monotonic()
                self._cond.notify_all()
            pending.append(payload)
            self._kinds.append(kind)
            self._appended += 1
            size = self._pending_bytes = self._pending_bytes + len(payload)
            if size >= FOLD_BYTES:
                self._cond.notify_all()
        finally:
            lock.release()

    def _append_again(self, kind: str, payload: bytes, exc: Exception) -> None:
        """The current segment could not take a record (full, failed, or none is open): go
        on in a new one; if that fails too, say so (the record is folded from memory). A
        failed segment is left for the next record to replace, so that one failure is
        reported once."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            if isinstance(exc, OSError):
                self._append_failed(kind, exc)
                return
        try:
            self._writer = self._new_segment(
                exc.needed if isinstance(exc, journal.SegmentFull) else journal.SEGMENT_BYTES)
            self._writer.append(payload)
        except OSError as again:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._append_failed(kind, again)
        else:
            if self.append_error is not None:
                self._note("the journal is written again")
                self.append_error = None

    def _append_failed(self, kind: str, exc: OSError) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.append_error is None:
            self._warn(f"journal not written ({kind}): {exc.strerror or exc}; the change is "
                       f"saved at the next fold into {self._what}")
        self.append_error = f"{kind}: journal: {exc.strerror or exc}"

    # ------------------------------------------------------------------ folding
    def fold_now(self, timeout: float | None = None) -> bool:
        """Fold every record appended so far now, and wait for it: ``True`` once they are in
        the database, ``False`` if the attempt failed (or ``timeout`` passed)."""
        with self._lock:
            target = self._appended
            if self._folded >= target:
                return True
            if not self._thread.is_alive():
                return False
            attempts = self._attempts
            self._requested = True
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: self._folded >= target
                or (self._attempts > attempts and self.fold_error is not None and
                    not self._requested)
                or not self._thread.is_alive(),
                timeout)
            return self._folded >= target

    def _run(self) -> None:
        while True:
            self._make_spare()
            with self._lock:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                deadline = max(self._since + self.interval, self._not_before)
                while not (self._requested or self._stopping
                           or self._pending_bytes >= FOLD_BYTES):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                self._requested = False
                stopping = self._stopping
                batch, self._pending = self._pending, []
                kinds, self._kinds = self._kinds, []
                self._pending_bytes = 0
                keep, written = self._rotate()
            if written is not None:  # no append reaches it any more
                written.close()
            failure = self._try_fold(batch)
            if failure is None:
                self._remove_before(keep)
            with self._lock:
                self._attempts += 1
                if failure is None:
                    self._folded += len(batch)
                    if self.fold_error is not None:
                        self._note(f"the journal is folded into {self._what} again after "
                                   f"{self._failures} failed attempts")
                    self.fold_error = None
                    self._failures = 0
                else:
                    self._pending[:0] = batch
                    self._kinds[:0] = kinds
                    self._pending_bytes += sum(map(len, batch))
                    self._since = time.monotonic()
                    self._failures += 1
                    self._not_before = time.monotonic() + min(
                        RETRY_MAX, self.interval * 2 ** self._failures)
                    names = ", ".join(sorted(set(kinds))[:6])
                    if self.fold_error is None:
                        self._warn(f"the journal cannot be folded into {self._what}: {failure}; "
                                   f"{len(self._pending)} changes wait in the journal, retrying")
                    self.fold_error = (f"{names}: not folded into {self._what}: {failure} "
                                       f"({len(self._pending)} changes wait in the journal)")
                self._cond.notify_all()
            del batch, kinds  # not kept while waiting for the next records
            if failure is not None and stopping:
                return

    def _remove_before(self, keep: int) -> None:
        """Remove the segments numbered below ``keep`` (their records are in the database),
        oldest first. What stays on disk must remain a run of consecutive segments: replaying
        an older segment without the newer ones could undo folded changes. So a segment that
        cannot be removed stops the removal (logged once), and is tried again after the next
        fold."""
        with self._lock:
            numbers = [n for n in self._segments if n < keep]
        removed = 0
        for number in numbers:
            try:
                journal.remove(self.directory / f"{journal.PREFIX}{number}")
            except OSError as exc:
                if not self._removal_failed:
                    self._removal_failed = True
                    self._warn(f"a folded journal segment cannot be removed: "
                               f"{exc.strerror or exc}; it is replayed at the next start")
                break
            removed += 1
        else:
            self._removal_failed = False
        with self._lock:
            del self._segments[:removed]  # only this thread removes, and from the front

    def _rotate(self) -> tuple[int, journal.SegmentWriter | None]:
        """Start a new segment for the records to come (the spare, made ahead: only named
        here); returns the number below which every segment holds only records taken now
        (the new one, or the current one when a new one cannot be made), and the segment
        written until now, for the caller to close once it has released the lock (closing
        cuts the file to its records: up to tens of milliseconds on a busy machine, which
        every change waiting for the lock would pay)."""
        current = self._writer
        try:
            writer = self._new_segment()
        except OSError:
            return (self._next if current is None or current.number is None
                    else current.number), None
        self._writer = writer
        assert writer.number is not None  # named by _new_segment
        return writer.number, current

    def _try_fold(self, batch: list[bytes]) -> str | None:
        try:
            self._fold(batch)
        except Exception as exc:  # a fold must never end the thread: report and retry
            return f"{type(exc).__name__}: {exc}" if not isinstance(
                exc, sqlite3.Error | OSError) else str(exc)
        return None

    # ------------------------------------------------------------------ stopping
    def stop(self) -> bool:
        """Fold what is left and stop the thread (no appends may come any more). ``True`` when
        everything was folded: the journal's files are then removed."""
        with self._lock:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            spare, self._spare = self._spare, None
            if spare is not None:
                spare.close()
                with contextlib.suppress(OSError):
                    journal.remove(spare.path)
            folded = not self._pending
            if not folded:
                self._warn(f"{len(self._pending)} changes are not folded into {self._what}; "
                           f"they stay in the journal and are folded at the next start")
                return False
        self._remove_before(self._next)
        return not self._segments
