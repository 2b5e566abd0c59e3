"""Unit names and where a slice lives in the cgroup hierarchy, as systemd decides both.

- A unit name is at most 255 characters of ASCII letters, digits and ``:-_.\\``, a
  non-empty prefix, a dot, and a unit type (``slice``, ``scope``, ``service``...). A plain
  name has no ``@`` (templates and instances are not slices). Escaped characters are written
  ``\\xNN`` (``systemd-escape``): the backslash is an allowed character, so
  ``machine-qemu\\x2d1.slice`` is valid and its ``\\x2d`` is not a dash.
- A slice name is a valid plain unit name ending in ``.slice`` whose prefix neither starts
  nor ends with ``-`` and holds no ``--``; ``-.slice`` is the root slice.
- The slice ``a-b-c.slice`` has the parent ``a-b.slice``, whose parent is ``a.slice``, whose
  parent is ``-.slice``; its cgroup is ``/a.slice/a-b.slice/a-b-c.slice``, and the root
  slice's is ``/``.
- A path component that the kernel or a cgroup tool would read as one of its own names is
  prefixed with ``_``: a name starting with ``_`` or ``.``, ``tasks``, ``release_agent``,
  ``notify_on_release``, a name starting with ``cgroup.``, and a name whose part before its
  last dot is a controller systemd knows (``cpu.slice`` is the directory ``_cpu.slice``).

Every function that takes a name raises ``InvalidUnitName`` (a ``ValueError``) for one that
is not valid, saying why.
"""

from __future__ import annotations

import string

__all__ = [
    "ROOT_SLICE",
    "UNIT_NAME_MAX",
    "UNIT_TYPES",
    "InvalidUnitName",
    "check_slice_name",
    "check_unit_name",
    "escape_cgroup_component",
    "slice_ancestors",
    "slice_parent",
    "slice_to_cgroup_path",
]

ROOT_SLICE = "-.slice"
UNIT_NAME_MAX = 255
UNIT_TYPES = frozenset({"service", "mount", "swap", "socket", "target", "device", "automount",
                        "timer", "path", "slice", "scope"})
_VALID_CHARS = frozenset(string.ascii_letters + string.digits + ":-_.\\")
# The controllers systemd knows by name (its cgroup controller table), whose "NAME." it
# keeps out of cgroup directory names.
_CONTROLLERS = frozenset({"cpu", "cpuacct", "cpuset", "io", "blkio", "memory", "devices",
                          "pids", "bpf-firewall", "bpf-devices", "bpf-foreign",
                          "bpf-socket-bind", "bpf-restrict-network-interfaces"})
_KERNEL_FILES = frozenset({"notify_on_release", "release_agent", "tasks"})


class InvalidUnitName(ValueError):
    """A name systemd would refuse as a unit name, or as a slice name."""


def check_unit_name(name: str) -> str:
    """Return ``name`` if it is a valid plain unit name, else raise ``InvalidUnitName``."""
    if not name:
        raise InvalidUnitName("empty unit name")
    if len(name) > UNIT_NAME_MAX:
        raise InvalidUnitName(f"{name[:40]}...: longer than {UNIT_NAME_MAX} characters")
    bad = sorted({c for c in name if c not in _VALID_CHARS})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise InvalidUnitName(f"{name!r}: characters not allowed in a unit name: {shown}")
    prefix, dot, suffix = name.rpartition(".")
    if not dot or suffix not in UNIT_TYPES:
        raise InvalidUnitName(f"{name!r}: does not end in a unit type "
                              f"({', '.join(sorted(UNIT_TYPES))})")
    if not prefix:
        raise InvalidUnitName(f"{name!r}: empty name before .{suffix}")
    return name


def check_slice_name(name: str) -> str:
    """Return ``name`` if it is a valid slice name, else raise ``InvalidUnitName``."""
    check_unit_name(name)
    if not name.endswith(".slice"):
        raise InvalidUnitName(f"{name!r}: a slice name ends in .slice")
    if name == ROOT_SLICE:
        return name
    prefix = name[:-len(".slice")]
    if prefix.startswith("-"):
        raise InvalidUnitName(f"{name!r}: a slice name does not start with '-'")
    if prefix.endswith("-"):
        raise InvalidUnitName(f"{name!r}: a slice name does not end with '-' before .slice")
    if "--" in prefix:
        raise InvalidUnitName(f"{name!r}: a slice name holds no '--'")
    return name


def slice_parent(name: str) -> str | None:
    """The slice that contains slice ``name``: None for the root slice ``-.slice``."""
    check_slice_name(name)
    if name == ROOT_SLICE:
        return None
    prefix = name[:-len(".slice")]
    head, dash, _ = prefix.rpartition("-")
    return head + ".slice" if dash else ROOT_SLICE


def slice_ancestors(name: str) -> list[str]:
    """The slices from the top down to ``name``, the root slice excluded:
    ``a-b.slice`` gives ``["a.slice", "a-b.slice"]``, ``-.slice`` gives ``[]``."""
    check_slice_name(name)
    if name == ROOT_SLICE:
        return []
    parts = name[:-len(".slice")].split("-")
    return ["-".join(parts[:n]) + ".slice" for n in range(1, len(parts) + 1)]


def escape_cgroup_component(name: str) -> str:
    """``name`` as a cgroup directory: prefixed with ``_`` when the kernel or a cgroup tool
    could read it as one of its own names, unchanged otherwise."""
    if not name or name[0] in "_." or name in _KERNEL_FILES or name.startswith("cgroup."):
        return "_" + name
    head, dot, _ = name.rpartition(".")
    if dot and head in _CONTROLLERS:
        return "_" + name
    return name


def slice_to_cgroup_path(name: str) -> str:
    """The cgroup path of slice ``name`` from the hierarchy's root: ``/`` for ``-.slice``,
    ``/machine.slice/machine-vm1.slice`` for ``machine-vm1.slice``."""
    return "/" + "/".join(escape_cgroup_component(s) for s in slice_ancestors(name))
