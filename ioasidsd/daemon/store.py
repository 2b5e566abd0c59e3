"""Durable state: the model in SQLite, written through on every change.

The store keeps one row per record of a snapshot (``ioasidsd.model.snapshot``): cgroups,
processes, sets, IOASIDs, plus the core's scalars and the knobs in ``meta``. ``System`` calls
``Store.apply(kind, detail)`` under its lock after every change; ``apply`` writes the records the
change touched in one transaction and commits before returning, so a write that changed state is
in the database before the face answers.

Durability. The database runs in WAL mode. With ``synchronous = "normal"`` (the default) a commit
reaches the operating system but is not flushed to the disk: it survives ``kill -9`` of the daemon
(the data is in the kernel's page cache) but not a power loss or kernel crash, where the last
commits may be lost (the database stays consistent). ``synchronous = "full"`` flushes every
commit and survives both, at the price of one disk flush per change.

What a change touches is read from ``detail``, whatever the kind, so that faces can report new
kinds without touching the store:

* ``cgroup``, ``src``, ``dst``, ``cgroups``: those cgroups and their ancestors (counters, limits,
  flags, names);
* ``process``, ``task``, ``processes``: those processes (tracked, moved or gone), the cgroups they
  are in, and every set they own with its IOASIDs;
* ``ids``: those IOASIDs (allocated, changed or gone) with their sets, old and new charged
  cgroups; report the new ID after an allocation;
* ``sets``: those sets (``IoasidSet`` or id) with all their IOASIDs (bulk frees, set frees);
* a refused operation that still changed counters (a refusal event, ``v4``'s leaked charge)
  reports its calling ``task``.

The core's scalars are compared and written on every change. Kind ``rmdir`` also drops the
cgroup's row (or marks it removed while IOASIDs are still charged to it). Kind ``sync`` rewrites
everything from the model: for a face that cannot tell what it changed, and after a failed write.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ioasidsd.model.cgroup import Cgroup, Process
from ioasidsd.model.core import IoasidSet
from ioasidsd.model.snapshot import (
    SNAPSHOT_VERSION,
    SnapshotError,
    cgroup_record,
    core_record,
    dump,
    ioasid_record,
    is_removed,
    plain_private,
    process_record,
    removed_cgroups,
    set_record,
)
from ioasidsd.system import System

SCHEMA_VERSION = 1
DB_NAME = "state.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cgroups (
    id INTEGER PRIMARY KEY, parent INTEGER, name TEXT NOT NULL, lim INTEGER,
    reserved INTEGER NOT NULL, counter INTEGER NOT NULL, peak INTEGER NOT NULL,
    events INTEGER NOT NULL, events_local INTEGER NOT NULL,
    notify_on_release INTEGER NOT NULL, clone_children INTEGER NOT NULL,
    removed INTEGER NOT NULL, attrs TEXT NOT NULL);
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
CREATE INDEX IF NOT EXISTS ioasids_cgroup ON ioasids (cgroup);
"""

_CGROUP_COLUMNS = ("id", "parent", "name", "limit", "reserved", "counter", "peak", "events",
                   "events_local", "notify_on_release", "clone_children", "removed")
_IOASID_COLUMNS = ("id", "set", "state", "refs", "spid", "cgroup", "pooled", "indexed")
_SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}

Row = tuple[Any, ...]
Warn = Callable[[str], None]


def _clock() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``)."""
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        return f.read().strip()


class StoreError(Exception):
    """The state directory's database cannot be used (the message says why)."""


# ---------------------------------------------------------------------- rows <-> records
def _cgroup_row(rec: dict[str, Any]) -> Row:
    attrs = rec["attrs"]
    return (rec["id"], rec["parent"], rec["name"], rec["limit"], rec["reserved"], rec["counter"],
            rec["peak"], rec["events"], rec["events_local"], int(rec["notify_on_release"]),
            int(rec["clone_children"]), int(rec["removed"]),
            json.dumps(attrs, sort_keys=True) if attrs else "{}")


def _process_row(rec: dict[str, Any]) -> Row:
    return (rec["pid"], rec["start_time"], rec["cgroup"], rec["threads"])


def _set_row(rec: dict[str, Any]) -> Row:
    token = rec["token"]
    pid, start, alive = (None, None, None) if token is None else (
        token["pid"], token["start_time"], int(token["alive"]))
    return (rec["id"], rec["type"], pid, start, alive, rec["quota"], rec["reserved"],
            rec["nr_ioasids"], int(rec["free_requested"]))


def _ioasid_row(rec: dict[str, Any]) -> Row:
    private = rec["private"]
    return (*(int(v) if isinstance(v, bool) else v for v in map(rec.__getitem__,
                                                               _IOASID_COLUMNS)),
            None if private is None else json.dumps(private, sort_keys=True))


class Store:
    """The SQLite database of one state directory.

    ``open`` creates or opens it; ``load`` reads the snapshot it holds (``None`` when new);
    ``bind`` attaches the running ``System`` (and writes everything when the state is new);
    ``apply`` is the system's ``on_change``. Every method but ``load`` and ``open`` runs under
    ``system.lock``. A write that fails is rolled back, logged through ``warn`` and kept in
    ``error``; every later change then first tries a full rewrite.
    """

    def __init__(self, path: Path, *, synchronous: str = "normal", warn: Warn | None = None):
        self.path = Path(path)
        self.synchronous = synchronous
        self.error: str | None = None
        self._warn = warn or (lambda message: None)
        self._db: sqlite3.Connection | None = None
        self._system: System | None = None
        self._rows: dict[Cgroup, int] = {}
        self._cgroups: dict[int, Cgroup] = {}
        self._next_row = 1
        self._core: dict[str, Any] | None = None
        self._unsaved_private: set[str] = set()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, state_dir: str | Path, *, synchronous: str = "normal",
             warn: Warn | None = None) -> Store:
        """Open ``state_dir/state.sqlite``, creating the directory and the database if needed.
        ``StoreError`` if it is not a database of ours or cannot be written."""
        if synchronous not in _SYNCHRONOUS:
            raise StoreError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        store = cls(Path(state_dir) / DB_NAME, synchronous=synchronous, warn=warn)
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
            if version is not None and json.loads(version[0]) != SCHEMA_VERSION:
                raise StoreError(f"{store.path}: schema {version[0]}, this ioasidsd reads "
                                 f"{SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"{store.path}: {exc}") from None
        store._db = db
        return store

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close. Idempotent."""
        if self._db is None:
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self._warn(f"state checkpoint failed: {exc}")
        self._db.close()
        self._db = None

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

    def set_clock(self, when: float) -> None:
        """Record that process events were watched up to ``when`` (seconds since boot)."""
        with self._transaction():
            self._write_meta("clock", when)
            self._write_meta("boot", boot_id())

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is closed")
        return self._db

    def meta(self, key: str) -> Any:
        """A value of the ``meta`` table (``None`` if unset)."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # ------------------------------------------------------------------ reading
    def load(self) -> dict[str, Any] | None:
        """The stored snapshot, or ``None`` for a new state. Removed cgroups that no IOASID is
        charged to any more are dropped on the way."""
        db = self.db
        if self.meta("schema") is None:
            return None
        core = self.meta("core")
        knobs = self.meta("knobs")
        cgroups = []
        for row in db.execute("SELECT * FROM cgroups ORDER BY id"):
            rec = dict(zip(_CGROUP_COLUMNS, row[:-1], strict=True))
            rec["attrs"] = json.loads(row[-1])
            cgroups.append(rec)
        ioasids = [
            {"id": i, "set": s, "state": state, "refs": refs, "spid": spid, "cgroup": cg,
             "pooled": pooled == 1, "indexed": indexed == 1,
             "private": None if private is None else json.loads(private)}
            for i, s, state, refs, spid, cg, pooled, indexed, private
            in db.execute("SELECT * FROM ioasids ORDER BY id")]
        cgroups = self._drop_unused_removed(cgroups, ioasids)
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
                "processes": processes, "sets": sets, "ioasids": ioasids}

    def _drop_unused_removed(self, cgroups: list[dict[str, Any]],
                             ioasids: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_id = {rec["id"]: rec for rec in cgroups}
        keep: set[int] = set()
        for rec in ioasids:
            cid = rec["cgroup"]
            while cid is not None and cid in by_id and by_id[cid]["removed"] and cid not in keep:
                keep.add(cid)
                cid = by_id[cid]["parent"]
        unused = [rec["id"] for rec in cgroups if rec["removed"] and rec["id"] not in keep]
        if unused:
            with self._transaction():
                self.db.executemany("DELETE FROM cgroups WHERE id=?", [(i,) for i in unused])
        return [rec for rec in cgroups if not rec["removed"] or rec["id"] in keep]

    # ------------------------------------------------------------------ binding
    def bind(self, system: System, cgroups: dict[int, Cgroup] | None = None) -> None:
        """Attach ``system``. ``cgroups`` maps row ids to the cgroups ``snapshot.load`` built
        from ``load()``; without it (a new state) everything is written now."""
        self._system = system
        if cgroups is None:
            self.write_all()
            return
        self._rows = {cg: row for row, cg in cgroups.items()}
        self._cgroups = dict(cgroups)
        self._next_row = max(cgroups, default=0) + 1
        self._core = core_record(system.core)

    @property
    def system(self) -> System:
        if self._system is None:
            raise StoreError("no system is bound to the store")
        return self._system

    def _row(self, cg: Cgroup) -> int:
        row = self._rows.get(cg)
        if row is None:
            row = self._rows[cg] = self._next_row
            self._cgroups[row] = cg
            self._next_row += 1
        return row

    def _encode_private(self, value: Any) -> Any:
        try:
            return plain_private(value)
        except SnapshotError as exc:
            kind = type(value).__name__
            if kind not in self._unsaved_private:
                self._unsaved_private.add(kind)
                self._warn(f"IOASID private data not saved ({exc}); it restarts as None")
            return None

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

    def write_all(self) -> None:
        """Replace the stored state with the bound system's, in one transaction."""
        system = self.system
        core = system.core
        live = set(system.cgroups.cgroups()) | set(removed_cgroups(core))
        self._rows = {cg: row for cg, row in self._rows.items() if cg in live}
        self._cgroups = {row: cg for cg, row in self._rows.items()}
        snap = dump(core, cgroup_id=self._row, encode_private=self._encode_private)
        db = self.db
        with self._transaction():
            for table in ("meta", "cgroups", "processes", "sets", "ioasids"):
                db.execute(f"DELETE FROM {table}")
            self._write_meta("schema", SCHEMA_VERSION)
            self._write_meta("boot", boot_id())
            self._write_meta("knobs", snap["knobs"])
            self._write_core(force=True)
            self._write_meta("clock", _clock())
            db.executemany("INSERT INTO cgroups VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           map(_cgroup_row, snap["cgroups"]))
            db.executemany("INSERT INTO processes VALUES (?,?,?,?)",
                           map(_process_row, snap["processes"]))
            db.executemany("INSERT INTO sets VALUES (?,?,?,?,?,?,?,?,?)",
                           map(_set_row, snap["sets"]))
            db.executemany("INSERT INTO ioasids VALUES (?,?,?,?,?,?,?,?,?)",
                           map(_ioasid_row, snap["ioasids"]))
        self.error = None

    def _write_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                        (key, json.dumps(value, sort_keys=True)))

    def _write_core(self, *, force: bool = False) -> None:
        record = core_record(self.system.core)
        if force or record != self._core:
            self._write_meta("core", record)
            self._core = record

    def apply(self, kind: str, detail: dict[str, Any]) -> None:
        """Make one change durable (``System.on_change``); see the module's documentation for
        what ``detail`` may name. Never raises: a failed write is rolled back, logged, kept in
        ``error`` and repaired by a full rewrite at the next change."""
        try:
            if self.error is not None or kind == "sync":
                self.write_all()
                if kind == "sync":
                    return
            with self._transaction():
                self._apply(kind, detail)
        except (sqlite3.Error, SnapshotError, StoreError) as exc:
            if self.error is None:
                self._warn(f"state not saved ({kind}): {exc}; retrying with a full write")
            self.error = f"{kind}: {exc}"

    def _apply(self, kind: str, detail: dict[str, Any]) -> None:
        system = self.system
        cgroups: list[Cgroup] = []
        for key in ("cgroup", "src", "dst"):
            if isinstance(detail.get(key), Cgroup):
                cgroups.append(detail[key])
        cgroups.extend(detail.get("cgroups", ()))
        processes: list[Process] = [p for p in (detail.get("process"), detail.get("task"))
                                    if isinstance(p, Process)]
        processes.extend(detail.get("processes", ()))
        set_ids = {s.id if isinstance(s, IoasidSet) else int(s) for s in detail.get("sets", ())}
        ids = {int(i) for i in detail.get("ids", ())}

        for proc in processes:
            cgroups.extend(self._write_process(proc))
            owned = system.core._find_mm_set(proc)
            if owned is not None:
                set_ids.add(owned.id)
            # by pid alone: a process tracked anew under a reused pid released the old one's sets
            set_ids.update(row[0] for row in self.db.execute(
                "SELECT id FROM sets WHERE token_pid=?", (proc.pid,)))
        for sid in sorted(set_ids):
            cgroups.extend(self._sync_set(sid))
        for ioasid in sorted(ids):
            cgroups.extend(self._sync_ioasid(ioasid))
        self._write_cgroups(cgroups)
        self._write_core()
        if processes:  # a process joined or left: forks before now were seen (see clock)
            self._write_meta("clock", _clock())
        if kind == "rmdir" and isinstance(detail.get("cgroup"), Cgroup):
            self._forget_removed(detail["cgroup"])

    def _write_process(self, proc: Process) -> list[Cgroup]:
        """Write or delete the row of ``proc``; returns its cgroup and that of the process the
        row described before (the same pid may have been released and tracked anew)."""
        touched = [proc.cgroup]
        before = self.db.execute("SELECT cgroup FROM processes WHERE pid=?",
                                 (proc.pid,)).fetchone()
        if before is not None and before[0] in self._cgroups:
            touched.append(self._cgroups[before[0]])
        tracked = self.system.cgroups.processes.get(proc.pid)
        if tracked is not None and tracked.alive:
            self.db.execute("INSERT OR REPLACE INTO processes VALUES (?,?,?,?)",
                            _process_row(process_record(tracked, self._row)))
        else:
            self.db.execute("DELETE FROM processes WHERE pid=?", (proc.pid,))
        return touched

    def _write_cgroups(self, cgroups: Iterable[Cgroup]) -> None:
        nodes: dict[int, Cgroup] = {}
        for cg in cgroups:
            if cg not in self._rows and is_removed(cg):
                continue  # a removed cgroup nothing is charged to: its row is gone
            nodes[id(cg)] = cg
            for node in cg.walk():
                nodes[id(node)] = node
        rows = [_cgroup_row(cgroup_record(cg, self._row)) for cg in nodes.values()]
        if len(rows) == 1:
            self.db.execute("INSERT OR REPLACE INTO cgroups VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                            rows[0])
        elif rows:
            self.db.executemany(
                "INSERT OR REPLACE INTO cgroups VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def _forget_removed(self, cg: Cgroup) -> None:
        """After ``rmdir``: drop the row unless IOASIDs (or removed children) still refer to it."""
        row = self._rows.get(cg)
        if row is None:
            return
        db = self.db
        used = db.execute("SELECT 1 FROM ioasids WHERE cgroup=? LIMIT 1", (row,)).fetchone() or \
            db.execute("SELECT 1 FROM cgroups WHERE parent=? LIMIT 1", (row,)).fetchone()
        if not used:
            db.execute("DELETE FROM cgroups WHERE id=?", (row,))
            del self._rows[cg]
            del self._cgroups[row]

    def _stored_ioasids(self, where: str, arg: int) -> dict[int, Row]:
        return {row[0]: row for row in self.db.execute(
            f"SELECT * FROM ioasids WHERE {where}=?", (arg,))}

    def _sync_rows(self, stored: dict[int, Row], ids: Iterable[int]) -> list[Cgroup]:
        """Write the IOASIDs ``ids`` whose rows differ from ``stored``; returns the cgroups whose
        charges may have changed (old and new)."""
        core = self.system.core
        touched: list[Cgroup] = []
        for ioasid in ids:
            old = stored.get(ioasid)
            data = core.data(ioasid) if ioasid in core else None
            new = None if data is None else _ioasid_row(
                ioasid_record(data, self._row, self._encode_private))
            if new == old:
                continue
            if new is None:
                self.db.execute("DELETE FROM ioasids WHERE id=?", (ioasid,))
            else:
                self.db.execute("INSERT OR REPLACE INTO ioasids VALUES (?,?,?,?,?,?,?,?,?)", new)
            for row in (old, new):
                if row is not None and row[5] is not None and row[5] in self._cgroups:
                    touched.append(self._cgroups[row[5]])
        return touched

    def _write_set(self, sid: int) -> None:
        ioasid_set = self.system.core._sets.get(sid)
        if ioasid_set is None:
            self.db.execute("DELETE FROM sets WHERE id=?", (sid,))
            return
        self.db.execute("INSERT OR REPLACE INTO sets VALUES (?,?,?,?,?,?,?,?,?)",
                        _set_row(set_record(ioasid_set)))
        owner = ioasid_set.token
        if isinstance(owner, Process) and self.system.cgroups.processes.get(owner.pid) is owner:
            # a face may have tracked the owner without reporting it (System.process)
            self.db.execute("INSERT OR REPLACE INTO processes VALUES (?,?,?,?)",
                            _process_row(process_record(owner, self._row)))

    def _sync_set(self, sid: int) -> list[Cgroup]:
        """A set and every IOASID of it, in the model or in the database."""
        core = self.system.core
        stored = self._stored_ioasids("set_id", sid)
        ids = set(stored)
        ioasid_set = core._sets.get(sid)
        if ioasid_set is not None:
            ids.update(ioasid_set.xa)
        touched = self._sync_rows(stored, sorted(ids))
        self._write_set(sid)
        return touched

    def _sync_ioasid(self, ioasid: int) -> list[Cgroup]:
        """One IOASID and the row of its set (old and new)."""
        stored = self._stored_ioasids("id", ioasid)
        touched = self._sync_rows(stored, (ioasid,))
        sids = {row[1] for row in stored.values()}
        core = self.system.core
        data = core.data(ioasid) if ioasid in core else None
        if data is not None:
            sids.add(data.set.id)
        for sid in sids:
            self._write_set(sid)
        return touched
