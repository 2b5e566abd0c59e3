"""Slices realised in the hierarchy: their cgroups and limits, and the verbs that use them.

``SliceManager`` is the one place where slices change the hierarchy, and it changes it only
through ``System`` methods. The contract:

- ``load()`` (at the daemon's start, before it is ready; on ``daemon-reload`` and SIGHUP)
  reads every slice with a unit file or drop-ins in a directory of the search path, and every
  slice whose cgroup is in the hierarchy already (made by an earlier load, or by use). Each
  one is realised: its ancestors' cgroups and its own are made, parents first, and its limit
  is written: its ``IOASIDsMax=`` (or ``X-IOASIDsMax=``) resolved against the capacity, or
  the default (``[units] default_ioasids_max``) when it sets none. The limits are written
  parents first, and those the model refuses then are tried again children first (a parent
  lowered below a child's limit), so that the order of the files does not matter.
- A slice whose file has a bad name, cannot be read, holds a junk ``IOASIDsMax=`` or a limit
  the model refuses (``ENOSPC``, ``EBUSY``...) is failed: one error line in the log naming the
  file and, where there is one, the line; its cgroup keeps the limit it had; ``slice list``
  and ``slice status`` show it failed with that message. A failed unit's cgroup is not made
  for it (it is made when a slice below it needs it). ``load`` never raises for bad input.
- A cgroup that membership following the host's hierarchy makes (``realise_followed``, the
  ``System``'s hook: a process was found in a host cgroup this hierarchy lacks) gets the limit
  its unit would: a slice's cgroup its ``IOASIDsMax=`` and drop-ins (a slice named by use) or
  the default, any other unit's cgroup (``NAME.scope``, ``NAME.service``...) the default; a
  directory that names no unit keeps the knobs' ``new_cgroup_max``, as after a ``mkdir``. A
  limit that cannot be set is logged (the slice failed, as above), and the cgroup is made all
  the same: a process is in it.
- A transient scope is a ``NAME.scope`` cgroup directly in a slice's cgroup (``run`` makes
  them; one that following made goes with the host's instead, see ``System``). When its last
  process exits or moves out, it is removed (``note_change``, called
  with every change, wakes the reaper thread started by ``start``); at the daemon's start
  (``load(sweep=True)``) the empty ones left by an earlier run are removed.
- ``set_property`` writes ``50-IOASIDsMax.conf`` in the slice's drop-in directory of the
  first control directory (persistent) or, with ``runtime``, of the second (a runtime
  directory, emptied at reboot), as ``X-IOASIDsMax=VALUE`` (the spelling systemd passes over
  silently), and applies the value at once. A value the model refuses changes nothing: the
  file is put back as it was.

Requests from callers other than root are judged as the mount judges the same user: a
limit may be changed by whoever may write the slice cgroup's ``ioasids.max``; only root
makes slices. Errors are ``IoasidError``s with an errno and a message naming the unit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.hierarchy import Cgroup
from ioasidsd.slices.limits import (
    PROPERTY_KEYS,
    ConfiguredLimit,
    InvalidIOASIDsMax,
    IOASIDsMax,
    configured_ioasids_max,
    parse_ioasids_max,
)
from ioasidsd.slices.names import (
    ROOT_SLICE,
    InvalidUnitName,
    check_slice_name,
    check_unit_name,
    escape_cgroup_component,
    slice_ancestors,
    slice_to_cgroup_path,
)
from ioasidsd.slices.units import SearchPath, Unit, load_unit
from ioasidsd.system import System, made_by_following

__all__ = ["DEFAULT_SCOPE_SLICE", "DROPIN_NAME", "LIMIT_FILE", "LIMIT_FILE_MODE",
           "SliceManager", "SliceState"]

DEFAULT_SCOPE_SLICE = "system.slice"
"""Where ``run`` puts a scope without ``--slice``, as systemd-run does."""
DROPIN_NAME = "50-IOASIDsMax.conf"
"""The drop-in ``set_property`` writes (one file per property, as systemctl names them)."""
LIMIT_FILE = "ioasids.max"
LIMIT_FILE_MODE = 0o644
"""The mode of an ``ioasids.max`` whose mode nobody changed (``cgroupfs.files`` serves it so,
owned by root): what a caller other than root is judged by."""
REAP_RETRIES = 50
REAP_RETRY_DELAY = 0.1
"""A scope the kernel still holds busy after its last exit is tried again this many times,
this many seconds apart."""
_REFUSAL_PASSES = 4
"""How many times the limits the model refused are tried again, alternating the order."""


def _limit_text(limit: int | None) -> str:
    return "max" if limit is None else str(limit)


def _where(source: Any) -> str:
    """``FILE:LINE`` of an assignment, or the configuration key of the default."""
    if source is None:
        return "[units] default_ioasids_max"
    return f"{source.path}:{source.line}"


@dataclass
class SliceState:
    """What the last load (or use) found for one slice."""

    name: str
    cgroup: str
    unit: Unit | None = None
    configured: ConfiguredLimit | None = None
    failure: str | None = None
    """Why the slice is failed (``FILE:LINE: reason``), None if it is not."""
    file: str | None = None
    line: int | None = None
    bad_name: bool = False
    diagnostics: list[str] = field(default_factory=list)

    @property
    def load_state(self) -> str:
        """systemctl's LOAD column: ``loaded``, ``not-found``, ``masked``, ``bad-setting``
        (a junk value) or ``error`` (a bad name, a file that cannot be read or parsed)."""
        unit = self.unit
        if self.bad_name or (unit is not None and unit.failure is not None):
            return "error"
        if unit is not None and unit.masked:
            return "masked"
        if self.failure is not None and self.configured is None:
            return "bad-setting"
        if unit is not None and unit.loaded:
            return "loaded"
        return "not-found"


class SliceManager:
    """The slices of one ``System``, read along ``search``, with ``default`` for a slice that
    sets no limit. ``log`` takes ``info``/``warning``/``error(message, **fields)``."""

    def __init__(self, system: System, search: SearchPath, default: IOASIDsMax, log: Any
                 ) -> None:
        self.system = system
        self.search = search
        self.default = default
        self.log = log
        self.states: dict[str, SliceState] = {}
        self._lock = threading.Lock()  # one load or set-property at a time
        self._scope_counter = 0
        self._pending: set[str] = set()
        self._wake = threading.Condition()
        self._reaper: threading.Thread | None = None
        self._stopping = False
        self.scope_removed: Callable[[str], None] = lambda path: None
        """Called under the system lock with the path of an empty scope before the reaper
        removes it; ``OSError`` ``EBUSY`` to have it tried again later. The daemon that
        follows the host's hierarchy removes the host's scope of that path there (``run``
        made it)."""

    # ------------------------------------------------------------------ configuration
    def configure(self, search: SearchPath, default: IOASIDsMax) -> None:
        """New search path and default (a reload of the daemon's configuration); the next
        ``load`` uses them."""
        self.search = search
        self.default = default

    def _discover(self) -> tuple[set[str], dict[str, Path]]:
        """The slice names with a unit file or drop-in directory along the search path, and
        the names found there that are not valid slice names (name -> file)."""
        names: set[str] = set()
        bad: dict[str, Path] = {}
        for directory in self.search.directories:
            try:
                entries = sorted(os.listdir(directory))
            except OSError:
                continue
            for entry in entries:
                if entry.endswith(".slice"):
                    name = entry
                elif entry.endswith(".slice.d"):
                    name = entry[:-2]
                    if name != ROOT_SLICE and name[:-len(".slice")].endswith("-"):
                        continue  # the drop-ins of every slice with that prefix
                else:
                    continue
                try:
                    names.add(check_slice_name(name))
                except InvalidUnitName:
                    bad.setdefault(name, directory / entry)
        return names, bad

    def _realised(self) -> set[str]:
        """The slices whose cgroups are in the hierarchy (under the system lock)."""
        found: set[str] = set()
        stack = [self.system.cgroups.root]
        while stack:
            cg = stack.pop()
            for child in cg.children.values():
                name = _slice_of(child)
                if name is not None:
                    found.add(name)
                    stack.append(child)
        return found

    # ------------------------------------------------------------------ load
    def load(self, *, sweep: bool = False) -> dict[str, int]:
        """Read every unit and realise the slices (see the module's documentation); with
        ``sweep``, remove the transient scopes left empty. Returns counts for the log:
        ``slices``, ``failed``."""
        with self._lock:
            names, bad = self._discover()
            with self.system.lock:
                names |= self._realised()
            for name in list(names):  # a slice's ancestors are realised with it
                names.update(slice_ancestors(name))
            states: dict[str, SliceState] = {}
            for name, path in sorted(bad.items()):
                state = SliceState(name, "", bad_name=True, file=str(path))
                try:
                    check_slice_name(name)
                except InvalidUnitName as exc:
                    state.failure = f"{path}: {exc}"
                states[name] = state
                self._fail(state)
            wanted: list[SliceState] = []
            for name in sorted(names, key=lambda n: (n.count("-"), n)):
                state = self._read(name)
                states[name] = state
                if state.failure is None and not (state.unit and state.unit.masked):
                    wanted.append(state)
                elif state.failure is not None:
                    self._fail(state)
            self._realise(wanted)
            with self.system.lock:  # what following made meanwhile (realise_followed)
                for name, state in self.states.items():
                    if name not in states and self._exists(slice_to_cgroup_path(name)):
                        states[name] = state
                self.states = states
            if sweep:
                self._sweep()
            return {"slices": len(self.states),
                    "failed": sum(1 for s in self.states.values() if s.failure)}

    def _read(self, name: str) -> SliceState:
        """Load unit ``name`` and its configured limit, without changing anything."""
        state = SliceState(name, slice_to_cgroup_path(name))
        unit = load_unit(name, self.search)
        state.unit = unit
        for diag in unit.diagnostics:
            state.diagnostics.append(str(diag))
            self.log.warning(f"{diag}", unit=name, file=str(diag.path), line=diag.line)
        if unit.failure is not None:
            state.failure = unit.failure
            path, _, _rest = unit.failure.partition(": ")
            file, _, line = path.partition(":")
            state.file, state.line = file, int(line) if line.isdigit() else None
            return state
        try:
            state.configured = configured_ioasids_max(unit, self.default)
        except InvalidIOASIDsMax as exc:
            state.failure = str(exc)
            head = str(exc).split(": ", 1)[0]
            file, _, line = head.rpartition(":")
            state.file, state.line = file, int(line) if line.isdigit() else None
        return state

    def _fail(self, state: SliceState) -> None:
        self.log.error(f"slice {state.name}: {state.failure}; its limit is unchanged",
                       unit=state.name, file=state.file, line=state.line)

    def _exists(self, path: str) -> bool:
        if not path:
            return False
        with self.system.lock:
            try:
                self.system.cgroups.lookup(path)
            except IoasidError:
                return False
            return True

    def _make(self, name: str) -> None:
        """Make the cgroups of slice ``name`` and its ancestors that are missing; refused
        with the model's errno."""
        for ancestor in slice_ancestors(name):
            path = slice_to_cgroup_path(ancestor)
            if not self._exists(path):
                self.system.mkdir(path)
                self.log.info("slice realised", unit=ancestor, cgroup=path)

    def _realise(self, states: list[SliceState]) -> None:
        """Make the cgroups of ``states`` (parents first) and write their limits."""
        capacity = self.system.core.capacity
        todo: list[tuple[SliceState, int | None]] = []
        for state in states:
            assert state.configured is not None
            if state.name == ROOT_SLICE:
                if state.configured.source is not None and \
                        state.configured.value.resolve(capacity) is not None:
                    state.failure = (f"{_where(state.configured.source)}: "
                                     f"{state.configured.source.key}="
                                     f"{state.configured.source.value}: the root slice has no "
                                     f"limit (the root cgroup has no {LIMIT_FILE})")
                    state.file = str(state.configured.source.path)
                    state.line = state.configured.source.line
                    self._fail(state)
                continue
            try:
                self._make(state.name)
            except IoasidError as exc:
                state.failure = f"{state.cgroup}: cannot make its cgroup: {exc.strerror}"
                self._fail(state)
                continue
            todo.append((state, state.configured.value.resolve(capacity)))
        refused: dict[str, IoasidError] = {}
        for attempt in range(_REFUSAL_PASSES):
            order = todo if attempt % 2 == 0 else list(reversed(todo))
            refused = {}
            for state, limit in order:
                try:
                    self._write_limit(state.cgroup, limit)
                except IoasidError as error:
                    refused[state.name] = error
            todo = [(s, limit) for s, limit in todo if s.name in refused]
            if not todo:
                break
        for state, limit in todo:
            refusal = refused[state.name]
            configured = state.configured
            assert configured is not None
            source = configured.source
            spelled = f"{source.key}={source.value}" if source is not None else \
                f"= {configured.value}"
            state.failure = (f"{_where(source)}: {spelled}: the limit {_limit_text(limit)} is "
                             f"refused: {refusal.strerror} "
                             f"({errno.errorcode.get(refusal.errno or 0, 'EIO')})")
            state.file = None if source is None else str(source.path)
            state.line = None if source is None else source.line
            self._fail(state)

    def _realise_missing(self, name: str) -> SliceState:
        """Realise slice ``name`` and those of its ancestors whose cgroups are missing, each
        with its own configuration (a slice named by use); ``EINVAL`` naming the failure
        when the slice cannot be realised."""
        missing = [self._read(a) for a in slice_ancestors(name)
                   if not self._exists(slice_to_cgroup_path(a))]
        for state in missing:
            if state.failure is not None:
                self._fail(state)
        self._realise([s for s in missing if s.failure is None])
        for state in missing:
            self.states[state.name] = state
        failed = [s for s in missing if s.failure is not None]
        if failed:
            raise IoasidError(errno.EINVAL, f"{failed[0].name}: {failed[0].failure}")
        return self.states.get(name) or self._read(name)

    def realise_followed(self, path: str) -> Cgroup:
        """``System.realise_followed``: make each missing level of ``path`` with the limit its
        unit gives it (see the module's documentation) and return the cgroup at ``path``.
        Called under the system lock: reads unit files, takes no lock of the manager's (a
        load holds that one while it waits for the system lock). ``IoasidError`` with the
        model's errno when a level cannot be made."""
        system = self.system
        with system.lock:
            cg = system.cgroups.root
            for name in path.strip("/").split("/"):
                child = cg.children.get(name)
                if child is None:
                    child = system.mkdir(f"{cg.path.rstrip('/')}/{name}")
                    self._limit_followed(child)
                cg = child
            return cg

    def _limit_followed(self, cg: Cgroup) -> None:
        """Write the limit of the unit whose cgroup ``cg`` is, just made by following (under
        the system lock); log what cannot be set."""
        name = _slice_of(cg)
        if name is not None:
            state = self._read(name)
            self.states[name] = state
            if state.failure is not None:
                self._fail(state)
            else:
                self._realise([state])  # its cgroup exists: this writes its limit
            return
        if _unit_of(cg) is None:
            return
        limit = self.default.resolve(self.system.core.capacity)
        try:
            self._write_limit(cg.path, limit)
        except IoasidError as refusal:
            self.log.error(f"{cg.path}: [units] default_ioasids_max = {self.default}: the "
                           f"limit {_limit_text(limit)} is refused: {refusal.strerror}; "
                           f"its limit is unchanged", cgroup=cg.path)

    def _enable_below(self, path: str) -> None:
        """On a cgroup-v2 hierarchy, enable the controller for the children of the cgroup at
        ``path`` (its ``cgroup.subtree_control``), as systemd enables the controllers a unit
        below needs, so that a scope made there has its ``ioasids.max``."""
        system = self.system
        with system.lock:
            if system.cgroups.version != 2:
                return
            cg = system.cgroups.lookup(path)
            if "ioasids" in cg.subtree_control:
                return
            system.write_subtree_control(cg.path, "+ioasids")

    def _write_limit(self, path: str, limit: int | None) -> None:
        """Write ``limit`` to the cgroup at ``path`` unless it holds it already (on a
        cgroup-v2 hierarchy, enabling the controller in its parent first)."""
        system = self.system
        with system.lock:
            cg = system.cgroups.lookup(path)
            if cg.parent is not None:
                self._enable_below(cg.parent.path)
            if cg.limit == limit:
                return
            system.write_max(path, _limit_text(limit))

    # ------------------------------------------------------------------ list, status
    def _state(self, name: str) -> SliceState:
        """The state of slice ``name``: the last load's, or read now for a name that it did
        not see. ``EINVAL`` for a name that is not a slice's and no file has."""
        state = self.states.get(name)
        if state is not None:
            return state
        try:
            check_slice_name(name)
        except InvalidUnitName as exc:
            raise IoasidError(errno.EINVAL, str(exc)) from None
        return self._read(name)

    def _row(self, state: SliceState) -> dict[str, Any]:
        """A slice's fields as ``slice list`` and ``slice status`` show them (under the
        system lock)."""
        cg: Cgroup | None = None
        if state.cgroup:
            with contextlib.suppress(IoasidError):
                cg = self.system.cgroups.lookup(state.cgroup)
        configured = state.configured
        if cg is None:
            active = "failed" if state.failure else "inactive"
        else:
            active = "failed" if state.failure else "active"
        procs = 0 if cg is None else sum(len(c.procs) for c in cg.descendants())
        return {
            "unit": state.name,
            "cgroup": state.cgroup or None,
            "load": state.load_state,
            "active": active,
            "configured": None if configured is None else str(configured.value),
            "max": None if cg is None or cg.parent is None else cg.limit,
            "current": None if cg is None else
            (len(self.system.core) if cg.parent is None else cg.counter),
            "procs": procs,
            "error": state.failure,
        }

    def slices(self) -> list[dict[str, Any]]:
        """Every slice the last load saw (and those realised since), by name."""
        states = dict(self.states)  # a load or set-property may replace entries meanwhile
        with self.system.lock:
            return [self._row(state) for _, state in sorted(states.items())]

    def status(self, name: str) -> dict[str, Any]:
        """One slice in full: ``list``'s fields, the unit file and drop-ins, where the
        configured limit comes from, the effective limit (the lowest along its cgroup's
        ancestors), peak, events, the diagnostics, and the pids of its processes and those
        of the cgroups below it (with their cgroup)."""
        state = self._state(name)
        unit = state.unit
        with self.system.lock:
            row = self._row(state)
            cg: Cgroup | None = None
            if state.cgroup:
                with contextlib.suppress(IoasidError):
                    cg = self.system.cgroups.lookup(state.cgroup)
            limits = [] if cg is None else [c.limit for c in (cg, *cg.chain)
                                            if c.parent is not None and c.limit is not None]
            procs = [] if cg is None else sorted(
                (p.pid, c.path) for c in cg.descendants() for p in c.procs)
            row.update({
                "fragment": None if unit is None or unit.fragment is None
                else str(unit.fragment),
                "dropins": [] if unit is None else [str(p) for p in unit.dropins],
                "source": None if state.configured is None
                else (None if state.configured.source is None
                      else _where(state.configured.source)),
                "effective": min(limits) if limits else None,
                "peak": None if cg is None or cg.parent is None else cg.peak,
                "events": None if cg is None or cg.parent is None else cg.events,
                "diagnostics": list(state.diagnostics),
                "processes": [{"pid": pid, "cgroup": path} for pid, path in procs],
            })
        return row

    # ------------------------------------------------------------------ set-property
    def may_write_limit(self, path: str, uid: int, gid: int) -> bool:
        """Whether a caller with ``uid`` and ``gid`` may write the ``ioasids.max`` of the
        cgroup at ``path``, as the mount decides it from the file's recorded mode and owner
        (``LIMIT_FILE_MODE`` and root when nobody changed them). False for no such cgroup."""
        if uid == 0:
            return True
        with self.system.lock:
            try:
                cg = self.system.cgroups.lookup(path)
            except IoasidError:
                return False
            attrs = cg.attrs.get(LIMIT_FILE, {})
        mode = attrs.get("mode", LIMIT_FILE_MODE)
        if attrs.get("uid", 0) == uid:
            return bool(mode & 0o200)
        if attrs.get("gid", 0) == gid:
            return bool(mode & 0o020)
        return bool(mode & 0o002)

    def set_property(self, name: str, assignments: list[str], *, runtime: bool, uid: int,
                     gid: int) -> dict[str, Any]:
        """``set-property [--runtime] NAME IOASIDsMax=VALUE...``: write the drop-in and apply
        the value (see the module's documentation). ``EINVAL`` for a name that is not a
        slice's, an unknown property or a junk value; ``EACCES`` for a caller other than
        root who may not write the slice's ``ioasids.max`` (or whose slice has no cgroup);
        the model's errno (``ENOSPC``, ``EBUSY``...) for a limit it refuses, and then nothing
        is changed; ``EIO`` when the drop-in cannot be written. Returns the drop-in's path
        and the slice's ``status``."""
        try:
            check_slice_name(name)
        except InvalidUnitName as exc:
            raise IoasidError(errno.EINVAL, f"{exc} (set-property takes a slice)") from None
        if not assignments:
            raise IoasidError(errno.EINVAL, "no property given")
        value: IOASIDsMax | None = None
        text = ""
        for assignment in assignments:
            text, value = _property(assignment, "", "slice")
        cgroup = slice_to_cgroup_path(name)
        if name == ROOT_SLICE:
            raise IoasidError(errno.EINVAL, f"{name}: the root slice has no limit")
        if not self.may_write_limit(cgroup, uid, gid):
            raise IoasidError(errno.EACCES, f"{name}: may not change its limit (the "
                                            f"{LIMIT_FILE} of {cgroup} is not writable by "
                                            f"uid {uid})")
        directories = self.search.control_path
        if len(directories) < 2:
            raise IoasidError(errno.EIO, "[units] control_path names no directory for "
                                         "set-property")
        dropin = directories[1 if runtime else 0] / f"{name}.d" / DROPIN_NAME
        with self._lock:
            try:
                old: bytes | None = dropin.read_bytes()
            except FileNotFoundError:
                old = None
            except OSError as exc:
                raise IoasidError(errno.EIO, f"{dropin}: {exc.strerror}") from None
            self._write_file(dropin, _dropin_text(text).encode())
            try:
                state = self._read(name)
                if state.failure is not None:
                    raise IoasidError(errno.EINVAL, state.failure)
                assert state.configured is not None
                if value is not None:  # the value given, whichever file outranks this one
                    state.configured = ConfiguredLimit(value, state.configured.source)
                capacity = self.system.core.capacity
                if not self._exists(cgroup):
                    self._realise_missing(name)
                self._write_limit(cgroup, state.configured.value.resolve(capacity))
            except BaseException:
                if old is None:
                    with contextlib.suppress(OSError):
                        dropin.unlink()
                else:
                    with contextlib.suppress(IoasidError):
                        self._write_file(dropin, old)
                raise
            self.states[name] = state
        self.log.info("property set", unit=name, property="IOASIDsMax",
                      value=text or "(default)", dropin=str(dropin), uid=uid)
        return {"dropin": str(dropin), "status": self.status(name)}

    @staticmethod
    def _write_file(path: Path, data: bytes) -> None:
        """Replace ``path`` with ``data`` in one step (a new file renamed over it)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as exc:
            raise IoasidError(errno.EIO, f"{path}: cannot write the drop-in: "
                                         f"{exc.strerror or exc}") from None

    # ------------------------------------------------------------------ run
    def prepare_scope(self, slice_name: str | None, unit: str | None, properties: list[str],
                      *, uid: int) -> dict[str, Any]:
        """What ``run`` needs to start a transient scope: the slice (default
        ``system.slice``) realised with its drop-ins (only root makes a slice that has no
        cgroup yet: ``EACCES`` for another caller), the scope's unit name (``unit``, with
        ``.scope`` added when it has no type; else ``run-u<N>.scope``, unused), its cgroup
        path and the ``ioasids.max`` to write into it (the ``IOASIDsMax=`` of
        ``properties``, else the default). The caller makes the cgroup through the mount,
        as the user it is. ``EINVAL`` for bad names or properties, ``EEXIST`` for a scope
        that exists."""
        slice_name = slice_name or DEFAULT_SCOPE_SLICE
        try:
            check_slice_name(slice_name)
        except InvalidUnitName as exc:
            raise IoasidError(errno.EINVAL, f"--slice: {exc}") from None
        limit = self.default
        for assignment in properties:
            given = _property(assignment, "-p ", "scope")[1]
            limit = self.default if given is None else given
        slice_path = slice_to_cgroup_path(slice_name)
        with self._lock:
            if not self._exists(slice_path):
                if uid != 0:
                    raise IoasidError(errno.EACCES, f"{slice_name} has no cgroup yet, and "
                                                    f"only root may make a slice")
                self._realise_missing(slice_name)
            taken = self._scope_names()
            if unit:
                if "." not in unit:
                    unit += ".scope"
                try:
                    check_unit_name(unit)
                except InvalidUnitName as exc:
                    raise IoasidError(errno.EINVAL, f"--unit: {exc}") from None
                if not unit.endswith(".scope"):
                    raise IoasidError(errno.EINVAL, f"--unit: {unit!r}: run makes a scope "
                                                    f"(NAME.scope)")
                if unit in taken:
                    raise IoasidError(errno.EEXIST, f"{unit}: a scope of that name exists")
            else:
                while True:
                    self._scope_counter += 1
                    unit = f"run-u{self._scope_counter}.scope"
                    if unit not in taken:
                        break
        self._enable_below(slice_path)
        prefix = "" if slice_path == "/" else slice_path
        return {"unit": unit, "slice": slice_name, "slice_cgroup": slice_path,
                "cgroup": f"{prefix}/{escape_cgroup_component(unit)}",
                "ioasids_max": _limit_text(limit.resolve(self.system.core.capacity))}

    def _scope_names(self) -> set[str]:
        """The names of the scopes in slices now."""
        with self.system.lock:
            return {cg.name for cg in self._scopes()}

    def _scopes(self) -> list[Cgroup]:
        """The transient scopes: ``.scope`` cgroups directly in a slice, the root slice's
        cgroup (the root) included (under the lock)."""
        found: list[Cgroup] = []
        stack = [self.system.cgroups.root]
        while stack:
            cg = stack.pop()
            for child in cg.children.values():
                if _slice_of(child) is not None:
                    stack.append(child)
                elif child.name.endswith(".scope"):
                    found.append(child)
        return found

    # ------------------------------------------------------------------ the reaper
    def note_change(self, change: Change) -> None:
        """Called with every change (under the system lock): a scope a process left is
        looked at by the reaper thread."""
        if change.kind is ChangeKind.EXIT:
            left = [proc.cgroup for proc in change.processes]
        elif change.kind is ChangeKind.ATTACH:
            left = list(change.cgroups)
        else:
            return
        scopes = [cg.path for cg in left if cg.name.endswith(".scope") and
                  cg.parent is not None and (cg.parent.parent is None or
                                             _slice_of(cg.parent) is not None) and
                  not cg.procs and not cg.children and not made_by_following(cg)]
        if scopes:
            with self._wake:
                self._pending.update(scopes)
                self._wake.notify()

    def start(self) -> None:
        """Start the reaper thread."""
        self._stopping = False
        self._reaper = threading.Thread(target=self._reap_loop, name="scope-reaper",
                                        daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        """Stop the reaper thread once it has looked at the scopes it was told of
        (idempotent)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._reaper is not None:
            self._reaper.join()
            self._reaper = None

    def _reap_loop(self) -> None:
        retries: dict[str, int] = {}
        while True:
            with self._wake:
                if not self._pending and not self._stopping:
                    self._wake.wait(REAP_RETRY_DELAY if retries else None)
                if not self._pending and self._stopping:
                    return  # stopping, with nothing left to look at
                paths, self._pending = self._pending | set(retries), set()
            for path in sorted(paths):
                if self._remove_scope(path):
                    retries[path] = retries.get(path, 0) + 1
                    if retries[path] < REAP_RETRIES:
                        continue
                    self.log.error("an empty scope cannot be removed: the kernel keeps it busy",
                                   cgroup=path)
                retries.pop(path, None)

    def _remove_scope(self, path: str) -> bool:
        """Remove the scope at ``path`` if it is still empty. True when it should be tried
        again: the model has it empty but the kernel (which keeps membership) still has it
        busy, as it may for a moment after an exit. Never raises."""
        try:
            with self.system.lock:
                cg = self.system.cgroups.lookup(path)
                if cg.procs or cg.children:
                    return False
                try:
                    self.scope_removed(path)
                except OSError as exc:
                    if exc.errno == errno.EBUSY:
                        return True
                    raise
                self.system.rmdir(path)
            self.log.info("scope removed", unit=cg.name, cgroup=path)
        except IoasidError as exc:  # gone already, or a process came in meanwhile
            return exc.errno == errno.EBUSY
        except Exception as exc:  # the reaper must outlive any surprise
            self.log.error("a scope cannot be removed", cgroup=path, error=str(exc))
        return False

    def _sweep(self) -> None:
        """Remove the empty scopes (at start: those an earlier run left)."""
        with self.system.lock:
            empty = [cg.path for cg in self._scopes()
                     if not cg.procs and not cg.children and not made_by_following(cg)]
        for path in empty:
            self._remove_scope(path)


def _unit_of(cg: Cgroup) -> str | None:
    """The name of the unit whose cgroup ``cg`` would be (its directory's name, unescaped),
    or None when that is no valid unit name."""
    name = cg.name
    if name.startswith("_") and escape_cgroup_component(name[1:]) == name:
        name = name[1:]
    try:
        return check_unit_name(name)
    except InvalidUnitName:
        return None


def _slice_of(cg: Cgroup) -> str | None:
    """The slice whose cgroup ``cg`` is, or None."""
    name = _unit_of(cg)
    if name is None or name == ROOT_SLICE:
        return None
    try:
        check_slice_name(name)
    except InvalidUnitName:
        return None
    if slice_to_cgroup_path(name) != cg.path:
        return None
    return name


def _property(assignment: str, shown: str, kind: str) -> tuple[str, IOASIDsMax | None]:
    """The text and value of the assignment ``IOASIDsMax=VALUE`` (or ``X-IOASIDsMax=``) given
    to a unit of ``kind`` (``slice``, ``scope``); the value ``None`` for the empty assignment,
    which means the default. ``EINVAL``, its message starting with ``shown`` (the option
    that gave it), for another property or a junk value."""
    key, sep, text = assignment.partition("=")
    if not sep or key not in PROPERTY_KEYS:
        raise IoasidError(errno.EINVAL, f"{shown}{assignment!r}: unknown property (a {kind} "
                                        f"takes IOASIDsMax=)")
    try:
        return text, None if text == "" else parse_ioasids_max(text)
    except InvalidIOASIDsMax as exc:
        raise IoasidError(errno.EINVAL, f"{shown}{exc}") from None


def _dropin_text(value: str) -> str:
    return ("# Written by ioasidctl set-property: the next set-property of this property "
            "replaces it.\n"
            f"[Slice]\nX-IOASIDsMax={value}\n")
