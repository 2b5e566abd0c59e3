"""The mounted file system: layout, directory operations and their errnos, reads and writes
through the kernel, ownership, durability and concurrency."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from ioasidsd.model.changes import Change
from ioasidsd.system import System

NOBODY = 65534
CHILD_FILES = {"cgroup.procs", "tasks", "cgroup.clone_children", "notify_on_release",
               "ioasids.max", "ioasids.current", "ioasids.peak", "ioasids.events",
               "ioasids.events.local"}
ROOT_FILES = {"cgroup.procs", "tasks", "cgroup.clone_children", "cgroup.sane_behavior",
              "notify_on_release", "release_agent", "ioasids.capacity", "ioasids.current"}


def errno_name(call, *args) -> str:
    try:
        call(*args)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"


def put(path: Path, data: bytes) -> int:
    """One write(2) of ``data`` to ``path``, as ``echo`` does (O_TRUNC)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)


def test_layout_modes_and_sizes(mounted: Path) -> None:
    assert set(os.listdir(mounted)) == ROOT_FILES
    (mounted / "a").mkdir()
    (mounted / "a" / "b").mkdir()
    assert set(os.listdir(mounted / "a")) == CHILD_FILES | {"b"}
    root = os.stat(mounted)
    assert stat.S_IMODE(root.st_mode) == 0o555 and root.st_nlink == 3
    a = os.stat(mounted / "a")
    assert stat.S_ISDIR(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o755 and a.st_nlink == 3
    for name in CHILD_FILES:
        st = os.stat(mounted / "a" / name)
        # the process lists report 0, as kernfs does; the files the kernel keeps in its page
        # cache report their text's length (a documented difference)
        size = 0 if name in {"cgroup.procs", "tasks"} else len((mounted / "a" / name).read_bytes())
        assert stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_nlink == 1, name
        writable = name in {"cgroup.procs", "tasks", "cgroup.clone_children",
                            "notify_on_release", "ioasids.max"}
        assert stat.S_IMODE(st.st_mode) == (0o644 if writable else 0o444), name
    assert os.statvfs(mounted).f_namemax == 255


def in_dir(script: str, directory: Path) -> list[str]:
    """``sh`` running ``script`` in ``directory``, changing into it itself: a ``cwd=`` into this
    process's own mount deadlocks on Python 3.11, whose vfork runs the child's chdir while the
    parent thread, holding the GIL, is suspended, so the mount's FUSE threads cannot answer."""
    return ["sh", "-c", f'cd "$1" && {script}', "sh", str(directory)]


def test_echo_and_cat_through_a_shell(mounted: Path) -> None:
    (mounted / "a").mkdir()
    script = "echo 5 > ioasids.max && cat ioasids.max && echo max > ioasids.max && cat ioasids.max"
    done = subprocess.run(in_dir(script, mounted / "a"), capture_output=True, text=True,
                          timeout=30)
    assert (done.returncode, done.stdout) == (0, "5\nmax\n")
    bad = subprocess.run(in_dir("echo -1 > ioasids.max", mounted / "a"),
                         capture_output=True, timeout=30)
    assert bad.returncode != 0
    assert (mounted / "a" / "ioasids.max").read_text() == "max\n"


def test_write_errnos(mounted: Path) -> None:
    a = mounted / "a"
    a.mkdir()
    assert put(a / "ioasids.max", b"") == 0
    assert errno_name(put, a / "ioasids.max", b"1" + b" " * 4096) == "E2BIG"
    assert errno_name(put, a / "ioasids.max", b"x") == "EINVAL"
    assert errno_name(put, a / "ioasids.max", b"99999999999999999999") == "ERANGE"
    assert errno_name(put, a / "ioasids.max", b"2000000") == "ENOSPC"  # beyond capacity
    assert errno_name(put, a / "ioasids.current", b"0") == "EINVAL"
    assert errno_name(put, a / "notify_on_release", b" 1") == "EINVAL"
    assert errno_name(put, mounted / "cgroup.sane_behavior", b"1") == "EINVAL"
    assert (a / "ioasids.max").read_text() == "0\n"
    assert (a / "notify_on_release").read_text() == "0\n"


def test_directory_operations_and_their_errnos(mounted: Path) -> None:
    for path in ("a", "a/c", "b"):
        (mounted / path).mkdir()
    assert errno_name(os.mkdir, mounted / "a") == "EEXIST"
    assert errno_name(os.mkdir, mounted / "a" / "ioasids.max") == "EEXIST"
    assert errno_name(os.mkdir, mounted / "ioasids.capacity") == "EEXIST"
    assert errno_name(os.mkdir, mounted / "x\ny") == "EINVAL"
    assert errno_name(os.rmdir, mounted / "a") == "EBUSY"
    assert errno_name(os.rmdir, mounted / "a" / "tasks") == "ENOTDIR"
    assert errno_name(os.rename, mounted / "a" / "c", mounted / "b" / "c") == "EIO"
    assert errno_name(os.rename, mounted / "a", mounted / "b") == "EEXIST"
    assert errno_name(os.rename, mounted / "a", mounted / "x\ny") == "EINVAL"
    assert errno_name(os.rename, mounted / "a" / "tasks", mounted / "a" / "t") == "ENOTDIR"
    (mounted / "a" / "ioasids.max").write_text("max")  # a nested limit is carved out of a's
    (mounted / "a" / "c" / "ioasids.max").write_text("3")
    os.rename(mounted / "a" / "c", mounted / "a" / "d")
    assert (mounted / "a" / "d" / "ioasids.max").read_text() == "3\n"
    assert not (mounted / "a" / "c").exists()
    os.rmdir(mounted / "a" / "d")
    os.rmdir(mounted / "a")
    assert set(os.listdir(mounted)) == ROOT_FILES | {"b"}


def test_no_files_are_created_or_removed(mounted: Path) -> None:
    (mounted / "a").mkdir()
    new = mounted / "a" / "new"
    assert errno_name(os.open, new, os.O_WRONLY | os.O_CREAT) == "EACCES"
    assert errno_name(os.mknod, new) == "EACCES"
    assert errno_name(os.unlink, mounted / "a" / "tasks") == "EPERM"
    assert errno_name(os.symlink, "tasks", new) == "EPERM"
    assert errno_name(os.link, mounted / "a" / "tasks", new) == "EPERM"
    assert set(os.listdir(mounted / "a")) == CHILD_FILES
    os.truncate(mounted / "a" / "ioasids.max", 0)  # accepted, as by kernfs; changes nothing
    assert (mounted / "a" / "ioasids.max").read_text() == "0\n"


def test_files_of_a_removed_cgroup_are_enodev(mounted: Path, system: System) -> None:
    (mounted / "a").mkdir()
    fd = os.open(mounted / "a" / "ioasids.max", os.O_RDWR)
    try:
        os.rmdir(mounted / "a")
        assert errno_name(os.write, fd, b"1") == "ENODEV"
        assert errno_name(os.pread, fd, 100, 0) == "ENODEV"
        assert errno_name(os.ftruncate, fd, 0) == "ENODEV"
    finally:
        os.close(fd)


def test_reads_in_pieces_fit_together(mounted: Path, system: System, spawn) -> None:
    (mounted / "a").mkdir()
    first, second, late = spawn(), spawn(), spawn()
    for child in (first, second):
        (mounted / "a" / "cgroup.procs").write_text(str(child.pid))
    expected = "".join(f"{pid}\n" for pid in sorted((first.pid, second.pid))).encode()
    fd = os.open(mounted / "a" / "cgroup.procs", os.O_RDONLY)
    try:
        head = os.pread(fd, 3, 0)
        (mounted / "a" / "cgroup.procs").write_text(str(late.pid))
        rest = os.pread(fd, 4096, 3)
    finally:
        os.close(fd)
    assert head + rest == expected  # the rendering of the first read, not a torn mix
    assert str(late.pid) in (mounted / "a" / "cgroup.procs").read_text().split()


def test_a_read_that_continues_finds_the_end_of_what_it_began(mounted: Path, system: System,
                                                              spawn) -> None:
    """A process list, rendered afresh by each read, is continued from the rendering the first
    read made, as seq_file does."""
    (mounted / "a").mkdir()
    first = spawn()
    (mounted / "a" / "cgroup.procs").write_text(str(first.pid))
    fd = os.open(mounted / "a" / "cgroup.procs", os.O_RDONLY)
    try:
        assert os.read(fd, 4096) == f"{first.pid}\n".encode()
        (mounted / "a" / "cgroup.procs").write_text(str(spawn().pid))  # grows the rendering
        assert os.read(fd, 4096) == b""
    finally:
        os.close(fd)
    assert len((mounted / "a" / "cgroup.procs").read_text().split()) == 2


def test_a_cached_file_read_again_after_a_change_reads_the_new_text(mounted: Path,
                                                                    system: System) -> None:
    """A file the kernel caches has one text for every reader: after a change, even a read
    continuing an open file reads the new text (a documented difference: the kernel continues
    the text the file's first read began)."""
    (mounted / "a").mkdir()
    (mounted / "a" / "ioasids.max").write_text("5")
    fd = os.open(mounted / "a" / "ioasids.max", os.O_RDONLY)
    try:
        assert os.read(fd, 4096) == b"5\n"
        system.write_max("a", "max")  # grows the rendering between cat's two reads
        assert os.read(fd, 4096) == b"x\n"
        assert os.pread(fd, 4096, 0) == b"max\n"
    finally:
        os.close(fd)
    assert (mounted / "a" / "ioasids.max").read_text() == "max\n"


@pytest.mark.usefixtures("as_user")
def test_chown_and_chmod_are_recorded_durably_and_enforced(mounted: Path, changes,
                                                           as_user) -> None:
    a = mounted / "a"
    a.mkdir()
    os.chown(a / "ioasids.max", NOBODY, NOBODY)
    os.chmod(a / "notify_on_release", 0o600)
    assert changes.kinds()[-2:] == ["attrs", "attrs"]
    st = os.stat(a / "ioasids.max")
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert stat.S_IMODE(os.stat(a / "notify_on_release").st_mode) == 0o600
    assert as_user(NOBODY, "write", a / "ioasids.max", "7") == "ok 1"
    assert as_user(NOBODY, "write", a / "ioasids.current", "7") == "open EACCES"
    assert as_user(NOBODY, "mkdir", a / "b") == "EACCES"
    assert (a / "ioasids.max").read_text() == "7\n"


def test_a_cgroup_made_by_a_user_belongs_to_that_user(mounted: Path, as_user) -> None:
    (mounted / "a").mkdir()
    os.chown(mounted / "a", NOBODY, NOBODY)
    assert as_user(NOBODY, "mkdir", mounted / "a" / "b") == "ok"
    for name in ("", *CHILD_FILES):
        st = os.stat(mounted / "a" / "b" / name)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), name
    assert as_user(NOBODY, "write", mounted / "a" / "b" / "ioasids.max", "max") == "ok 3"
    assert as_user(NOBODY, "rmdir", mounted / "a" / "b") == "ok"


def test_a_write_returns_only_after_the_change_is_durable(mounted: Path, system: System,
                                                           changes) -> None:
    """on_change (the daemon's store) blocks: the writer waits, and meanwhile other requests
    are served by other threads of the loop."""
    (mounted / "a").mkdir()
    entered, release = threading.Event(), threading.Event()

    def slow_store(change: Change) -> None:
        changes(change)
        if change.kind == "limit":
            entered.set()
            assert release.wait(30)

    system.on_change = slow_store
    outcome: list[object] = []
    writer = threading.Thread(target=lambda: outcome.append(put(mounted / "a" / "ioasids.max",
                                                                b"9")))
    writer.start()
    try:
        assert entered.wait(30)
        assert writer.is_alive() and outcome == []
        reader: list[str] = []
        other = threading.Thread(
            target=lambda: reader.append((mounted / "a" / "ioasids.peak").read_text()))
        other.start()
        other.join(30)
        assert reader == ["0\n"], "a read was not served while a write was in progress"
    finally:
        release.set()
        writer.join(30)
    assert outcome == [1]
    assert changes.kinds()[-1] == "limit"
    assert (mounted / "a" / "ioasids.max").read_text() == "9\n"
