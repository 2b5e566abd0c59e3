"""The file table: which files a cgroup directory holds, their modes, how each reads and how a
write to it reaches the ``System``.

A non-root cgroup holds the cgroup-v1 core files (``cgroup.procs``, ``tasks``,
``cgroup.clone_children``, ``notify_on_release``) and the controller's ``ioasids.max``,
``ioasids.current``, ``ioasids.peak``, ``ioasids.events`` and ``ioasids.events.local``. The root
holds the core files of a v1 root (``cgroup.procs``, ``tasks``, ``cgroup.clone_children``,
``cgroup.sane_behavior``, ``notify_on_release``, ``release_agent``); outside the ``v4`` profile,
which reproduces the series' ``CFTYPE_NOT_ON_ROOT``, it also holds the read-only
``ioasids.capacity`` and ``ioasids.current`` (like ``misc.capacity`` and ``misc.current``).

Writes follow ``cgroup_file_write`` and kernfs: an empty write does nothing and returns 0; a
write longer than the file's limit (a page; ``PATH_MAX - 1`` for ``release_agent``) is
``E2BIG``; a write to a read-only file is ``EINVAL`` (only root gets that far: the mode refuses
others at open); each write is one value, parsed alone, whatever its offset. Parsing and its
errnos live in the model (``ioasidsd.model.formats``), changes in ``System``.

On a cgroup-v2 hierarchy (``System(hierarchy="v2")``) a cgroup holds the v2 core files
(``cgroup.controllers``, ``cgroup.subtree_control``, ``cgroup.procs``, ``cgroup.threads``,
``cgroup.max.depth``, ``cgroup.max.descendants``, ``cgroup.stat``; a non-root cgroup also
``cgroup.type``, ``cgroup.events``, ``cgroup.freeze``, the write-only ``cgroup.kill`` and
``cgroup.stat.local``) and
the controller's five files exactly where the controller is enabled (its parent's
``cgroup.subtree_control`` names it); the root's controller files are those of v1.

Pure: nothing here knows FUSE; the file system face (``cgroupfs.operations``) resolves paths,
checks that the cgroup still exists, and calls ``read`` and ``write``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from errno import E2BIG, EINVAL, EOPNOTSUPP, EPERM
from types import MappingProxyType

from cgroupfs import pidlists
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.formats import (
    render_capacity,
    render_count,
    render_events,
    render_flag,
    render_hierarchy_limit,
    render_ids,
    render_keyed,
    render_limit,
    render_names,
)
from ioasidsd.model.hierarchy import Cgroup
from ioasidsd.model.unified import UnifiedHierarchy
from ioasidsd.system import System

PAGE_SIZE = 4096
PATH_MAX = 4096


@dataclass(frozen=True, slots=True)
class Writer:
    """Who a write(2) comes from: ``pid``, the thread calling write(2) (what a ``0`` written to
    ``cgroup.procs`` names), and ``uid`` and ``gid``, the credentials the file was **opened**
    with, which every permission check uses, as the kernel uses ``of->file->f_cred``: a
    descriptor passed to another process keeps the rights of its opener, no more, no less."""

    pid: int
    uid: int
    gid: int


Render = Callable[[System, Cgroup], str]
Store = Callable[[System, Cgroup, bytes, Writer], None]


@dataclass(frozen=True, slots=True)
class CgroupFile:
    """One file of a cgroup directory.

    ``render`` produces its text (``None``: write-only, a read is ``EINVAL``, as kernfs
    answers a file without a show method); ``store`` applies a write (``None``: read-only);
    ``max_write`` is the longest write accepted (``E2BIG`` beyond). ``cached``: its text changes
    only by a change the model reports (``System.on_change``) naming its cgroup, one of that
    cgroup's descendants, or none (the root's files), so the kernel may keep it in its page
    cache (``cgroupfs.kernelcache``); ``False`` for the process lists and what depends on them
    (exits may be found only when they are read) and for what a sibling's change alters.
    """

    name: str
    render: Render | None
    store: Store | None = None
    max_write: int = PAGE_SIZE
    cached: bool = True

    @property
    def mode(self) -> int:
        """The permission bits a new cgroup's file has: 0644, 0444 when read-only, 0200 when
        write-only."""
        if self.render is None:
            return 0o200
        return 0o644 if self.store is not None else 0o444


def read(system: System, cg: Cgroup, file: CgroupFile) -> bytes:
    """The current content of ``file`` in ``cg``; ``EINVAL`` for a write-only file."""
    if file.render is None:
        raise IoasidError(EINVAL, f"{file.name} is write-only")
    return file.render(system, cg).encode("utf-8", "surrogateescape")


def write(system: System, cg: Cgroup, file: CgroupFile, data: bytes, writer: Writer) -> int:
    """Apply one write(2) of ``data`` to ``file`` in ``cg``; returns the bytes consumed.

    ``E2BIG`` over the file's limit, ``EINVAL`` for a read-only file, otherwise whatever the
    file's parser and ``System`` raise (``EINVAL``, ``ERANGE``, ``ESRCH``, ``EACCES``, ``ENOSPC``,
    ...), having changed nothing.
    """
    if not data:
        return 0
    if len(data) > file.max_write:
        raise IoasidError(E2BIG, f"{file.name}: a write is at most {file.max_write} bytes")
    if file.store is None:
        raise IoasidError(EINVAL, f"{file.name} is read-only")
    file.store(system, cg, data, writer)
    return len(data)


def unchanged_by_rewrite(system: System) -> frozenset[str]:
    """The names of the files a write of exactly their current text leaves as they are in
    ``system``, with nothing to store and nothing to refuse, whoever writes: the flags (their
    text parses back to the value they hold), and ``ioasids.max`` unless the semantics profile
    refuses the current limit written again (``same_limit_einval``) or makes ``max`` read back
    a number (``reserve-v4``). The mount answers such a write without changing the model
    (``cgroupfs.fastopen``); every other write goes through ``write``."""
    names = {"notify_on_release", "cgroup.clone_children"}
    knobs = system.knobs
    if knobs.capacity_model != "reserve-v4" and not knobs.same_limit_einval:
        names.add("ioasids.max")
    return frozenset(names)


def files_of(system: System, cg: Cgroup) -> Mapping[str, CgroupFile]:
    """The files of ``cg``'s directory, by name."""
    tree = system.cgroups
    if tree.version == 2:
        if cg.parent is None:
            return ROOT_FILES_V2_V4 if system.knobs.profile == "v4" else ROOT_FILES_V2
        if cg.threaded or "ioasids" not in cg.parent.subtree_control:
            return CHILD_CORE_V2
        return CHILD_FILES_V2
    if cg.parent is not None:
        return CHILD_FILES
    return ROOT_FILES_V4 if system.knobs.profile == "v4" else ROOT_FILES


def names_of(system: System, cg: Cgroup) -> frozenset[str]:
    """The file names of ``cg``'s directory: names a child cgroup cannot take (on v2 the
    controller's files too, where they are absent for now)."""
    if system.cgroups.version == 2:
        return CHILD_NAMES_V2 if cg.parent is not None else ROOT_NAMES_V2
    return CHILD_NAMES if cg.parent is not None else frozenset(files_of(system, cg))


# ---------------------------------------------------------------------- renderers
def _procs(system: System, cg: Cgroup) -> str:
    return render_ids(pidlists.procs(system, cg))


def _tasks(system: System, cg: Cgroup) -> str:
    return render_ids(pidlists.tasks(system, cg))


def _clone_children(system: System, cg: Cgroup) -> str:
    return render_flag(cg.clone_children)


def _notify_on_release(system: System, cg: Cgroup) -> str:
    return render_flag(cg.notify_on_release)


def _sane_behavior(system: System, cg: Cgroup) -> str:
    return render_flag(system.cgroups.sane_behavior)


def _release_agent(system: System, cg: Cgroup) -> str:
    return system.cgroups.release_agent + "\n"


def _capacity(system: System, cg: Cgroup) -> str:
    core = system.core
    with system.lock:
        return render_capacity(core.capacity, core.capacity_avail)


def _in_use(system: System, cg: Cgroup) -> str:
    return render_count(len(system.core))


def _max(system: System, cg: Cgroup) -> str:
    return render_limit(cg.limit)


def _current(system: System, cg: Cgroup) -> str:
    return render_count(cg.counter)


def _peak(system: System, cg: Cgroup) -> str:
    return render_count(cg.peak)


def _events(system: System, cg: Cgroup) -> str:
    return render_events(cg.events)


def _events_local(system: System, cg: Cgroup) -> str:
    return render_events(cg.events_local)


def _unified(system: System) -> UnifiedHierarchy:
    tree = system.cgroups
    assert isinstance(tree, UnifiedHierarchy)
    return tree


def _procs_v2(system: System, cg: Cgroup) -> str:
    if cg.threaded:
        raise IoasidError(EOPNOTSUPP, "a threaded cgroup lists threads only (cgroup.threads)")
    with system.lock:
        thread_root = _unified(system).is_thread_root(cg)
    return render_ids(pidlists.procs(system, cg, threaded_subtree=thread_root))


def _controllers(system: System, cg: Cgroup) -> str:
    with system.lock:
        return render_names(_unified(system).controllers_of(cg))


def _subtree_control(system: System, cg: Cgroup) -> str:
    with system.lock:
        return render_names(_unified(system).subtree_control_of(cg))


def _type(system: System, cg: Cgroup) -> str:
    with system.lock:
        return _unified(system).type_of(cg) + "\n"


def _cgroup_events(system: System, cg: Cgroup) -> str:
    with system.lock:
        frozen = _unified(system).frozen(cg)
    return render_keyed([("populated", int(pidlists.populated(system, cg))),
                         ("frozen", int(frozen))])


def _freeze(system: System, cg: Cgroup) -> str:
    return render_flag(cg.freeze)


def _stat_local(system: System, cg: Cgroup) -> str:
    now = time.monotonic_ns()  # the clock System.write_freeze gives the model
    with system.lock:
        frozen = _unified(system).frozen_ns(cg, now)
    return render_keyed([("frozen_usec", frozen // 1000)])


def _max_depth(system: System, cg: Cgroup) -> str:
    return render_hierarchy_limit(cg.max_depth)


def _max_descendants(system: System, cg: Cgroup) -> str:
    return render_hierarchy_limit(cg.max_descendants)


def _cgroup_stat(system: System, cg: Cgroup) -> str:
    tree = _unified(system)
    with system.lock:
        names = tree.controller_names()
        pairs = [("nr_descendants", tree.nr_descendants(cg))]
        pairs += [(f"nr_subsys_{name}", tree.nr_enabled(cg, name)) for name in names]
        pairs.append(("nr_dying_descendants", 0))
        pairs += [(f"nr_dying_subsys_{name}", 0) for name in names]
    return render_keyed(pairs)


# ---------------------------------------------------------------------- write handlers
def _move(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
    system.write_procs(cg.path, data, writer_pid=writer.pid, writer_uid=writer.uid)


def _move_v2(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
    system.write_procs(cg.path, data, writer_pid=writer.pid, writer_uid=writer.uid,
                       writer_gid=writer.gid)


def _move_thread(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
    system.write_procs(cg.path, data, writer_pid=writer.pid, writer_uid=writer.uid,
                       writer_gid=writer.gid, threadgroup=False)


def _set_subtree_control(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
    pidlists.forget_exited(system, cg)  # the no-internal-process rule sees running members
    system.write_subtree_control(cg.path, data)


def _set_type(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
    system.write_cgroup_type(cg.path, data)


def _set_freeze(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
    system.write_freeze(cg.path, data)


def _kill(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
    system.write_kill(cg.path, data)


def _set_hierarchy_limit(name: str) -> Store:
    def store(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
        system.write_hierarchy_limit(cg.path, name, data)

    return store


def _set_flag(name: str) -> Store:
    def store(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
        system.write_flag(cg.path, name, data)

    return store


def _set_release_agent(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
    # Setting the release agent needs CAP_SYS_ADMIN in the initial user namespace, of the file's
    # opener (file_ns_capable): root writing through a descriptor a user opened gets EPERM.
    if writer.uid != 0:
        raise IoasidError(EPERM, "only root may set the release agent")
    system.write_release_agent(data)


def _set_max(system: System, cg: Cgroup, data: bytes, writer: Writer) -> None:
    system.write_max(cg.path, data)


def _table(*files: CgroupFile) -> Mapping[str, CgroupFile]:
    return MappingProxyType({file.name: file for file in files})


_CORE = (
    CgroupFile("cgroup.procs", _procs, _move, cached=False),
    CgroupFile("tasks", _tasks, _move, cached=False),
    CgroupFile("cgroup.clone_children", _clone_children, _set_flag("cgroup.clone_children")),
    CgroupFile("notify_on_release", _notify_on_release, _set_flag("notify_on_release")),
)
_ROOT_CORE = (
    *_CORE,
    CgroupFile("cgroup.sane_behavior", _sane_behavior),
    CgroupFile("release_agent", _release_agent, _set_release_agent, max_write=PATH_MAX - 1),
)

CHILD_FILES = _table(
    *_CORE,
    CgroupFile("ioasids.max", _max, _set_max),
    CgroupFile("ioasids.current", _current),
    CgroupFile("ioasids.peak", _peak),
    CgroupFile("ioasids.events", _events),
    CgroupFile("ioasids.events.local", _events_local),
)
"""A non-root cgroup's files."""

ROOT_FILES = _table(
    *_ROOT_CORE,
    CgroupFile("ioasids.capacity", _capacity),
    CgroupFile("ioasids.current", _in_use),
)
"""The root's files outside the ``v4`` profile: ``ioasids.capacity`` reads ``capacity N`` and
``available M`` (not reserved by limits or set quotas); ``ioasids.current`` the IOASIDs in use
system-wide (every live IOASID, whoever allocated it)."""

ROOT_FILES_V4 = _table(*_ROOT_CORE)
"""The root's files in the ``v4`` profile: no ``ioasids.*`` (``CFTYPE_NOT_ON_ROOT``)."""

CHILD_NAMES = frozenset(CHILD_FILES)

_CORE_V2 = (
    CgroupFile("cgroup.controllers", _controllers),
    CgroupFile("cgroup.subtree_control", _subtree_control, _set_subtree_control),
    CgroupFile("cgroup.procs", _procs_v2, _move_v2, cached=False),
    CgroupFile("cgroup.threads", _tasks, _move_thread, cached=False),
    CgroupFile("cgroup.max.depth", _max_depth, _set_hierarchy_limit("cgroup.max.depth")),
    CgroupFile("cgroup.max.descendants", _max_descendants,
               _set_hierarchy_limit("cgroup.max.descendants")),
    CgroupFile("cgroup.stat", _cgroup_stat),
)
_CONTROLLER = (
    CgroupFile("ioasids.max", _max, _set_max),
    CgroupFile("ioasids.current", _current),
    CgroupFile("ioasids.peak", _peak),
    CgroupFile("ioasids.events", _events),
    CgroupFile("ioasids.events.local", _events_local),
)
_ROOT_CONTROLLER = (
    CgroupFile("ioasids.capacity", _capacity),
    CgroupFile("ioasids.current", _in_use),
)

CHILD_CORE_V2 = _table(
    *_CORE_V2,
    CgroupFile("cgroup.type", _type, _set_type, cached=False),
    CgroupFile("cgroup.events", _cgroup_events, cached=False),
    CgroupFile("cgroup.freeze", _freeze, _set_freeze),
    CgroupFile("cgroup.kill", None, _kill, cached=False),
    CgroupFile("cgroup.stat.local", _stat_local, cached=False),
)
"""A non-root cgroup's files on v2 where the controller is not enabled."""

CHILD_FILES_V2 = _table(*CHILD_CORE_V2.values(), *_CONTROLLER)
"""A non-root cgroup's files on v2 where the controller is enabled."""

ROOT_FILES_V2 = _table(*_CORE_V2, *_ROOT_CONTROLLER)
"""The v2 root's files outside the ``v4`` profile (the controller's as on v1)."""

ROOT_FILES_V2_V4 = _table(*_CORE_V2)
"""The v2 root's files in the ``v4`` profile."""

CHILD_NAMES_V2 = frozenset(CHILD_FILES_V2)
ROOT_NAMES_V2 = frozenset(ROOT_FILES_V2) | CHILD_NAMES_V2
"""Names a child of the v2 root cannot take: the root's files (in either profile) and those a
child may have."""

_TABLES = (CHILD_FILES, ROOT_FILES, ROOT_FILES_V4, CHILD_CORE_V2, CHILD_FILES_V2, ROOT_FILES_V2,
           ROOT_FILES_V2_V4)
UNCACHED_NAMES = frozenset(f.name for table in _TABLES for f in table.values() if not f.cached)
"""The names of the files the kernel may not cache (``CgroupFile.cached``), in any directory: a
name is cached everywhere or nowhere, so an ``open`` can decide by the name alone."""
assert not UNCACHED_NAMES & {f.name for table in _TABLES for f in table.values() if f.cached}
