"""Random operations on a ``System``, named so that they replay identically on an equal copy.

An operation is a tuple of small integers; ``apply_op`` resolves them against the system's
current state (the n-th cgroup path, process, set or IOASID in sorted order), so two systems in
the same state take the same step. Refusals (``IoasidError``) are part of the game: a refused
step must change nothing, and the comparison after it checks that too.
"""

from __future__ import annotations

import contextlib
from errno import ESRCH
from typing import Any

from hypothesis import strategies as st

from ioasidsd.host import ProcessFacts, ProcessSource
from ioasidsd.model import IoasidError, IoasidSetType
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.system import System

NAMES = ("a", "b", "c")
OPS = (
    "mkdir", "rmdir", "rename", "max", "flag", "agent", "move", "fork", "exit", "set_mm",
    "set_null", "alloc", "free", "get", "put", "spid", "unspid", "set_free", "free_all",
    "capacity", "attrs",
)

# allocation needs a process, a set and a limit first: weight the steps that build up state
WEIGHTED = tuple(OPS.index(name) for name in (
    *OPS, "alloc", "alloc", "alloc", "alloc", "move", "move", "set_mm", "set_mm", "max", "max",
    "mkdir",
))
op_strategy = st.tuples(
    st.sampled_from(WEIGHTED), st.integers(0, 7), st.integers(0, 7), st.integers(0, 9)
)
ops_strategy = st.lists(op_strategy, max_size=80)

PROFILES = (
    ("fixed", {}),
    ("v4", {}),
    ("fixed", {"capacity_model": "overcommit", "new_cgroup_max": "max"}),
    ("fixed", {"migration": "stay", "set_lifetime": "auto"}),
)


class FakeProcesses(ProcessSource):
    """Processes that exist because a test says so: pid -> start time."""

    def __init__(self) -> None:
        self.live: dict[int, float] = {}

    def facts(self, pid: int) -> ProcessFacts:
        if pid not in self.live:
            raise IoasidError(ESRCH, f"no process {pid}")
        return ProcessFacts(pid, self.live[pid], (0, 0, 0), pid, 1)

    def all_pids(self) -> list[int]:
        return sorted(self.live)


def _pick(seq: list[Any], i: int) -> Any:
    return seq[i % len(seq)] if seq else None


Touched = Change


def _caller(task: Any) -> tuple[Any, ...]:
    """The processes a face reports for a core call by ``task`` (none in kernel context)."""
    return () if task is None else (task,)


def apply_op(system: System, op: tuple[int, int, int, int]) -> Touched | None:
    """Perform one operation; refusals are swallowed.

    ``System`` methods report their own changes through ``on_change``; for a direct call on the
    core (as the user API and VT-d faces make) this returns the ``Change`` such a face
    would report, refused or not (a refusal may still count an event).
    """
    touched: list[Touched] = []
    with contextlib.suppress(IoasidError):
        _apply(system, op, touched)
    return touched[0] if touched else None


def _apply(system: System, op: tuple[int, int, int, int], touched: list[Touched]) -> None:
    kind, x, y, z = OPS[op[0]], op[1], op[2], op[3]
    core = system.core
    paths = sorted(cg.path for cg in system.cgroups.cgroups())
    pids = sorted(system.cgroups.processes)
    sets = list(core.sets)
    ids = [d.id for d in core.ioasids()]
    procs: FakeProcesses = system.processes  # type: ignore[assignment]
    task = system.cgroups.processes.get(_pick(pids, y)) if pids else None
    s = _pick(sets, x)
    i = _pick(ids, x)
    if kind == "mkdir":
        system.mkdir(_pick(paths, x).rstrip("/") + "/" + NAMES[y % len(NAMES)])
    elif kind == "rmdir":
        system.rmdir(_pick(paths, x))
    elif kind == "rename":
        path = _pick(paths, x)
        parent = path.rpartition("/")[0]
        system.rename(path, parent + "/" + NAMES[y % len(NAMES)])
    elif kind == "max":
        system.write_max(_pick(paths[1:] or paths, x), "max" if z == 9 else str(z + y))
    elif kind == "flag":
        system.write_flag(_pick(paths, x), ("notify_on_release", "cgroup.clone_children")[y % 2],
                          str(z % 2))
    elif kind == "agent":
        system.write_release_agent(f"/bin/agent{z}\n")
    elif kind == "move":
        pid = 100 + x
        if pid not in procs.live:
            procs.live[pid] = float(1000 + len(procs.live))
        system.write_procs(_pick(paths if y == 7 else paths[1:] or paths, y), str(pid),
                           writer_pid=1, writer_uid=0)
    elif kind == "fork":
        parent = _pick(pids, x)
        if parent is not None:
            child = 200 + 10 * y + z
            procs.live[child] = float(5000 + child)
            system.fork(parent, child, procs.live[child])
    elif kind == "exit":
        pid = _pick(pids, x)
        if pid is not None:
            procs.live.pop(pid, None)
            system.exit(pid)
    elif kind in ("set_mm", "set_null"):
        if kind == "set_mm" and task is None:
            return
        with system.lock:
            token = task.mm if kind == "set_mm" else None  # type: ignore[union-attr]
            set_type = IoasidSetType.MM if kind == "set_mm" else IoasidSetType.NULL
            new = core.set_alloc(token, z * (1 if token else 3), set_type)
            touched.append(Change(ChangeKind.SET, sets=(new.id,)))
    elif s is not None and kind == "alloc":
        # what the user API reports: the new IOASID, or on refusal the caller (events, leaks)
        owner = s.token if s.type == IoasidSetType.MM and s.token.alive else None
        if owner is not None and y % 4 != 3:
            task = owner  # mostly the owner allocates; sometimes another process tries
        touched.append(Change(ChangeKind.REFUSED, processes=_caller(task)))
        new_id = core.alloc(s, 1, 40 + z, private=None if z % 3 else {"z": z}, task=task)
        touched[0] = Change(ChangeKind.IOASID, ids=(new_id,), processes=_caller(task))
    elif s is not None and kind in ("set_free", "free_all"):
        touched.append(Change(ChangeKind.SET, sets=(s.id,), processes=_caller(task)))
        if kind == "set_free":
            core.set_free(s, when_empty=bool(y % 2))
        else:
            core.free_all_in_set(s, task=task)
    elif i is not None and kind in ("free", "get", "put", "spid", "unspid"):
        touched.append(Change(ChangeKind.IOASID, ids=(i,), processes=_caller(task)))
        if kind == "free":
            core.free(None if y % 2 else core.find_set(i), i, task=task)
        elif kind == "get":
            core.get(None, i)
        elif kind == "put":
            core.put(None, i, task=task)
        elif kind == "spid":
            core.attach_spid(i, 1000 + y)
        else:
            core.detach_spid(i)
    elif kind == "attrs":
        name = ("", "ioasids.max", "cgroup.procs")[y % 3]
        system.set_attrs(_pick(paths, x), {name: {"mode": 0o600 + z, "uid": 1000 + y}})
    elif kind == "capacity":
        touched.append(Change(ChangeKind.CAPACITY))
        core.install_capacity(50 + 10 * z)
