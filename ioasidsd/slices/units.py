"""Finding and loading a unit: its file and drop-ins along the search path.

The contract, as systemd loads a unit from its search path:

- The search path is a list of directories, highest precedence first. The daemon builds it
  as ``SearchPath(control_path, path)``: the ``system.control`` directories that
  ``set-property`` writes outrank every unit directory, and in each list the first
  directory outranks the next.
- The unit file is ``NAME`` in the first directory that has it. A unit file that is empty
  or a symbolic link to ``/dev/null`` masks the unit: it is not loaded from any directory.
  A unit may have no file at all and still drop-ins: for a slice that is normal.
- Drop-ins are the ``*.conf`` files in the directories ``NAME.d/``, then for a name with
  dashes its truncated prefixes, longest first (``a-b-c.slice`` also reads ``a-b-.slice.d/``
  and ``a-.slice.d/``), then the type's own ``slice.d/``, in every directory of the search
  path. A drop-in's file name is its identity: of several with one name, the first found
  (directory precedence first, then the more specific drop-in directory) is used and the
  others are not read; an empty one or a link to ``/dev/null`` hides those below it and is
  not read either. The drop-ins that remain are applied after the unit file in the lexical
  order of their file names, whichever directory each came from.
- ``load_unit`` returns a ``Unit``: its assignments in the order that makes the last one
  win, the files they came from, and the diagnostics of each file, among them each section
  that the unit's type does not have (``[Unit]``, ``[Install]`` and the type's own, such as
  ``[Slice]``; a section whose name starts with ``X-`` is ignored silently, as systemd
  ignores it; the assignments of an unknown section are kept). A file that cannot be
  read, or that systemd would refuse (a bad section header), makes the unit failed
  (``Unit.failure``), with the file's path and, for bad content, its line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ioasidsd.slices.names import check_unit_name
from ioasidsd.slices.syntax import (
    Assignment,
    Diagnostic,
    ParsedFile,
    UnitReadError,
    read_unit_file,
)

__all__ = ["DEFAULT_SEARCH_PATH", "SearchPath", "Unit", "dropin_dir_names", "load_unit"]

_NULL_DEVICE = "/dev/null"


@dataclass(frozen=True)
class SearchPath:
    """Where units are read, highest precedence first: the control directories, then the
    unit directories."""

    control_path: tuple[Path, ...] = ()
    path: tuple[Path, ...] = ()

    @property
    def directories(self) -> tuple[Path, ...]:
        """Every directory, highest precedence first."""
        return self.control_path + self.path


DEFAULT_SEARCH_PATH = SearchPath(
    control_path=(Path("/etc/systemd/system.control"), Path("/run/systemd/system.control")),
    path=(Path("/etc/systemd/system"), Path("/run/systemd/system"),
          Path("/usr/lib/systemd/system")),
)
"""systemd's system search path, and the daemon's default for ``[units]``."""


@dataclass
class Unit:
    """A loaded unit: where it came from and its assignments, last one winning."""

    name: str
    fragment: Path | None = None
    """The unit file, None if the unit has none (or is masked)."""
    masked: bool = False
    dropins: list[Path] = field(default_factory=list)
    """The drop-ins applied, in the order they were applied."""
    assignments: list[Assignment] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    failure: str | None = None
    """Why the unit cannot be used ("PATH: reason" or "PATH:LINE: reason"), None if it can."""

    @property
    def loaded(self) -> bool:
        """True if the unit has a file or a drop-in, is not masked and did not fail."""
        return (self.fragment is not None or bool(self.dropins)) and not self.masked \
            and self.failure is None

    def values(self, section: str, *keys: str) -> list[Assignment]:
        """The assignments to any of ``keys`` in ``section``, in order, after the last
        empty assignment (which resets a list setting): what a list setting ends up with."""
        found: list[Assignment] = []
        for assignment in self.assignments:
            if assignment.section == section and assignment.key in keys:
                if assignment.value == "":
                    found = []
                else:
                    found.append(assignment)
        return found

    def value(self, section: str, *keys: str) -> Assignment | None:
        """The last assignment to any of ``keys`` in ``section``, None if there is none or
        the last one is empty (an empty assignment resets a setting to its default)."""
        last = None
        for assignment in self.assignments:
            if assignment.section == section and assignment.key in keys:
                last = assignment
        return last if last is not None and last.value != "" else None


def dropin_dir_names(name: str) -> list[str]:
    """The drop-in directory names of unit ``name``, most specific first:
    ``a-b.slice`` gives ``["a-b.slice.d", "a-.slice.d", "slice.d"]``."""
    check_unit_name(name)
    prefix, _, unit_type = name.rpartition(".")
    names = [name + ".d"]
    cut = len(prefix)
    while True:
        cut = prefix.rfind("-", 0, cut)
        if cut <= 0:
            break
        names.append(f"{prefix[:cut + 1]}.{unit_type}.d")
    names.append(f"{unit_type}.d")
    return names


def _is_mask(path: Path) -> bool:
    """True for an empty file or a symbolic link to /dev/null. A path that cannot be
    examined is not a mask: reading it will report why."""
    try:
        if path.is_symlink() and os.path.realpath(path) == _NULL_DEVICE:
            return True
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False


def _find_dropins(name: str, search: SearchPath) -> list[Path]:
    chosen: dict[str, Path | None] = {}
    for directory in search.directories:
        for dir_name in dropin_dir_names(name):
            try:
                entries = sorted(os.listdir(directory / dir_name))
            except OSError:  # absent, not a directory: no drop-ins there
                continue
            for entry in entries:
                if not entry.endswith(".conf") or entry in chosen:
                    continue
                path = directory / dir_name / entry
                if path.is_dir():
                    continue
                chosen[entry] = None if _is_mask(path) else path
    return [path for _, path in sorted(chosen.items()) if path is not None]


def _unknown_sections(name: str, parsed: ParsedFile) -> list[Diagnostic]:
    known = {"Unit", "Install", name.rpartition(".")[2].capitalize()}
    found: list[Diagnostic] = []
    for number, section in parsed.sections:
        if section not in known and not section.startswith("X-"):
            found.append(Diagnostic(parsed.path, number,
                                    f"unknown section {section!r}, ignored"))
    return found


def load_unit(name: str, search: SearchPath) -> Unit:
    """Load unit ``name`` from ``search``. Raises ``InvalidUnitName`` for a bad name; every
    problem with the files is in the returned ``Unit`` (``failure``, ``diagnostics``)."""
    check_unit_name(name)
    unit = Unit(name)
    for directory in search.directories:
        candidate = directory / name
        if candidate.is_symlink() or candidate.exists():
            if _is_mask(candidate):
                unit.masked = True
                return unit
            unit.fragment = candidate
            break
    unit.dropins = _find_dropins(name, search)
    for path in ([unit.fragment] if unit.fragment else []) + unit.dropins:
        try:
            parsed: ParsedFile = read_unit_file(path)
        except UnitReadError as err:
            unit.failure = str(err)
            return unit
        unit.diagnostics.extend(parsed.diagnostics)
        unit.diagnostics.extend(_unknown_sections(name, parsed))
        if parsed.failure:
            unit.failure = str(parsed.failure)
            return unit
        unit.assignments.extend(parsed.assignments)
    return unit
