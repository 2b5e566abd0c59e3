"""Traces: recorded ``/dev/ioasid`` traffic, replayed by a policy under other limits and
semantics ("what would these limits have refused yesterday?").

A trace is a CSV file with a header naming at least ``time,op,pid,cgroup,count`` and
optionally ``device``. ``time`` is seconds from the trace's start, read as simulated time;
``op`` is ``spawn`` (process ``pid`` appears in ``cgroup``), ``alloc`` (``count`` IOASIDs),
``free`` (``count`` IOASIDs, most recently allocated first), ``move`` (to ``cgroup``),
``exit``, ``bind`` (``count`` of its IOASIDs not yet bound to ``device``, most recent first)
or ``unbind`` (``count`` of its bindings to ``device``, most recent first). Columns an
operation does not use may be empty. Rows run in time order (rows with equal times in file
order).

``read_trace(path)`` checks the whole file before anything runs: a malformed row is a
``PolicyError`` naming its line number and why (a bad number, an unknown operation, a pid used
before its ``spawn`` or after its ``exit``, a missing cgroup or device).

In a run, every ``alloc`` is one request, counted in its workload as a tenant is: offered,
then admitted or refused (all or nothing, through the same ``REQUEST_ALLOC`` /
``REQUEST_ALLOC_BATCH`` calls); the other operations are made as recorded and a refused one
(a ``free`` of IOASIDs whose allocation was refused here) is skipped.
"""

from __future__ import annotations

import csv
import re
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ioasidsd.experiments.errors import PolicyError
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.errors import IoasidError

if TYPE_CHECKING:
    from ioasidsd.experiments.engine import Engine, WorkloadRun
    from ioasidsd.model.ioasid_device import IoasidFile

OPS = ("spawn", "alloc", "free", "move", "exit", "bind", "unbind")
COLUMNS = ("time", "op", "pid", "cgroup", "count")
_BDF = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]")


@dataclass(frozen=True, slots=True)
class TraceOp:
    """One row of a trace (``line``: its line number in the file)."""

    time: float
    op: str
    pid: int
    cgroup: str
    count: int
    device: str
    line: int


def read_trace(path: str) -> tuple[TraceOp, ...]:
    """The checked operations of the trace at ``path``, in time order. ``PolicyError``
    (naming the file and the line) for an unreadable file or a malformed row."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise PolicyError("(file)", exc.strerror or str(exc), path) from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise PolicyError("(file)", f"not a CSV file: {exc}", path) from None
    if not rows:
        raise PolicyError("line 1", "empty trace: expected the header "
                                    "time,op,pid,cgroup,count[,device]", path)
    header = [h.strip() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise PolicyError("line 1", f"header lacks {', '.join(missing)}", path)
    col = {name: header.index(name) for name in header}
    ops: list[TraceOp] = []
    live: set[int] = set()
    gone: set[int] = set()
    for number, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            ops.append(_row(row, col, number, live, gone))
        except PolicyError as exc:
            exc.file = path
            raise
    return tuple(sorted(ops, key=lambda op: op.time))


def _row(row: list[str], col: dict[str, int], line: int, live: set[int],
         gone: set[int]) -> TraceOp:
    where = f"line {line}"
    if len(row) < len(col):
        raise PolicyError(where, f"expected {len(col)} columns, got {len(row)}")

    def cell(name: str) -> str:
        i = col.get(name)
        return row[i].strip() if i is not None else ""

    try:
        when = float(cell("time"))
    except ValueError:
        raise PolicyError(where, f"time {cell('time')!r} is not a number") from None
    if not when >= 0 or when == float("inf"):
        raise PolicyError(where, f"time {cell('time')!r} must be a finite number >= 0")
    op = cell("op")
    if op not in OPS:
        raise PolicyError(where, f"unknown op {op!r}: expected one of {', '.join(OPS)}")
    try:
        pid = int(cell("pid"))
    except ValueError:
        raise PolicyError(where, f"pid {cell('pid')!r} is not an integer") from None
    cgroup = cell("cgroup")
    count = 0
    if op in ("alloc", "free", "bind", "unbind"):
        try:
            count = int(cell("count"))
        except ValueError:
            raise PolicyError(where, f"count {cell('count')!r} is not an integer") from None
        if not 1 <= count <= uapi.IOASID_BATCH_MAX:
            raise PolicyError(where, f"count {count} not in 1..{uapi.IOASID_BATCH_MAX}")
    if op in ("spawn", "move") and (not cgroup.startswith("/") or "//" in cgroup
                                    or "/../" in f"{cgroup}/" or "/./" in f"{cgroup}/"):
        raise PolicyError(where, f"{op} needs an absolute cgroup path, got {cgroup!r}")
    device = cell("device").lower()
    if op in ("bind", "unbind") and not _BDF.fullmatch(device):
        raise PolicyError(where, f"{op} needs a device such as 0000:03:00.0, got {device!r}")
    if op == "spawn":
        if pid in live or pid in gone:
            raise PolicyError(where, f"pid {pid} spawned twice")
        live.add(pid)
    elif pid not in live:
        why = "after its exit" if pid in gone else "before its spawn"
        raise PolicyError(where, f"{op} of pid {pid} {why}")
    if op == "exit":
        live.discard(pid)
        gone.add(pid)
    return TraceOp(when, op, pid, cgroup.rstrip("/") or "/", count, device, line)


def trace_cgroups(ops: tuple[TraceOp, ...]) -> set[str]:
    """The cgroups a trace's processes are spawned in or moved to."""
    return {op.cgroup for op in ops if op.op in ("spawn", "move")}


def trace_devices(ops: tuple[TraceOp, ...]) -> set[str]:
    """The devices a trace binds."""
    return {op.device for op in ops if op.op == "bind"}


class _Replay:
    """One trace process in a run: its simulated pid, file, IOASIDs and bindings."""

    __slots__ = ("bound", "file", "ids", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.file: IoasidFile | None = None
        self.ids: list[int] = []
        self.bound: list[tuple[int, int]] = []


def schedule_trace(engine: Engine, run: WorkloadRun) -> None:
    """Schedule every operation of ``run``'s trace on ``engine``."""
    procs: dict[int, _Replay] = {}
    warmup = engine.policy.warmup
    system = engine.system
    stats = run.stats

    def act(op: TraceOp) -> None:
        now = engine.now
        if op.op == "spawn":
            proc = _Replay(engine.processes.spawn(now))
            procs[op.pid] = proc
            system.fork(1, proc.pid, now, into=engine.built.cgroups[op.cgroup])
            return
        proc = procs[op.pid]
        if op.op == "exit":
            del procs[op.pid]
            engine.depart_pid(proc.pid)
        elif op.op == "move":
            try:
                system.write_procs(op.cgroup, str(proc.pid), writer_pid=proc.pid, writer_uid=0)
                if now >= warmup:
                    stats.migrated += 1
            except IoasidError:
                if now >= warmup:
                    stats.migrations_refused += 1
        elif op.op == "alloc":
            _replay_alloc(engine, run, proc, op.count, now >= warmup)
        elif op.op == "free" and proc.file is not None:
            freed = proc.ids[-op.count:]
            del proc.ids[-op.count:]
            if freed:
                arg = (uapi.FREE_BATCH.pack(12 + 4 * len(freed), 0, len(freed))
                       + array("I", freed).tobytes())
                system.ioasid_ioctl(proc.file, uapi.IOASID_REQUEST_FREE_BATCH, arg)
        elif op.op == "bind" and proc.file is not None:
            from ioasidsd.experiments.engine import devid

            dev = devid(op.device)
            bound = {i for i, d in proc.bound if d == dev}
            for hpasid in [i for i in reversed(proc.ids) if i not in bound][:op.count]:
                try:
                    system.ioasid_ioctl(proc.file, uapi.IOASID_BIND_GPASID,
                                        uapi.BIND_GPASID.pack(32, 0, hpasid, 0, dev, 0, 0))
                except IoasidError:
                    if now >= warmup:
                        stats.binds_refused += 1
                    continue
                proc.bound.append((hpasid, dev))
                if now >= warmup:
                    stats.bound += 1
        elif op.op == "unbind" and proc.file is not None:
            from ioasidsd.experiments.engine import devid

            dev = devid(op.device)
            mine = [(i, d) for i, d in proc.bound if d == dev][-op.count:]
            for hpasid, d in reversed(mine):
                proc.bound.remove((hpasid, d))
                try:
                    system.ioasid_ioctl(proc.file, uapi.IOASID_UNBIND_GPASID,
                                        uapi.UNBIND_GPASID.pack(16, 0, hpasid, d))
                except IoasidError:
                    continue

    for op in run.spec.trace:
        engine.schedule(op.time, act, op)


def _replay_alloc(engine: Engine, run: WorkloadRun, proc: _Replay, count: int, counting: bool,
           ) -> None:
    from ioasidsd.experiments.engine import ID_RANGE

    stats = run.stats
    if counting:
        stats.offered += 1
    system = engine.system
    try:
        if proc.file is None:
            proc.file = system.ioasid_open(proc.pid)
        if count == 1:
            result, _ = system.ioasid_ioctl(proc.file, uapi.IOASID_REQUEST_ALLOC,
                                            uapi.ALLOC_REQUEST.pack(16, 0, *ID_RANGE))
            ids = [result]
        else:
            _, out = system.ioasid_ioctl(proc.file, uapi.IOASID_REQUEST_ALLOC_BATCH,
                                         uapi.ALLOC_BATCH.pack(20, 0, *ID_RANGE, count))
            ids = list(array("I", out))
    except IoasidError as exc:
        if proc.file is None:
            level = engine.recorder.refused_open(exc, engine.now)
        else:
            level = engine.recorder.refusal_level(engine.now)
        if counting:
            stats.refused += 1
            stats.refused_by[level] = stats.refused_by.get(level, 0) + 1
        return
    proc.ids.extend(ids)
    if counting:
        stats.admitted += 1
