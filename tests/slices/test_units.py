"""``ioasidsd.slices.units``: the unit file and drop-ins systemd would read, in its order.

Trees of directories are built in a temporary directory; where ``systemd-analyze`` is
installed, the same tree is given to systemd (``SYSTEMD_UNIT_PATH``) and the files it reads,
in the order it reads them, must be ours.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ioasidsd.slices.names import InvalidUnitName
from ioasidsd.slices.units import DEFAULT_SEARCH_PATH, SearchPath, dropin_dir_names, load_unit
from tests.slices.oracle import ANALYZE, needs_analyze, tasks_max_reads, verify


def put(root: Path, relative: str, value: str | None) -> Path:
    """Write ``[Slice] TasksMax=value`` (None: an empty file) at ``root/relative``."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("" if value is None else f"[Slice]\nTasksMax={value}\n")
    return path


def our_reads(name: str, dirs: list[Path]) -> list[tuple[str, int, str]]:
    unit = load_unit(name, SearchPath((), tuple(dirs)))
    return [(a.path, a.line, a.value) for a in unit.assignments if a.key == "TasksMax"]


@pytest.fixture
def tree(tmp_path: Path) -> list[Path]:
    """Three directories, highest first, with a unit file, drop-ins in each kind of drop-in
    directory, same-named drop-ins that override and an empty one that masks."""
    hi, mid, lo = tmp_path / "hi", tmp_path / "mid", tmp_path / "lo"
    put(lo, "a-b-c.slice", "lo-unit")  # hidden by mid's
    put(mid, "a-b-c.slice", "mid-unit")
    put(lo, "a-b-c.slice.d/10-x.conf", "lo-full-10")
    put(lo, "a-b-.slice.d/10-x.conf", "lo-prefix2-10")  # same name, less specific: hidden
    put(lo, "a-.slice.d/20-y.conf", "lo-prefix1-20")
    put(mid, "a-.slice.d/20-y.conf", "mid-prefix1-20")  # outranks lo's 20-y.conf
    put(hi, "a-b-.slice.d/30-z.conf", None)  # empty: masks the next one
    put(lo, "a-b-c.slice.d/30-z.conf", "lo-full-30")
    put(lo, "slice.d/05-top.conf", "lo-type-05")
    put(hi, "a-b-c.slice.d/99-last.conf", "hi-full-99")
    put(lo, "a-b-c.slice.d/not-a-dropin.txt", "ignored")
    put(lo, "b-.slice.d/40-other.conf", "other-prefix")  # another name's drop-in
    return [hi, mid, lo]


def test_precedence_and_order(tree: list[Path]) -> None:
    hi, mid, lo = tree
    unit = load_unit("a-b-c.slice", SearchPath((), tuple(tree)))
    assert unit.fragment == mid / "a-b-c.slice"
    assert unit.dropins == [lo / "slice.d/05-top.conf", lo / "a-b-c.slice.d/10-x.conf",
                            mid / "a-.slice.d/20-y.conf", hi / "a-b-c.slice.d/99-last.conf"]
    assert [a.value for a in unit.assignments] == ["mid-unit", "lo-type-05", "lo-full-10",
                                                   "mid-prefix1-20", "hi-full-99"]
    assert unit.value("Slice", "TasksMax").value == "hi-full-99"  # type: ignore[union-attr]
    assert unit.loaded and unit.failure is None


@needs_analyze
def test_systemd_reads_the_same_files_in_the_same_order(tree: list[Path],
                                                        tmp_path: Path) -> None:
    assert tasks_max_reads("a-b-c.slice", tree, tmp_path) == our_reads("a-b-c.slice", tree)


def test_control_directories_outrank_unit_directories(tmp_path: Path) -> None:
    etc, control = tmp_path / "etc", tmp_path / "control"
    put(etc, "a.slice.d/50-IOASIDsMax.conf", "from-etc")
    put(control, "a.slice.d/50-IOASIDsMax.conf", "from-control")
    unit = load_unit("a.slice", SearchPath((control,), (etc,)))
    assert unit.fragment is None and unit.loaded
    assert [a.value for a in unit.assignments] == ["from-control"]


def test_masked_unit(tmp_path: Path) -> None:
    hi, lo = tmp_path / "hi", tmp_path / "lo"
    put(lo, "a.slice", "lo")
    hi.mkdir()
    os.symlink("/dev/null", hi / "a.slice")
    unit = load_unit("a.slice", SearchPath((), (hi, lo)))
    assert unit.masked and not unit.loaded and unit.assignments == []
    os.unlink(hi / "a.slice")
    put(hi, "a.slice", None)  # an empty file masks too
    assert load_unit("a.slice", SearchPath((), (hi, lo))).masked
    os.unlink(hi / "a.slice")
    assert not load_unit("a.slice", SearchPath((), (hi, lo))).masked


def test_a_unit_with_nothing_is_not_loaded(tmp_path: Path) -> None:
    unit = load_unit("nothing.slice", SearchPath((), (tmp_path, tmp_path / "absent")))
    assert not unit.loaded and unit.fragment is None and unit.dropins == []
    assert unit.failure is None


def test_failures_name_the_file(tmp_path: Path) -> None:
    put(tmp_path, "a.slice", "ok")
    bad = tmp_path / "a.slice.d/bad.conf"
    bad.parent.mkdir()
    bad.write_text("[Slice]\nTasksMax=1\n[Broken\n")
    unit = load_unit("a.slice", SearchPath((), (tmp_path,)))
    assert unit.failure == f"{bad}:3: invalid section header '[Broken'"
    assert not unit.loaded
    bad.write_bytes(b"\xff\xfe")
    assert load_unit("a.slice", SearchPath((), (tmp_path,))).failure.startswith(  # type: ignore[union-attr]
        f"{bad}: not UTF-8")
    if os.geteuid() == 0:
        return  # root reads a mode-000 file anyway
    bad.write_text("[Slice]\n")
    bad.chmod(0)
    assert str(bad) in load_unit("a.slice", SearchPath((), (tmp_path,))).failure  # type: ignore[operator]


def test_diagnostics_are_kept_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "a.slice"
    path.write_text("[Slice]\nnonsense\nTasksMax=5\n")
    unit = load_unit("a.slice", SearchPath((), (tmp_path,)))
    assert [str(d) for d in unit.diagnostics] == [f"{path}:2: missing '=', line ignored"]
    assert unit.loaded


def test_values_and_resets(tmp_path: Path) -> None:
    (tmp_path / "a.slice").write_text("[Slice]\nL=1\nX-L=2\nL=\nL=3\nX-L=4\n[Unit]\nL=9\n")
    unit = load_unit("a.slice", SearchPath((), (tmp_path,)))
    assert [a.value for a in unit.values("Slice", "L", "X-L")] == ["3", "4"]
    assert unit.value("Slice", "L").value == "3"  # type: ignore[union-attr]
    assert unit.value("Slice", "L", "X-L").value == "4"  # type: ignore[union-attr]
    (tmp_path / "a.slice").write_text("[Slice]\nL=1\nL=\n")
    assert load_unit("a.slice", SearchPath((), (tmp_path,))).value("Slice", "L") is None


def test_dropin_dir_names() -> None:
    assert dropin_dir_names("a-b-c.slice") == ["a-b-c.slice.d", "a-b-.slice.d", "a-.slice.d",
                                               "slice.d"]
    assert dropin_dir_names("machine-qemu\\x2d1.slice") == [
        "machine-qemu\\x2d1.slice.d", "machine-.slice.d", "slice.d"]
    assert dropin_dir_names("-.slice") == ["-.slice.d", "slice.d"]
    assert dropin_dir_names("run-u7.scope") == ["run-u7.scope.d", "run-.scope.d", "scope.d"]
    with pytest.raises(InvalidUnitName):
        dropin_dir_names("a/b.slice")
    with pytest.raises(InvalidUnitName):
        load_unit("../etc.slice", SearchPath())


def test_unknown_sections(tmp_path: Path) -> None:
    path = tmp_path / "a.slice"
    path.write_text("[Unit]\nDescription=a\n[Slice]\n[Service]\nX=1\n[X-Ours]\nY=2\n"
                    "[Install]\n")
    unit = load_unit("a.slice", SearchPath((), (tmp_path,)))
    assert [str(d) for d in unit.diagnostics] == [f"{path}:4: unknown section 'Service', ignored"]
    assert unit.loaded


@needs_analyze
def test_systemd_warns_of_the_same_sections(tmp_path: Path) -> None:
    (tmp_path / "a.slice").write_text("[Unit]\n[Slice]\n[Service]\n[Bogus]\n[X-Ours]\n[Install]\n")
    log = verify(["./a.slice"], tmp_path)
    warned = [line.split(": ", 1)[0] for line in log.splitlines() if "Unknown section" in line]
    unit = load_unit("a.slice", SearchPath((), (tmp_path,)))
    assert warned == [f"{d.path}:{d.line}" for d in unit.diagnostics]
    assert len(warned) == 2


@needs_analyze
def test_default_search_path_is_systemds() -> None:
    """``systemd-analyze unit-paths`` lists the system search path; ours is its persistent
    and runtime part, in its order."""
    assert ANALYZE is not None
    listed = subprocess.run([ANALYZE, "unit-paths"], capture_output=True, text=True,
                            timeout=60, check=True, env={"PATH": "/usr/bin:/bin"}).stdout.split()
    ours = [str(d) for d in DEFAULT_SEARCH_PATH.directories]
    assert [d for d in listed if d in ours] == ours
