"""Durable state: the model in SQLite, with an append-only journal in front of it.

The database keeps one row per record of a snapshot (``ioasidsd.model.snapshot``): cgroups,
processes, sets, IOASIDs, plus the core's scalars and the knobs in ``meta``. It is the durable
form that other tools read. ``System`` calls ``Store.apply(change)`` under its lock after
every change (a ``Change``: ``ioasidsd.model.changes``); ``apply`` computes from the model the
rows the change touched and appends them, as one record, to the journal
(``ioasidsd.store.journal``) before returning: a write that changed state is durable before the
face answers. A thread folds the records into the database in batched transactions
(``ioasidsd.store.fold``) and removes the journal files once their records are in; a clean
``close`` folds everything and leaves no journal. The database therefore lags the model by up
to ``fold_interval`` seconds; ``load`` reads it with the journal applied, so nothing
acknowledged is lost however the daemon ended.

Durability. With ``synchronous = "normal"`` (the default) a record is in the kernel's page cache
when ``apply`` returns: it survives ``kill -9`` of the daemon but not a power loss or kernel
crash, where the last changes may be lost (the database and journal stay consistent: a record
cut short is ignored). ``synchronous = "full"`` flushes every record to the disk (``msync`` or
``fdatasync``) and every fold (SQLite ``synchronous=FULL``): it survives both, at the price of a
disk flush per change.

What a change touches is read from the ``Change``'s typed fields, whatever the kind, so that
faces can report new kinds without touching the store:

* ``cgroups``: those cgroups and their ancestors (counters, limits, flags, names);
* ``processes``: those processes (tracked, moved or gone), the cgroups they are in, and every
  set they own with its IOASIDs;
* ``ids``: those IOASIDs (allocated, changed or gone) with their sets, old and new charged
  cgroups; report the new ID after an allocation. Many IDs of one set alike (a batch's
  slice) are one operation, whatever the set holds; other batches that make up a quarter of
  their set are written with it;
* ``sets``: those sets (by id) with all their IOASIDs (bulk frees, set frees);
* a refused operation that still changed counters (a refusal event, ``v4``'s leaked charge)
  reports its calling process in ``processes`` (or the cgroups in ``cgroups``).

The core's scalars are compared and written on every change. Kind ``rmdir`` also drops the
row of the cgroup it names first (or marks it removed while IOASIDs may still be charged to
it); kind ``orphans`` writes ``orphans``. Kind ``sync`` rewrites everything from the model: for
a face that cannot tell what it changed, and after a change whose record could not be made.

A change that carries a ``Refusal`` also adds an entry to the refusal log (``refusals``, an
``ioasidsd.store.refusals.RefusalLog``: a bounded ring per cgroup, with the time and the
process's command name read when the refusal is recorded) and records it with the entries it
pushed out; ``rmdir`` drops the removed cgroup's ring and ``rename`` moves it. ``load`` reads
the log back with the rest of the state.

To make a record without reading the database, the store remembers what it last wrote: the row
ids of cgroups, the last row of each cgroup, set and process, the set each IOASID was written in
(``IdMap``: 4 bytes an ID) and for each set the cgroups its IOASIDs may be charged to. A freed
IOASID thus names its set, and the cgroups that may have been uncharged, from memory. A set
reported whole is written whole: its cost grows with the number of IOASIDs it holds.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from ioasidsd.host import boot_id, process_clock
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.core import IoasidCore, IoasidSet
from ioasidsd.model.hierarchy import Cgroup, Hierarchy, Process
from ioasidsd.model.ioasids import IoasidsController
from ioasidsd.model.snapshot import (
    SNAPSHOT_VERSION,
    SnapshotError,
    control_record,
    is_removed,
    plain_private,
    removed_cgroups,
    token_record,
)
from ioasidsd.store import codec, journal
from ioasidsd.store.fold import (
    CGROUP,
    CORE,
    EVERYTHING,
    IOASID,
    IOASIDS,
    META,
    PROCESS,
    REFUSAL,
    SET,
    SET_IOASIDS,
    Folder,
    FoldPlan,
    Op,
    ids_bytes,
)
from ioasidsd.store.idmap import IdMap, ascending_run
from ioasidsd.store.refusals import DEFAULT_RING, RefusalLog, entry
from ioasidsd.system import System

SCHEMA_VERSION = 2
"""2 added the ``control`` column of ``cgroups`` (the cgroup-v2 fields, JSON or NULL); a
version 1 database gets it when opened."""
DB_NAME = "state.sqlite"
FOLD_INTERVAL = 1.0
"""Seconds a record may wait in the journal before it is folded into the database."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cgroups (
    id INTEGER PRIMARY KEY, parent INTEGER, name TEXT NOT NULL, lim INTEGER,
    reserved INTEGER NOT NULL, counter INTEGER NOT NULL, peak INTEGER NOT NULL,
    events INTEGER NOT NULL, events_local INTEGER NOT NULL,
    notify_on_release INTEGER NOT NULL, clone_children INTEGER NOT NULL,
    removed INTEGER NOT NULL, attrs TEXT NOT NULL, control TEXT);
CREATE INDEX IF NOT EXISTS cgroups_parent ON cgroups (parent);
CREATE TABLE IF NOT EXISTS processes (
    pid INTEGER PRIMARY KEY, start_time REAL NOT NULL, cgroup INTEGER NOT NULL,
    threads INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sets (
    id INTEGER PRIMARY KEY, type INTEGER NOT NULL, token_pid INTEGER, token_start REAL,
    token_alive INTEGER, quota INTEGER NOT NULL, reserved INTEGER NOT NULL,
    nr_ioasids INTEGER NOT NULL, free_requested INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sets_token ON sets (token_pid);
CREATE TABLE IF NOT EXISTS ioasids (
    id INTEGER PRIMARY KEY, set_id INTEGER NOT NULL, state INTEGER NOT NULL,
    refs INTEGER NOT NULL, spid INTEGER NOT NULL, cgroup INTEGER, pooled INTEGER NOT NULL,
    indexed INTEGER NOT NULL, private TEXT);
CREATE INDEX IF NOT EXISTS ioasids_set ON ioasids (set_id);
-- no query reads IOASIDs by cgroup: the index older versions made only slowed every write
DROP INDEX IF EXISTS ioasids_cgroup;
CREATE TABLE IF NOT EXISTS refusals (seq INTEGER PRIMARY KEY, cgroup TEXT NOT NULL,
    record TEXT NOT NULL);
"""

_CGROUP_COLUMNS = ("id", "parent", "name", "limit", "reserved", "counter", "peak", "events",
                   "events_local", "notify_on_release", "clone_children", "removed")
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}
_SET_AND_CGROUP = itemgetter("set", "cgroup")  # of an IOASID record
_IOASID_KEY = attrgetter("state", "refs", "spid", "cgroup", "pooled", "private")

Warn = Callable[[str], None]


_encode = codec.encode
_SYNC, _RMDIR = ChangeKind.SYNC, ChangeKind.RMDIR  # a member read from the class costs more
_BULK_IDS = 64  # from this many IOASIDs in one change, whole sets may be cheaper to write
_GROUP_IDS = 256  # from this many of one set, alike, one IOASIDS operation (a batch's slice)


def _orphan_rows(orphans: Mapping[int, float]) -> list[list[float]]:
    """``System.orphans`` as a JSON value: ``[pid, start time]`` pairs by pid."""
    return [[pid, start] for pid, start in sorted(orphans.items())]


def _refusal_op(item: dict[str, Any]) -> Op:
    return (REFUSAL, item["seq"], (item["cgroup"], json.dumps(item, sort_keys=True)))


def _upgrade_from_1(db: sqlite3.Connection) -> None:
    """Bring a schema-1 database to schema 2 in one transaction: the ``control`` column."""
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = [row[1] for row in db.execute("PRAGMA table_info(cgroups)")]
        if "control" not in columns:
            db.execute("ALTER TABLE cgroups ADD COLUMN control TEXT")
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (json.dumps(SCHEMA_VERSION),))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class StoreError(Exception):
    """The state directory's database or journal cannot be used (the message says why)."""


class Store:
    """The SQLite database and journal of one state directory.

    ``open`` creates or opens them; ``load`` reads the snapshot they hold (``None`` when new)
    without changing them; ``bind`` attaches the running ``System``, folds a journal left by a
    daemon that died into the database, and starts journaling (writing everything first when
    the state is new); ``apply`` is the system's ``on_change``; ``close`` folds what is left.
    ``apply``, ``set_clock`` and ``write_all`` run under ``system.lock``. A change whose record
    cannot be made is logged through ``warn`` and kept in ``error``; the next change then
    rewrites everything. A failed fold is logged, kept in ``error`` and retried (its records
    stay in the journal); ``note`` logs the recovery.
    """

    def __init__(self, path: Path, *, synchronous: str = "normal", warn: Warn | None = None,
                 note: Warn | None = None, fold_interval: float = FOLD_INTERVAL,
                 refusal_ring: int = DEFAULT_RING):
        self.path = Path(path)
        self.refusals = RefusalLog(refusal_ring)
        """The refusal log (``ioasidsd.store.refusals``): read it under ``system.lock``."""
        self.state_dir = self.path.parent
        self.synchronous = synchronous
        self.fold_interval = fold_interval
        self._error: str | None = None
        self._warn = warn or (lambda message: None)
        self._note = note or (lambda message: None)
        self._db: sqlite3.Connection | None = None
        self._db_lock = threading.RLock()
        self._folder: Folder | None = None
        self._system: System | None = None
        self._core: IoasidCore = None  # type: ignore[assignment]  # set by bind, as these:
        self._controller: IoasidsController = None  # type: ignore[assignment]
        self._hierarchy: Hierarchy = None  # type: ignore[assignment]
        self._processes: dict[int, Process] = {}
        self._loaded_meta: dict[str, Any] = {}
        self._loaded_charges: dict[int, set[int]] | None = None
        self._loaded_refusals: list[dict[str, Any]] = []
        self._unsaved_private: set[str] = set()
        # what the database (with the journal) holds, as far as this store wrote it
        self._rows: dict[Cgroup, int] = {}
        self._cgroups: dict[int, Cgroup] = {}
        self._next_row = 1
        self._kept: dict[int, Cgroup] = {}  # removed cgroups whose rows stay
        self._last_cgroup: dict[int, tuple[Any, ...]] = {}
        self._last_set: dict[int, tuple[Any, ...]] = {}
        self._last_core: tuple[Any, ...] | None = None
        self._procs: dict[int, tuple[Any, ...]] = {}
        self._owned: dict[int, set[int]] = {}  # token pid -> set ids
        self._set_of = IdMap()  # IOASID -> the set it was last written in
        self._charged: dict[int, set[int]] = {}  # set id -> cgroup rows its IDs may charge

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, state_dir: str | Path, *, synchronous: str = "normal",
             warn: Warn | None = None, note: Warn | None = None,
             fold_interval: float = FOLD_INTERVAL, refusal_ring: int = DEFAULT_RING) -> Store:
        """Open ``state_dir/state.sqlite``, creating the directory and the database if needed;
        the refusal log keeps ``refusal_ring`` entries per cgroup. ``StoreError`` if it is not a
        database of ours or cannot be written."""
        if synchronous not in _SYNCHRONOUS:
            raise StoreError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        store = cls(Path(state_dir) / DB_NAME, synchronous=synchronous, warn=warn, note=note,
                    fold_interval=fold_interval, refusal_ring=refusal_ring)
        try:
            Path(state_dir).mkdir(mode=0o755, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{state_dir}: {exc.strerror or exc}") from None
        try:
            db = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{store.path}: cannot use WAL mode ({mode})")
            db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[synchronous]}")
            db.executescript(_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if version is not None and json.loads(version[0]) == 1:
                _upgrade_from_1(db)
                version = (json.dumps(SCHEMA_VERSION),)
            if version is not None and json.loads(version[0]) != SCHEMA_VERSION:
                raise StoreError(f"{store.path}: schema {version[0]}, this ioasidsd reads "
                                 f"{SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"{store.path}: {exc}") from None
        store._db = db
        return store

    def close(self) -> None:
        """Fold what the journal holds (and remove it), checkpoint the WAL into the database
        file and close. Idempotent."""
        if self._folder is not None:
            self._folder.stop()
            self._folder = None
        if self._db is None:
            return
        with self._db_lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                self._warn(f"state checkpoint failed: {exc}")
            self._db.close()
            self._db = None

    @property
    def error(self) -> str | None:
        """Why the last change could not be recorded, or the journal not written or folded;
        ``None`` when all is well."""
        if self._error is not None:
            return self._error
        return self._folder.error if self._folder is not None else None

    @property
    def pending(self) -> int:
        """Changes in the journal not folded into the database yet."""
        return self._folder.pending if self._folder is not None else 0

    def fold(self, timeout: float | None = None) -> bool:
        """Fold every change recorded so far into the database now, and wait: ``True`` once
        the database holds them, ``False`` if that failed (see ``error``; the folder retries)
        or ``timeout`` seconds passed."""
        return self._folder.fold_now(timeout) if self._folder is not None else True

    @property
    def clock(self) -> float | None:
        """When the last change to processes was saved (or ``set_clock``), in seconds since
        boot (the clock of process start times): processes created later may have forked
        while nobody was watching; those created earlier were seen, or their parent was not
        tracked yet. ``None`` for a new state."""
        return self.meta("clock")

    @property
    def boot(self) -> str | None:
        """The boot id of the machine when the state was last saved: a different one means
        every saved process belongs to an earlier boot (start times repeat across boots)."""
        return self.meta("boot")

    @property
    def orphans(self) -> dict[int, float]:
        """The processes (pid -> start time) whose fork the tracker may have missed, as last
        saved (``System.note_orphans``); empty for a new state."""
        return {int(pid): float(start) for pid, start in self.meta("orphans") or ()}

    def set_clock(self, when: float) -> None:
        """Record that process events were watched up to ``when`` (seconds since boot)."""
        boot = boot_id()
        self._loaded_meta.update(clock=when, boot=boot)
        self._record("clock", [(META, "clock", when), (META, "boot", boot)])

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    def meta(self, key: str) -> Any:
        """A value of the ``meta`` table as ``load`` found it with the journal applied, or as
        the database holds it (``None`` if unset)."""
        if key in self._loaded_meta:
            return self._loaded_meta[key]
        with self._db_lock:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # ------------------------------------------------------------------ reading
    def _journal(self) -> list[journal.Segment]:
        """The journal's segments, read (``StoreError`` for a file that is not one)."""
        found = []
        for number, path in journal.segments(self.state_dir):
            try:
                segment = journal.read_segment(number, path)
            except FileNotFoundError:
                continue  # folded and removed by the daemon meanwhile
            except journal.JournalError as exc:
                raise StoreError(str(exc)) from None
            except OSError as exc:
                raise StoreError(f"{path}: {exc.strerror or exc}") from None
            found.append(segment)
        return found

    def _replay(self, segments: list[journal.Segment], *, report: bool) -> None:
        """Apply the records of ``segments`` to the database, in the caller's transaction."""
        plan = FoldPlan()
        for segment in segments:
            try:
                for ops in codec.decode_all(segment.codec, segment.payloads):
                    plan.add(ops)
            except codec.RecordError as exc:
                raise StoreError(f"{segment.path}: {exc}") from None
            if segment.torn and report:
                self._warn(f"{segment.path}: ignoring {segment.torn} (a write the daemon died "
                           f"in; it was not acknowledged)")
        if plan:
            plan.write(self.db)

    def load(self) -> dict[str, Any] | None:
        """The stored snapshot: the database with the journal's records applied (the files
        are not changed: ``bind`` folds the journal), or ``None`` for a new state. Removed
        cgroups that no IOASID is charged to any more are dropped on the way. ``StoreError``
        for a journal that cannot be read."""
        segments = self._journal()
        with self._db_lock:
            db = self.db
            if any(s.payloads for s in segments):
                db.execute("BEGIN")
                try:
                    self._replay(segments, report=True)
                    snap = self._read()
                finally:
                    db.execute("ROLLBACK")
            else:
                snap = self._read()
        if snap is not None:
            unused = snap.pop("unused")
            if unused:
                with self._db_lock, self._transaction():
                    self.db.executemany("DELETE FROM cgroups WHERE id=?",
                                        [(i,) for i in unused])
        return snap

    def _read(self) -> dict[str, Any] | None:
        db = self.db

        def meta(key: str) -> Any:
            row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return None if row is None else json.loads(row[0])

        self._loaded_meta = {key: meta(key) for key in ("clock", "boot", "orphans",
                                                        "refusal_seq")}
        if meta("schema") is None:
            return None
        self._loaded_refusals = [json.loads(record) for (record,)
                                 in db.execute("SELECT record FROM refusals")]
        core = meta("core")
        knobs = meta("knobs")
        cgroups = []
        for row in db.execute("SELECT * FROM cgroups ORDER BY id"):
            rec = dict(zip(_CGROUP_COLUMNS, row[:-2], strict=True))
            rec["attrs"] = json.loads(row[-2])
            rec["control"] = None if row[-1] is None else json.loads(row[-1])
            cgroups.append(rec)
        ioasids = [
            {"id": i, "set": s, "state": state, "refs": refs, "spid": spid, "cgroup": cg,
             "pooled": pooled == 1, "indexed": indexed == 1,
             "private": None if private is None else json.loads(private)}
            for i, s, state, refs, spid, cg, pooled, indexed, private
            in db.execute("SELECT * FROM ioasids ORDER BY id")]
        charges: dict[int, set[int]] = {}
        for sid, cg in set(map(_SET_AND_CGROUP, ioasids)):  # in C: a million are quick
            if cg is not None:
                charges.setdefault(sid, set()).add(cg)
        self._loaded_charges = charges
        cgroups, unused = _drop_unused_removed(cgroups, ioasids)
        for rec in cgroups:
            for name in ("notify_on_release", "clone_children", "removed"):
                rec[name] = bool(rec[name])
        processes = [dict(zip(("pid", "start_time", "cgroup", "threads"), row, strict=True))
                     for row in db.execute("SELECT * FROM processes ORDER BY pid")]
        sets = []
        for row in db.execute("SELECT * FROM sets ORDER BY id"):
            token = None if row[2] is None else {
                "pid": row[2], "start_time": row[3], "alive": bool(row[4])}
            sets.append({"id": row[0], "type": row[1], "token": token, "quota": row[5],
                         "reserved": row[6], "nr_ioasids": row[7],
                         "free_requested": bool(row[8])})
        return {"version": SNAPSHOT_VERSION, "knobs": knobs, "core": core, "cgroups": cgroups,
                "processes": processes, "sets": sets, "ioasids": ioasids, "unused": unused}

    # ------------------------------------------------------------------ binding
    def bind(self, system: System, cgroups: dict[int, Cgroup] | None = None) -> None:
        """Attach ``system`` and start journaling. ``cgroups`` maps row ids to the cgroups
        ``snapshot.load`` built from ``load()``: the journal left by a daemon that died is then
        folded into the database first. Without it (a new state) everything is written now and
        any journal is dropped. ``StoreError`` when the database or journal cannot be
        written."""
        self._system = system
        self._core = system.core
        self._controller = system.controller
        self._hierarchy = system.cgroups
        self._processes = system.cgroups.processes
        segments = self._journal()
        try:
            with self._db_lock:
                if cgroups is None:
                    self.write_all()
                else:
                    with self._transaction():
                        self._replay(segments, report=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {exc}") from None
        if cgroups is not None:
            self._remember(system, cgroups)
            self.refusals.last_seq = self._loaded_meta.get("refusal_seq") or 0
            dropped = self.refusals.load(self._loaded_refusals)
            if dropped:  # saved with a larger ring
                self._record("refusal", [(REFUSAL, e["seq"], None) for e in dropped])
        self._loaded_refusals = []
        folder = Folder(self.state_dir, self._fold_payloads,
                        first=max((s.number for s in segments), default=0) + 1,
                        interval=self.fold_interval, sync=self.synchronous == "full",
                        warn=self._warn, note=self._note, what=str(self.path),
                        folded=[s.number for s in segments])
        try:
            folder.start()
        except OSError as exc:
            raise StoreError(f"{self.state_dir}: the journal cannot be created: "
                             f"{exc.strerror or exc}") from None
        self._folder = folder

    def _remember(self, system: System, cgroups: dict[int, Cgroup]) -> None:
        """What the database holds for a restored ``system``, as ``load`` read it."""
        core = system.core
        self._rows = {cg: row for row, cg in cgroups.items()}
        self._cgroups = dict(cgroups)
        self._next_row = max(cgroups, default=0) + 1
        self._kept = {row: cg for row, cg in cgroups.items() if is_removed(cg)}
        self._last_core = None
        self._core_op([])
        self._procs = {pid: (p.start_time, self._rows[p.cgroup], p.threads)
                       for pid, p in system.cgroups.processes.items()}
        self._set_of = IdMap()
        for sid, ioasid_set in core.sets_by_id.items():
            self._set_of.set_many(ioasid_set.xa, sid)
        if any(s.nr_ioasids != len(s.xa) for s in core.sets_by_id.values()):  # hidden IDs
            for data in core.ioasids():
                self._set_of.set(data.id, data.set.id)
        charges = self._loaded_charges
        if charges is None:  # bound without load(): ask the model
            charges = {}
            for data in core.ioasids():
                if data.cgroup is not None:
                    charges.setdefault(data.set.id, set()).add(self._row(data.cgroup))
        self._charged = {sid: set(charges.get(sid, ())) for sid in core.sets_by_id}
        self._owned = {}
        for sid, s in core.sets_by_id.items():
            if isinstance(s.token, Process):
                self._owned.setdefault(s.token.pid, set()).add(sid)

    @property
    def system(self) -> System:
        if self._system is None:
            raise StoreError("no system is bound to the store")
        return self._system

    def _row(self, cg: Cgroup) -> int:
        row = self._rows.get(cg)
        if row is None:
            if cg.parent is not None:
                self._row(cg.parent)  # parents get smaller ids: load reads them first
            row = self._rows[cg] = self._next_row
            self._cgroups[row] = cg
            self._next_row += 1
        return row

    def _encode_private(self, value: Any) -> str | None:
        try:
            plain = plain_private(value)
        except SnapshotError as exc:
            kind = type(value).__name__
            if kind not in self._unsaved_private:
                self._unsaved_private.add(kind)
                self._warn(f"IOASID private data not saved ({exc}); it restarts as None")
            return None
        return None if plain is None else json.dumps(plain, sort_keys=True)

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        db = self.db
        db.execute("BEGIN")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _fold_payloads(self, payloads: list[bytes]) -> None:
        """The folder's work: records into the database, in one transaction."""
        plan = FoldPlan()
        add = plan.add
        for ops in codec.decode_all(codec.WRITTEN, payloads):
            add(ops)
        with self._db_lock, self._transaction():
            plan.write(self.db)

    def _record(self, kind: str, ops: list[Op]) -> None:
        """Make one record durable: appended to the journal, or (before ``bind``) written to
        the database at once."""
        if self._folder is not None:
            try:
                payload = codec.encode(ops)
            except codec.RecordError as exc:
                raise StoreError(str(exc)) from None
            self._folder.append(kind, payload)
            return
        plan = FoldPlan()
        plan.add(ops)
        with self._db_lock, self._transaction():
            plan.write(self.db)

    def write_all(self) -> None:
        """Replace the stored state with the bound system's (one record)."""
        self._record("sync", self._everything())
        self._error = None

    def _everything(self) -> list[Op]:
        system = self.system
        core = system.core
        removed = removed_cgroups(core)
        live = set(system.cgroups.cgroups()) | set(removed)
        self._rows = {cg: row for cg, row in self._rows.items() if cg in live}
        self._cgroups = {row: cg for cg, row in self._rows.items()}
        self._kept = {self._row(cg): cg for cg in removed}
        self._last_cgroup, self._last_set, self._last_core = {}, {}, None
        self._procs, self._owned, self._charged = {}, {}, {}
        self._set_of = IdMap()
        ops: list[Op] = [(EVERYTHING,), (META, "schema", SCHEMA_VERSION),
                         (META, "boot", boot_id()), (META, "knobs", core.knobs.as_dict()),
                         (META, "clock", process_clock()),
                         (META, "orphans", _orphan_rows(system.orphans))]
        self._cgroup_ops([*system.cgroups.cgroups(), *removed], ops)
        for pid in sorted(system.cgroups.processes):
            self._process_ops(system.cgroups.processes[pid], ops)
        for ioasid_set in core.sets:
            self._set_ioasids_ops(ioasid_set.id, ops)
        self._core_op(ops)
        for item in self.refusals.entries():
            ops.append(_refusal_op(item))
        ops.append((META, "refusal_seq", self.refusals.last_seq))
        return ops

    def apply(self, change: Change) -> None:
        """Make one change durable (``System.on_change``); see the module's documentation for
        what each field of ``change`` names. Never raises: a change whose record cannot be made
        is logged, kept in ``error`` and repaired by a full rewrite at the next change."""
        # unpacked at once: a named tuple's fields cost a descriptor call each, on every change
        kind, changed, processes, ids, sets, _path, _orphans, refusal, _alike = change
        folder = self._folder
        if len(ids) == 1 and not processes and not sets and refusal is None and \
                kind is not _RMDIR and kind is not _SYNC and self._error is None and \
                folder is not None:  # one IOASID: every ALLOC and FREE, the hot path
            try:
                payload = _encode(self._one_ioasid_ops(int(ids[0]), changed))
            except (SnapshotError, StoreError, codec.RecordError) as exc:
                self._not_saved(kind, exc)
                return
            folder.append(kind, payload)
            return
        try:
            if self._error is not None or kind is _SYNC:
                ops = self._everything()
                if refusal is not None or change.path is not None:
                    self._refusal_ops(change, ops)
            else:
                ops = self._change(change)
        except (SnapshotError, StoreError) as exc:
            self._not_saved(kind, exc)
            return
        self._error = None
        if ops:
            try:
                if folder is not None:
                    folder.append(kind, _encode(ops))
                else:
                    self._record(kind, ops)
            except (codec.RecordError, sqlite3.Error, StoreError) as exc:  # not journaling:
                self._not_saved(kind, exc)                                  # written at once

    def _one_ioasid_ops(self, ioasid: int, changed: Sequence[Cgroup]) -> list[Op]:
        """The operations that record a change of one IOASID and the cgroups ``changed``
        (every ALLOC and FREE): the IOASID's row, the cgroups it and ``changed`` touched, the
        core's values."""
        ops: list[Op] = []
        touched = self._ioasid_ops(ioasid, ops)
        if changed:
            touched = [*changed, *touched]
        if touched:
            self._cgroup_ops(touched, ops)
        self._core_op(ops)
        return ops

    def _not_saved(self, kind: str, exc: Exception) -> None:
        """A change whose record could not be made: logged (the first of a run), kept in
        ``error``; the next change rewrites everything."""
        if self._error is None:
            self._warn(f"state not saved ({kind}): {exc}; retrying with a full write")
        self._error = f"{kind}: {exc}"

    def _change(self, change: Change) -> list[Op]:
        """The operations that record one change."""
        if self._system is None:
            raise StoreError("no system is bound to the store")
        # unpacked at once: a named tuple's fields cost a descriptor call each, on every change
        kind, changed, processes, ids, sets, _path, orphans, refusal, alike = change
        if len(ids) == 1 and not processes and not sets and refusal is None and \
                kind is not _RMDIR:  # one IOASID (``apply`` takes this path itself)
            return self._one_ioasid_ops(int(ids[0]), changed)
        if kind is ChangeKind.ORPHANS:
            rows = _orphan_rows(orphans)
            self._loaded_meta["orphans"] = rows
            return [(META, "orphans", rows)]
        cgroups = list(changed)
        set_ids = set(sets)

        ops: list[Op] = []
        for proc in processes:
            cgroups.extend(self._process_ops(proc, ops))
            owned = self._core.find_mm_set_locked(proc)
            if owned is not None:
                set_ids.add(owned.id)
            # by pid alone: a process tracked anew under a reused pid released the old one's sets
            set_ids.update(self._owned.get(proc.pid, ()))
        if len(ids) >= _GROUP_IDS:  # a slice of a batch: one operation, whatever its set's size
            ids = self._grouped(ids, set_ids, ops, cgroups, alike=alike)
        if len(ids) >= _BULK_IDS:
            ids = tuple(self._bulk_to_sets(ids, set_ids))
            if len(ids) >= _GROUP_IDS:  # those no set takes whole may still be one set's
                ids = self._grouped(ids, set_ids, ops, cgroups)
        if set_ids:
            for sid in sorted(set_ids):
                cgroups.extend(self._set_ioasids_ops(sid, ops))
        if len(ids) == 1:
            (only,) = ids
            cgroups.extend(self._ioasid_ops(int(only), ops))
        elif ids:
            for ioasid in sorted({int(i) for i in ids}):
                cgroups.extend(self._ioasid_ops(ioasid, ops))
        if cgroups:
            self._cgroup_ops(cgroups, ops)
        self._core_op(ops)
        if processes:  # a process joined or left: forks before now were seen (see clock)
            ops.append((META, "clock", process_clock()))
        if kind is ChangeKind.RMDIR and changed:
            self._forget_removed(changed[0], ops)
        if refusal is not None or kind is ChangeKind.RMDIR or kind is ChangeKind.RENAME:
            self._refusal_ops(change, ops)
        return ops

    def _refusal_ops(self, change: Change, ops: list[Op]) -> None:
        """The refusal log's part of a change: a new entry (and those it pushed out), the
        ring of a removed cgroup dropped, or the rings of a renamed one moved."""
        log = self.refusals
        refusal = change.refusal
        if refusal is not None:
            new = entry(refusal, seq=log.last_seq + 1, time=round(time.time(), 6),
                        command=self.system.processes.command(refusal.pid))
            ops.append(_refusal_op(new))
            ops.append((META, "refusal_seq", new["seq"]))
            ops.extend((REFUSAL, old["seq"], None) for old in log.add(new))
        elif change.path is not None and change.kind is ChangeKind.RMDIR:
            ops.extend((REFUSAL, old["seq"], None) for old in log.drop(change.path))
        elif change.path is not None and change.cgroups:
            ops.extend(_refusal_op(moved)
                       for moved in log.rename(change.path, change.cgroups[0].path))

    def _core_op(self, ops: list[Op]) -> None:
        core = self._core
        hierarchy = self._hierarchy
        values = (core.capacity, core.capacity_avail, core.capacity_installed,
                  hierarchy.release_agent, hierarchy.sane_behavior,
                  self._controller.warned_negative, hierarchy.version)
        if values != self._last_core:
            ops.append((CORE, values))
            self._last_core = values

    # ------------------------------------------------------------------ cgroups
    def _cgroup_ops(self, cgroups: Iterable[Cgroup], ops: list[Op]) -> None:
        """The rows of ``cgroups`` and their ancestors that changed since last written."""
        nodes: dict[Cgroup, None] = {}
        for cg in cgroups:
            if cg in nodes or (cg not in self._rows and is_removed(cg)):
                continue  # a removed cgroup nothing is charged to: its row is gone
            nodes[cg] = None
            for node in cg.chain:
                nodes[node] = None
        last = self._last_cgroup
        for cg in nodes:
            row = self._row(cg)
            parent = cg.parent
            attrs = cg.attrs
            fields = (None if parent is None else self._row(parent), cg.name, cg.limit,
                      cg.reserved, cg.counter, cg.peak, cg.events, cg.events_local,
                      int(cg.notify_on_release), int(cg.clone_children), int(is_removed(cg)),
                      {name: dict(a) for name, a in attrs.items()} if attrs else None,
                      control_record(cg))
            if last.get(row) != fields:
                ops.append((CGROUP, row, fields))
                last[row] = fields

    def _forget_removed(self, cg: Cgroup, ops: list[Op]) -> None:
        """After ``rmdir``: drop the row unless IOASIDs (or removed children) may still refer
        to it; a row kept for nothing is dropped by the next ``load``."""
        row = self._rows.get(cg)
        if row is None:
            return
        used = any(row in charged for charged in self._charged.values()) or \
            any(kept.parent is cg for kept in self._kept.values())
        if used:
            self._kept[row] = cg
            return
        ops.append((CGROUP, row, None))
        del self._rows[cg]
        del self._cgroups[row]
        self._last_cgroup.pop(row, None)

    def _charged_cgroups(self, sid: int) -> list[Cgroup]:
        """The cgroups the IOASIDs of ``sid`` may be charged to, but the root without a limit:
        a charge then never changes the root's row (its walk stops below it); with a limit
        (``set_root_max``) the root counts its own charges."""
        cgroups = self._cgroups
        return [cg for cg in map(cgroups.get, self._charged.get(sid, ()))
                if cg is not None and (cg.parent is not None or cg.limit is not None)]

    # ------------------------------------------------------------------ processes
    def _process_ops(self, proc: Process, ops: list[Op]) -> list[Cgroup]:
        """Write or delete the row of ``proc``; returns its cgroup and that of the process the
        row described before (the same pid may have been released and tracked anew)."""
        touched = [proc.cgroup]
        before = self._procs.get(proc.pid)
        if before is not None and before[1] in self._cgroups:
            touched.append(self._cgroups[before[1]])
        tracked = self._processes.get(proc.pid)
        if tracked is not None and tracked.alive:
            self._process_row(tracked, ops)
        else:
            ops.append((PROCESS, proc.pid, None))
            self._procs.pop(proc.pid, None)
        return touched

    def _process_row(self, proc: Process, ops: list[Op]) -> None:
        fields = (proc.start_time, self._row(proc.cgroup), proc.threads)
        if self._procs.get(proc.pid) != fields:
            ops.append((PROCESS, proc.pid, fields))
            self._procs[proc.pid] = fields

    # ------------------------------------------------------------------ sets and IOASIDs
    def _set_op(self, sid: int, ops: list[Op]) -> None:
        """The row of set ``sid`` (or its removal)."""
        ioasid_set = self._core.sets_by_id.get(sid)
        before = self._last_set.get(sid)
        if ioasid_set is None:
            ops.append((SET, sid, None))
            self._last_set.pop(sid, None)
            self._charged.pop(sid, None)
            if before is not None and before[1] in self._owned:
                self._owned[before[1]].discard(sid)
            return
        token = ioasid_set.token
        if token is None:
            pid = start = alive = None
        elif token.__class__ is Process:
            pid, start, alive = token.pid, token.start_time, int(token.alive)
        else:
            token_record(token)  # raises SnapshotError naming the token's type
            return
        fields = (ioasid_set.type._value_, pid, start, alive, ioasid_set.quota,
                  ioasid_set.reserved, int(ioasid_set.free_requested))  # nr_ioasids: derived
        if before != fields:
            ops.append((SET, sid, fields))
            self._last_set[sid] = fields
            if pid is not None:
                owned = self._owned.get(pid)
                if owned is None:
                    owned = self._owned[pid] = set()
                owned.add(sid)
        if pid is not None and pid not in self._procs and self._processes.get(pid) is token:
            # a face may have tracked the owner without reporting it (System.process)
            self._process_row(token, ops)  # type: ignore[arg-type]

    def _bulk_to_sets(self, ids: tuple[int, ...], set_ids: set[int]) -> list[int]:
        """Of many changed IOASIDs (a batch), those of a set that they make up at least a
        quarter of (or that is gone) are written with their set, as ranges, instead of one row
        each: the set joins ``set_ids``. Returns the rest, to be written one by one. Either way
        the cost follows the change, not the size of the sets it touched."""
        core = self._core
        index = core.ioasid_index.get
        first_id = next(iter(ids))
        first = index(first_id)
        if first is not None and first.set.xa.issuperset(ids):  # all live in one set: a
            live = first.set                                      # batch allocation, in C
            if live.nr_ioasids <= 4 * len(ids):  # (a repeated ID only favours the set)
                set_ids.add(live.id)
                return []
            return list(ids)
        set_of = self._set_of.get
        sid = set_of(first_id) if first is None else None
        if (sid is not None and not core.ioasid_index.any_used(ids)  # all gone, all last
                and self._set_of.all_map_to(ids, sid)):                # written in one set:
            gone = core.sets_by_id.get(sid)                            # a batch freed
            if gone is None or gone.nr_ioasids <= 4 * len(ids):
                set_ids.add(sid)
                return []
            return list(ids)
        by_set: dict[int | None, list[int]] = {}
        for ioasid in ids:
            data = index(ioasid) if ioasid >= 0 else None
            sid = data.set.id if data is not None else set_of(ioasid)
            members = by_set.get(sid)
            if members is None:
                by_set[sid] = [ioasid]
            else:
                members.append(ioasid)
        rest: list[int] = []
        sets = core.sets_by_id
        for sid, members in by_set.items():
            live = sets.get(sid) if sid is not None else None
            if sid is not None and (live is None or live.nr_ioasids <= 4 * len(members)):
                set_ids.add(sid)
            else:
                rest.extend(members)
        return rest

    def _grouped(self, ids: tuple[int, ...], whole: set[int], ops: list[Op],
                 cgroups: list[Cgroup], *, alike: bool = False) -> tuple[int, ...]:
        """``_group_ops``: ``()`` when ``ids`` were written as one operation (the cgroups they
        touch added to ``cgroups``), else ``ids``, still to be written."""
        grouped = self._group_ops(ids, whole, ops, alike=alike)
        if grouped is None:
            return ids
        cgroups.extend(grouped)
        return ()

    def _group_ops(self, ids: tuple[int, ...], whole: set[int], ops: list[Op], *,
                   alike: bool = False) -> list[Cgroup] | None:
        """Many IOASIDs of one set (a slice of a batch) as one ``IOASIDS`` operation, when they
        are all live in its index with the same fields and no private data, or all gone and
        last written in that set, and the set is not in ``whole`` (written whole anyway);
        returns the cgroups they were or are charged to, or ``None`` (nothing written) when
        they are not such a group. IDs in ascending order with no gap (what a batch's slice
        is) are read, checked and remembered a chunk at a time. ``alike``: the change says
        they are what one batch allocation made (``Change.ids_alike``), so the first is read
        for all."""
        try:
            group = array("I", ids)
        except OverflowError:  # not all IDs (0 <= id < 2^32)
            return None
        core = self._core
        index = core.ioasid_index
        run = ascending_run(group)
        span: Sequence[int] = ids if run is None else range(run[0], run[1] + 1)
        first = index.get(ids[0])
        if first is not None:
            ioasid_set = first.set
            sid = ioasid_set.id
            key = _IOASID_KEY(first)
            if sid in whole or key[5] is not None:
                return None
            if not alike:
                if not ioasid_set.xa.issuperset(ids):
                    return None
                found = map(index.get, ids) if run is None else index.get_range(*run)
                if not all(map(key.__eq__, map(_IOASID_KEY, found))):
                    return None
            state, refs, spid, cg, pooled, _private = key
            row = None if cg is None else self._row(cg)
            ops.append((IOASIDS, sid, (sid, int(state), refs, spid, row, pooled, True, None),
                        ids_bytes(group)))
            self._set_of.set_many(span, sid)
            if sid not in self._last_set:
                self._set_op(sid, ops)
            if cg is None:
                return []
            charged = self._charged.get(sid)
            if charged is None:
                charged = self._charged[sid] = set()
            charged.add(row)  # type: ignore[arg-type]  # not None with cg
            return [cg] if cg.parent is not None or cg.limit is not None else []
        gone = self._set_of.get(ids[0])
        if gone is None or gone in whole or index.any_used(span) or \
                not self._set_of.all_map_to(span, gone):
            return None
        ops.append((IOASIDS, gone, None, ids_bytes(group)))
        was_charged = self._charged_cgroups(gone)
        if gone not in core.sets_by_id:  # destroyed with its last IOASID
            self._set_op(gone, ops)
        return was_charged

    def _set_ioasids_ops(self, sid: int, ops: list[Op]) -> list[Cgroup]:
        """A set with every IOASID it holds; returns the cgroups they were or are charged
        to."""
        touched = self._charged_cgroups(sid)
        ioasid_set = self._core.sets_by_id.get(sid)
        if ioasid_set is None:
            ops.append((SET_IOASIDS, sid, ()))
        else:
            groups, charged = self._groups(ioasid_set)
            ops.append((SET_IOASIDS, sid, groups))
            self._charged[sid] = charged
            touched.extend(self._charged_cgroups(sid))
        self._set_op(sid, ops)
        return touched

    def _groups(self, ioasid_set: IoasidSet) -> tuple[tuple[Any, ...], set[int]]:
        """The IOASIDs of a set as ``SET_IOASIDS`` groups, and the rows of the cgroups they
        are charged to; remembers them as the set's. A set's index may miss IDs still counted
        against it (``v4``'s free_all_hides_pending): those are found among the IDs last
        written for it, or else by a look through every IOASID."""
        core = self._core
        get = core.ioasid_index.get
        sid = ioasid_set.id
        xa = ioasid_set.xa
        indexed = list(xa)
        hidden: list[int] = []
        missing = ioasid_set.nr_ioasids - len(indexed)
        if missing > 0:
            for ioasid in self._set_of.ids_of(sid):
                data = get(ioasid) if ioasid not in xa else None
                if data is not None and data.set is ioasid_set:
                    hidden.append(ioasid)
            if len(hidden) != missing:
                hidden = [d.id for d in core.ioasids() if d.set is ioasid_set and d.id not in xa]
        self._set_of.set_many(xa, sid)
        self._set_of.set_many(hidden, sid)
        groups: list[tuple[tuple[Any, ...], bytes]] = []
        charged: set[int] = set()
        for ids, in_index in ((indexed, True), (hidden, False)):
            if not ids:
                continue
            first = _IOASID_KEY(get(ids[0]))
            if first[5] is None and all(map(first.__eq__, map(_IOASID_KEY, map(get, ids)))):
                by_key = {first: array("I", ids)}  # the common case, looked at in C
            else:
                by_key = {}
                for ioasid in ids:
                    key = _IOASID_KEY(get(ioasid))
                    if key[5] is not None:  # private data: a row of its own
                        key = (*key[:5], self._encode_private(key[5]), ioasid)
                    by_key.setdefault(key, array("I")).append(ioasid)
            for key, group in by_key.items():
                state, refs, spid, cg, pooled, private = key[:6]
                row = None if cg is None else self._row(cg)
                if row is not None:
                    charged.add(row)
                groups.append(((sid, int(state), refs, spid, row, pooled, in_index,
                                private), ids_bytes(group)))
        return tuple(groups), charged

    def _ioasid_ops(self, ioasid: int, ops: list[Op]) -> list[Cgroup]:
        """One IOASID (new, changed or gone) and the row of its set; returns the cgroups it
        was or is charged to."""
        core = self._core
        data = core.ioasid_index.get(ioasid) if ioasid >= 0 else None
        if data is None:
            sid = self._set_of.get(ioasid)  # where it was, if it was written at all
            if sid is None:
                ops.append((IOASID, ioasid, None))
                return []
            ops.append((IOASID, ioasid, None, sid))
            was_charged = self._charged_cgroups(sid)  # before a gone set's row takes them
            if sid not in core.sets_by_id:  # destroyed with its last IOASID
                self._set_op(sid, ops)
            return was_charged
        ioasid_set = data.set
        sid = ioasid_set.id
        cg = data.cgroup
        row = None if cg is None else self._row(cg)
        private = data.private
        ops.append((IOASID, ioasid, (sid, int(data.state), data.refs, data.spid, row,
                                     data.pooled, ioasid in ioasid_set.xa,
                                     None if private is None else self._encode_private(private))))
        self._set_of.set(ioasid, sid)
        if sid not in self._last_set:  # a set first seen through one of its IOASIDs
            self._set_op(sid, ops)
        if row is None:
            return []
        charged = self._charged.get(sid)
        if charged is None:
            charged = self._charged[sid] = set()
        charged.add(row)
        # a live IOASID's charge moves only with its owner (a process report: the set whole)
        return [cg] if cg.parent is not None or cg.limit is not None else []


def _drop_unused_removed(cgroups: list[dict[str, Any]], ioasids: list[dict[str, Any]],
                         ) -> tuple[list[dict[str, Any]], list[int]]:
    """Removed cgroups no IOASID is charged to (nor to a removed child): the records to keep,
    and the ids of those to drop."""
    by_id = {rec["id"]: rec for rec in cgroups}
    keep: set[int] = set()
    for rec in ioasids:
        cid = rec["cgroup"]
        while cid is not None and cid in by_id and by_id[cid]["removed"] and cid not in keep:
            keep.add(cid)
            cid = by_id[cid]["parent"]
    unused = [rec["id"] for rec in cgroups if rec["removed"] and rec["id"] not in keep]
    return [rec for rec in cgroups if not rec["removed"] or rec["id"] in keep], unused
