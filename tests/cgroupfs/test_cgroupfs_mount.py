"""Mounting and unmounting: readiness, idempotent unmount, external and busy unmounts, and the
dead mount a killed daemon leaves behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cgroupfs import force_unmount, mount, stale_mount
from ioasidsd.system import System

pytestmark = pytest.mark.usefixtures("needs_fuse")

SERVE_AND_HANG = """
import sys, threading
from ioasidsd.system import System
from cgroupfs import mount
mount(System(), sys.argv[1])
print("ready", flush=True)
threading.Event().wait()
"""


def _cwd_is(pid: int, path: Path) -> bool:
    """Whether process ``pid``'s working directory is ``path`` (read from ``/proc``, which does
    not ask the file system)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd") == str(path)
    except OSError:
        return False


def is_mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as info:
        return any(line.split()[4] == str(path) for line in info)


def test_mount_creates_the_mountpoint_and_unmount_is_idempotent(mountdir: Path) -> None:
    assert not mountdir.exists()
    handle = mount(System(), str(mountdir))
    assert handle.mounted and is_mounted(mountdir)
    assert (mountdir / "cgroup.procs").exists()
    handle.unmount()
    assert not handle.mounted and not is_mounted(mountdir)
    handle.unmount()
    handle.wait()
    assert os.listdir(mountdir) == []


def test_wait_returns_when_unmounted_from_outside(mountdir: Path) -> None:
    handle = mount(System(), str(mountdir))
    waiter = threading.Thread(target=handle.wait)
    waiter.start()
    subprocess.run(["fusermount3", "-u", str(mountdir)], check=True, timeout=30)
    waiter.join(30)
    assert not waiter.is_alive() and not handle.mounted
    handle.unmount()


def test_unmount_of_a_busy_mount_returns(mountdir: Path, spawn) -> None:
    handle = mount(System(), str(mountdir))
    (mountdir / "a").mkdir()
    # The holder changes into the mount itself, after exec: a cwd= into this process's own
    # mount deadlocks on Python 3.11 (its vfork suspends the parent thread, holding the GIL,
    # while the child's chdir waits for the FUSE threads of this same process).
    holder = spawn(["sh", "-c", 'cd "$1" && exec sleep 60', "sh", str(mountdir / "a")])
    deadline = time.monotonic() + 30
    while not _cwd_is(holder.pid, mountdir / "a"):
        assert holder.poll() is None and time.monotonic() < deadline, "the holder never got in"
        time.sleep(0.01)
    handle.unmount()
    assert not handle.mounted and not is_mounted(mountdir)
    assert holder.poll() is None


def test_mount_refuses_a_mount_point_and_a_file(mountdir: Path, tmp_path: Path) -> None:
    with mount(System(), str(mountdir)):
        with pytest.raises(OSError) as busy:
            mount(System(), str(mountdir))
        assert busy.value.errno == errno.EBUSY
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(OSError) as notdir:
        mount(System(), str(afile))
    assert notdir.value.errno == errno.ENOTDIR


def test_a_killed_server_leaves_a_stale_mount_that_force_unmount_removes(mountdir: Path,
                                                                          spawn) -> None:
    server = spawn([sys.executable, "-c", SERVE_AND_HANG, str(mountdir)], stdout=subprocess.PIPE)
    assert server.stdout is not None and server.stdout.readline() == b"ready\n"
    assert not stale_mount(str(mountdir))  # live
    server.send_signal(signal.SIGKILL)
    server.wait()
    assert stale_mount(str(mountdir))
    with pytest.raises(OSError) as refused:
        mount(System(), str(mountdir))
    assert refused.value.errno == errno.EBUSY and "force_unmount" in str(refused.value)
    force_unmount(str(mountdir))
    assert not stale_mount(str(mountdir)) and not is_mounted(mountdir)
    force_unmount(str(mountdir))  # nothing mounted: nothing to do
    with mount(System(), str(mountdir)) as handle:
        assert handle.mounted and (mountdir / "tasks").exists()


def test_a_plain_directory_is_not_stale(tmp_path: Path) -> None:
    assert not stale_mount(str(tmp_path))
    assert not stale_mount(str(tmp_path / "missing"))


def test_a_libfuse_failure_is_a_clear_oserror(mountdir: Path, monkeypatch) -> None:
    import mfusepy

    def refuse(operations, mountpoint, **options):
        raise RuntimeError(4)  # what mfusepy raises when fuse_main_real cannot mount

    monkeypatch.setattr(mfusepy, "FUSE", refuse)
    with pytest.raises(OSError) as failed:
        mount(System(), str(mountdir))
    assert failed.value.errno == errno.EINVAL
    assert str(mountdir) in str(failed.value) and "libfuse could not mount" in str(failed.value)
    assert not is_mounted(mountdir)


def test_an_unmount_from_outside_stops_invalidations_before_libfuse_tears_down(
        mountdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After its loop ends, libfuse frees its node table, closes ``/dev/fuse`` and only then
    calls ``destroy``: an invalidation sent from another thread in between reads freed memory
    (a crash) or writes into a reused descriptor. The mount stops invalidating when the loop
    ends: by ``destroy``, whoever unmounted, nothing is held and nothing can be sent."""
    from cgroupfs import fastopen

    if not fastopen.LIBRARY.exists():
        pytest.skip("cgroupfs/_fastopen.so not built (scripts/bootstrap needs cc and "
                    "libfuse3-dev); without it the mount keeps no kernel cache")
    system = System()
    handle = mount(system, str(mountdir))
    system.mkdir("/a")
    (mountdir / "a" / "ioasids.max").read_text()  # held by the kernel from now on
    cache = handle.operations.cache
    assert cache.attached and cache.held() >= 1
    at_destroy: list[tuple[bool, int]] = []
    real = handle.operations.destroy

    def destroy(path: str) -> None:
        at_destroy.append((cache.attached, cache.held()))
        real(path)

    monkeypatch.setattr(handle.operations, "destroy", destroy)
    stop = threading.Event()

    def change() -> None:  # another face's changes, invalidating as the loop ends
        limit = 0
        while not stop.is_set():
            limit = limit % 50 + 1
            system.write_max("/a", str(limit))

    changer = threading.Thread(target=change)
    changer.start()
    try:
        subprocess.run(["umount", str(mountdir)], check=True, timeout=30)
        handle.wait()
    finally:
        stop.set()
        changer.join()
    assert at_destroy == [(False, 0)]
    system.write_max("/a", "7")  # and changes after the end reach nothing
    assert not cache.attached and cache.held() == 0
    handle.unmount()


def test_without_the_c_library_the_kernel_caches_no_contents(mountdir: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Without ``_fastopen.so`` nothing can stop invalidations before libfuse tears the
    session down, so none are sent: every open is ``direct_io`` and a change made by another
    face is read at once anyway."""
    from cgroupfs import fastopen

    monkeypatch.setattr(fastopen, "library", lambda: None)
    system = System()
    with mount(system, str(mountdir)) as handle:
        assert not handle.fast_open
        system.mkdir("/a")
        system.write_max("/a", "3")
        path = mountdir / "a" / "ioasids.max"
        assert path.read_text() == "3\n"
        system.write_max("/a", "12")
        assert path.read_text() == "12\n"
        assert not handle.operations.cache.attached
        assert handle.operations.cache.held() == 0 and handle.operations.cache.invalidations == 0
