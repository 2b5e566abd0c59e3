"""``ioasidctl snapshot`` and ``restore``: the hierarchy, its limits and flags as a TOML file.

The file (schema 1)::

    schema = 1

    ["/"]
    "cgroup.clone_children" = "0"
    notify_on_release = "0"
    release_agent = ""

    ["/vms"]
    "cgroup.clone_children" = "0"
    "ioasids.max" = "10"
    notify_on_release = "0"

A table per cgroup, named by its path, parents before children (in name order); its keys are
the control files that hold settings and that the cgroup has (``SETTINGS``: those of a v1
hierarchy, and of a v2 one: ``cgroup.subtree_control``, ``cgroup.max.depth``,
``cgroup.max.descendants``), their values the files' text without the final newline. Counters
and processes are not part of it. ``subtree_control_write`` turns a wanted
``cgroup.subtree_control`` into the ``+name -name`` write that makes it.
The same hierarchy always gives the same bytes, so ``restore`` of a ``snapshot`` on an empty
daemon gives a hierarchy whose ``snapshot`` is identical.

Reading the mount and planning are here; the writes are the command's (``ioasidsd.cli.ctl``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["SCHEMA", "SETTINGS", "SUBTREE_CONTROL", "SnapshotFileError", "Step", "dump", "load",
           "plan", "read_tree", "subtree_control_write"]

SCHEMA = 1
SUBTREE_CONTROL = "cgroup.subtree_control"
SETTINGS = ("cgroup.clone_children", "cgroup.max.depth", "cgroup.max.descendants",
            SUBTREE_CONTROL, "ioasids.max", "notify_on_release", "release_agent")
"""The control files a snapshot keeps, where a cgroup has them (v1: the flags, the root's
release agent and ``ioasids.max``; v2: the controllers enabled below, the tree limits and
``ioasids.max``)."""

Tree = dict[str, dict[str, str]]


class SnapshotFileError(Exception):
    """A snapshot file that cannot be read or a hierarchy that cannot be read: the message
    says which and why."""


FRESH_ROOT = {"cgroup.clone_children": "0", "cgroup.max.depth": "max",
              "cgroup.max.descendants": "max", SUBTREE_CONTROL: "", "notify_on_release": "0",
              "release_agent": ""}
"""What the root of a new hierarchy holds: restoring over these is no conflict (the root
always exists, and a new daemon's is not a configured one)."""


def subtree_control_write(have: str, wanted: str) -> str:
    """The write to ``cgroup.subtree_control`` that turns its reading ``have`` into
    ``wanted`` (both space-separated controller names): ``+name`` for each to enable,
    ``-name`` for each to disable."""
    old, new = set(have.split()), set(wanted.split())
    return " ".join([*(f"+{n}" for n in sorted(new - old)), *(f"-{n}" for n in sorted(old - new))])


def read_tree(mount: Path) -> Tree:
    """The settings of every cgroup of the hierarchy mounted at ``mount``, by path, parents
    first. ``SnapshotFileError`` if a cgroup cannot be read."""
    tree: Tree = {}

    def visit(where: Path, path: str) -> None:
        values = {}
        for name in SETTINGS:
            try:
                with open(where / name, encoding="utf-8", errors="surrogateescape") as f:
                    values[name] = f.read().removesuffix("\n")
            except FileNotFoundError:
                continue  # removed meanwhile, or a file this profile does not have
            except OSError as exc:
                raise SnapshotFileError(f"{path}: {name}: {exc.strerror or exc}") from None
        tree[path] = values
        try:
            names = sorted(e.name for e in os.scandir(where) if e.is_dir(follow_symlinks=False))
        except OSError as exc:
            raise SnapshotFileError(f"{path}: {exc.strerror or exc}") from None
        for name in names:
            visit(where / name, f"{path.rstrip('/')}/{name}")

    visit(mount, "/")
    return tree


def dump(tree: Tree) -> str:
    """The TOML text of ``tree`` (see the module's documentation)."""
    import tomli_w

    data: dict[str, Any] = {"schema": SCHEMA}
    for path in sorted(tree, key=lambda p: [part for part in p.split("/") if part]):
        data[path] = dict(sorted(tree[path].items()))
    return tomli_w.dumps(data)


def load(data: bytes) -> Tree:
    """The tree a snapshot file holds; ``SnapshotFileError`` for one that is not valid TOML,
    not schema 1, or holds a path or a key a snapshot does not have."""
    try:
        raw = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SnapshotFileError(f"not a snapshot: {exc}") from None
    if raw.get("schema") != SCHEMA:
        raise SnapshotFileError(f"schema {raw.get('schema')!r}, expected {SCHEMA}")
    tree: Tree = {}
    for path, values in raw.items():
        if path == "schema":
            continue
        parts = path.split("/")
        if not path.startswith("/") or (path != "/" and (
                any(p in ("", ".", "..") for p in parts[1:]))) or not isinstance(values, dict):
            raise SnapshotFileError(f"{path!r} is not a cgroup's table")
        for name, value in values.items():
            if name not in SETTINGS or not isinstance(value, str):
                raise SnapshotFileError(f"{path}: {name!r} is not a setting a snapshot keeps")
        tree[path] = dict(values)
    return tree


class Step(NamedTuple):
    """A change ``restore`` makes and the change that undoes it: ``name`` ``None`` creates the
    cgroup at ``path`` (undone by removing it); any other writes ``data`` to that control file
    (undone by writing ``undo``)."""

    path: str
    name: str | None
    data: str = ""
    undo: str = ""


def _fresh(parent: dict[str, str], new_max: str) -> dict[str, str]:
    """The settings a cgroup has when made below one with ``parent``'s settings: the v1 flags
    inherited, ``ioasids.max`` ``new_max``, no tree limits, no controllers enabled below it."""
    return {"cgroup.clone_children": parent.get("cgroup.clone_children", "0"),
            "notify_on_release": parent.get("notify_on_release", "0"),
            "ioasids.max": new_max, SUBTREE_CONTROL: "", "cgroup.max.depth": "max",
            "cgroup.max.descendants": "max"}


def plan(wanted: Tree, have: Tree, new_max: str = "max") -> tuple[list[Step], list[str]]:
    """What ``restore`` does to turn ``have`` into ``wanted``: the steps (missing cgroups
    created parents first, then every value that differs from what the cgroup has, or will
    have once made, written; a ``cgroup.subtree_control`` as the ``+name -name`` write that
    makes it), and the conflicts: the values of existing cgroups that differ
    (``PATH NAME: have -> wanted``), which ``restore`` changes only when forced; the root's
    values of a new hierarchy (``FRESH_ROOT``) are not conflicts. ``new_max`` is the
    ``ioasids.max`` a new cgroup gets (the daemon's ``new_cgroup_max`` knob). ``have`` is not
    changed."""
    steps: list[Step] = []
    conflicts: list[str] = []
    final = {path: dict(values) for path, values in have.items()}
    order = sorted(wanted, key=lambda p: [part for part in p.split("/") if part])
    for path in order:
        values = wanted[path]
        exists = path in have
        if not exists:
            parts = [p for p in path.split("/") if p]
            for i in range(1, len(parts) + 1):
                step = "/" + "/".join(parts[:i])
                if step not in final:
                    steps.append(Step(step, None))
                    final[step] = _fresh(final.get(step.rpartition("/")[0] or "/", {}), new_max)
        # ioasids.max before the rest: a refused limit stops before anything else changes (a
        # v2 parent's subtree_control, which gives a child its ioasids.max, comes first anyway)
        for name in sorted(values, key=lambda n: n != "ioasids.max"):
            value = values[name]
            current = final[path].get(name)
            if current == value:
                continue
            if exists and not (path == "/" and FRESH_ROOT.get(name) == current):
                conflicts.append(f"{path} {name}: {current} -> {value}")
            if name == SUBTREE_CONTROL:
                steps.append(Step(path, name, subtree_control_write(current or "", value),
                                  subtree_control_write(value, current or "")))
            else:
                steps.append(Step(path, name, value, current or ""))
            final[path][name] = value
    return steps, conflicts
