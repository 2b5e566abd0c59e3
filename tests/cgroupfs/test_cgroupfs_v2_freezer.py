"""``cgroup.freeze`` and ``cgroup.kill`` compared with the kernel: the same scripted operations on
a child of the kernel's cgroup-v2 hierarchy and on a child of our v2 mount, step by step (the
errnos of bad writes, the files' modes and contents, ``frozen`` in ``cgroup.events`` as requests
come and go, inheritance by new children, what a frozen, thawed, moved or killed real process
does, delegation of both files, threaded cgroups, the time a cgroup spent frozen in
``cgroup.stat.local``), and the change notification of ``frozen``. Also which files a child
cgroup has beyond its controller's, the pressure files among them, which we do not serve.
Documented differences (``docs/cgroupfs.md``) are in
``DIFFERENCES``.

Each side has its own processes: ``{ticker}`` writes a byte to a pipe every 20 ms (whether it
``runs`` or is ``still`` is whether a byte comes within a second), ``{sleeper}`` sleeps. The
kernel freezes asynchronously: ``wait_events`` waits (``poll``, up to 10 s) until a
``cgroup.events`` says what is expected, and gives what it says then.
"""

from __future__ import annotations

import errno
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kernel_script import NOBODY, ScriptTree
from test_cgroupfs_v2_kernel import (  # noqa: F401 (fixtures)
    KERNEL_V2,
    Inotify,
    kernel_v2,
    mounted_v2,
)

TICKER = "import os, time\nwhile True:\n    os.write(1, b'x')\n    time.sleep(0.02)\n"
STILL_FOR = 1.0
"""Seconds without a byte from the ticker that say it is stopped."""

BAD_WRITES = ["0", "2", "-1", "abc", "1 1", "1abc", "\n", " ", "99999999999", "0x1", " 1 \n",
              "+1", "01", ""]

SCRIPT: list[tuple[str, str, tuple[str, ...]]] = [
    ("files", "ls_beyond_controller", (".",)),
    ("stat-kill", "stat", ("cgroup.kill",)),
    ("stat-freeze", "stat", ("cgroup.freeze",)),
    ("read-kill", "read", ("cgroup.kill",)),
    ("read-freeze", "read", ("cgroup.freeze",)),
    ("events", "read", ("cgroup.events",)),
    ("stat-local", "read", ("cgroup.stat.local",)),
    ("stat-stat-local", "stat", ("cgroup.stat.local",)),
    ("stat-local-write", "write", ("cgroup.stat.local", "1")),
    *[(f"kill-{value!r}", "write", ("cgroup.kill", value)) for value in BAD_WRITES],
    *[(f"freeze-{value!r}", "write", ("cgroup.freeze", value)) for value in BAD_WRITES],
    ("freeze-read-after-writes", "read", ("cgroup.freeze",)),
    ("events-after-writes", "wait_events", ("cgroup.events", "frozen 1")),
    ("top-frozen-time", "frozen_time", (".",)),
    # ------------------------------------------------------------ inheritance
    ("mkdir-born-frozen", "mkdir", ("a",)),
    ("a-freeze-read", "read", ("a/cgroup.freeze",)),
    ("a-born-frozen", "read", ("a/cgroup.events",)),
    ("a-frozen-time-born", "frozen_time", ("a",)),
    ("thaw-top", "write", ("cgroup.freeze", "0")),
    ("a-thawed", "wait_events", ("a/cgroup.events", "frozen 0")),
    ("mkdir-a-b", "mkdir", ("a/b",)),
    ("a-frozen-time-thawed", "frozen_time", ("a",)),
    ("top-frozen-time-thawed", "frozen_time", (".",)),
    ("mkdir-c", "mkdir", ("c",)),
    ("c-frozen-time", "frozen_time", ("c",)),
    # ------------------------------------------------------------ a real process
    ("ticker-in", "write", ("a/b/cgroup.procs", "{ticker}")),
    ("ticker-runs", "progress", ()),
    ("freeze-a", "write", ("a/cgroup.freeze", "1")),
    ("a-frozen", "wait_events", ("a/cgroup.events", "frozen 1")),
    ("b-frozen", "wait_events", ("a/b/cgroup.events", "frozen 1")),
    ("ticker-frozen", "progress", ()),
    ("b-freeze-read", "read", ("a/b/cgroup.freeze",)),
    ("top-not-frozen", "read", ("cgroup.events",)),
    ("ticker-procs", "read", ("a/b/cgroup.procs",)),
    ("ticker-out", "write", ("c/cgroup.procs", "{ticker}")),
    ("ticker-runs-out", "progress", ()),
    ("a-frozen-empty", "wait_events", ("a/cgroup.events", "populated 0")),
    ("ticker-back", "write", ("a/b/cgroup.procs", "{ticker}")),
    ("b-frozen-again", "wait_events", ("a/b/cgroup.events", "frozen 1")),
    ("ticker-frozen-again", "progress", ()),
    ("b-freeze-own", "write", ("a/b/cgroup.freeze", "1")),
    ("thaw-a", "write", ("a/cgroup.freeze", "0")),
    ("a-thawed-b-not", "wait_events", ("a/cgroup.events", "frozen 0")),
    ("b-kept-frozen", "read", ("a/b/cgroup.events",)),
    ("ticker-kept-still", "progress", ()),
    ("a-time-thawed-b-kept", "frozen_time", ("a",)),
    ("b-time-kept", "frozen_time", ("a/b",)),
    ("thaw-b", "write", ("a/b/cgroup.freeze", "0")),
    ("b-thawed", "wait_events", ("a/b/cgroup.events", "frozen 0")),
    ("ticker-runs-again", "progress", ()),
    # ------------------------------------------------------------ kill
    ("freeze-a-again", "write", ("a/cgroup.freeze", "1")),
    ("a-frozen-again", "wait_events", ("a/cgroup.events", "frozen 1")),
    ("kill-a", "write", ("a/cgroup.kill", "1")),
    ("ticker-killed", "exit_status", ("ticker",)),
    ("a-emptied", "wait_events", ("a/cgroup.events", "populated 0")),
    ("a-procs-emptied", "read", ("a/b/cgroup.procs",)),
    ("kill-empty", "write", ("a/cgroup.kill", "1")),
    # ------------------------------------------------------------ delegation
    ("sleeper-in-c", "write", ("c/cgroup.procs", "{sleeper}")),
    ("user-kill-not-owner", "write_as_nobody", ("c/cgroup.kill", "1")),
    ("user-freeze-not-owner", "write_as_nobody", ("c/cgroup.freeze", "1")),
    ("chown-freeze", "chown", ("c/cgroup.freeze", str(NOBODY))),
    ("user-freeze", "write_as_nobody", ("c/cgroup.freeze", "1")),
    ("user-frozen", "wait_events", ("c/cgroup.events", "frozen 1")),
    ("user-thaw", "write_as_nobody", ("c/cgroup.freeze", "0")),
    ("chown-kill", "chown", ("c/cgroup.kill", str(NOBODY))),
    ("stat-kill-chowned", "stat", ("c/cgroup.kill",)),
    ("user-kill", "write_as_nobody", ("c/cgroup.kill", "1")),
    ("sleeper-killed", "exit_status", ("sleeper",)),
    ("c-emptied", "wait_events", ("c/cgroup.events", "populated 0")),
    # ------------------------------------------------------------ threaded cgroups
    ("mkdir-d", "mkdir", ("d",)),
    ("mkdir-d-x", "mkdir", ("d/x",)),
    ("x-threaded", "write", ("d/x/cgroup.type", "threaded")),
    ("x-kill", "write", ("d/x/cgroup.kill", "1")),
    ("x-freeze", "write", ("d/x/cgroup.freeze", "1")),
    ("x-frozen", "wait_events", ("d/x/cgroup.events", "frozen 1")),
    ("d-kill", "write", ("d/cgroup.kill", "1")),
    ("rmdir-frozen", "rmdir", ("d/x",)),
    ("root-kill", "exists", ("/cgroup.kill",)),
    ("root-freeze", "exists", ("/cgroup.freeze",)),
    ("root-stat-local", "exists", ("/cgroup.stat.local",)),
]

PRESSURE = "cgroup.pressure cpu.pressure io.pressure memory.pressure"

DIFFERENCES: dict[str, tuple[str, str]] = {
    # label: (kernel, ours); docs/cgroupfs.md explains each
    "files": (
        "cgroup.controllers cgroup.events cgroup.freeze cgroup.kill cgroup.max.depth "
        "cgroup.max.descendants cgroup.pressure cgroup.procs cgroup.stat cgroup.stat.local "
        "cgroup.subtree_control cgroup.threads cgroup.type cpu.pressure cpu.stat "
        "cpu.stat.local io.pressure memory.pressure",
        "cgroup.controllers cgroup.events cgroup.freeze cgroup.kill cgroup.max.depth "
        "cgroup.max.descendants cgroup.procs cgroup.stat cgroup.stat.local "
        "cgroup.subtree_control cgroup.threads cgroup.type",
    ),
    # a file the kernel keeps in its page cache reports its text's length (kernfs: 0)
    "stat-freeze": ("mode 100644 size 0 uid 0 gid 0", "mode 100644 size 2 uid 0 gid 0"),
}


class Side(ScriptTree):
    """Runs the script's operations under ``top``, a child of a v2 hierarchy's root ``root``,
    with processes of its own: ``ScriptTree``'s operations, with results naming those
    processes as the script does (``{ticker}``...) rather than the controller."""

    def __init__(self, root: Path, top: Path, controller: str,
                 procs: dict[str, subprocess.Popen[bytes]], as_user: Callable[..., str]) -> None:
        super().__init__(root, top, controller,
                         {name: proc.pid for name, proc in procs.items()}, as_user)
        self.procs = procs
        ticks = procs["ticker"].stdout
        assert ticks is not None
        self.ticks = ticks.fileno()
        os.set_blocking(self.ticks, False)

    def value(self, text: str) -> str:
        return text.format(**self.pids)

    def normal(self, text: str) -> str:
        for name, pid in self.pids.items():
            text = text.replace(str(pid), "{" + name + "}")
        return text

    def op_write(self, rel: str, data: str) -> str:
        result = super().op_write(rel, data)
        if result.startswith("ok ") and "{" in data:
            return "ok"  # a pid's length is not the file's
        return result

    def op_ls_beyond_controller(self, rel: str) -> str:
        return " ".join(sorted(n for n in os.listdir(self.path(rel))
                               if not n.startswith(self.controller + ".")
                               and not self.path(f"{rel}/{n}").is_dir()))

    def op_stat(self, rel: str) -> str:
        st = os.stat(self.path(rel))
        return f"mode {st.st_mode:o} size {st.st_size} uid {st.st_uid} gid {st.st_gid}"

    def op_exists(self, rel: str) -> str:
        return "yes" if self.path(rel).exists() else "no"

    def op_wait_events(self, rel: str, expected: str) -> str:
        """What ``rel`` (a ``cgroup.events``) says once it says ``expected``, or after 10 s."""
        fd = os.open(self.path(rel), os.O_RDONLY)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLPRI)
            for _ in range(100):
                os.lseek(fd, 0, os.SEEK_SET)
                text = os.read(fd, 4096).decode()
                if expected in text.splitlines():
                    break
                poller.poll(100)  # a notification wakes it at once; a missed one costs 0.1 s
            return text
        finally:
            os.close(fd)

    def op_progress(self) -> str:
        """``runs`` if the ticker writes within ``STILL_FOR`` seconds (what it wrote before is
        drained first), ``still`` if not."""
        while True:
            try:
                if not os.read(self.ticks, 4096):
                    return "gone"
            except BlockingIOError:
                break
        ready, _, _ = select.select([self.ticks], [], [], STILL_FOR)
        return "runs" if ready else "still"

    def op_frozen_time(self, rel: str) -> str:
        """Whether ``frozen_usec`` of ``rel`` is ``zero``, ``grows`` (read twice, 50 ms apart:
        a frozen cgroup's time goes on) or ``stays`` (above zero: a thawed cgroup's)."""
        path = self.path(rel) / "cgroup.stat.local"
        first = int(path.read_text().split()[1])
        time.sleep(0.05)  # time has to pass for frozen time to grow
        second = int(path.read_text().split()[1])
        if second > first:
            return "grows"
        return "zero" if second == 0 else "stays" if second == first else "shrinks"

    def op_exit_status(self, name: str) -> str:
        return str(self.procs[name].wait(10))


def start_processes(spawn) -> dict[str, subprocess.Popen[bytes]]:
    return {"ticker": spawn([sys.executable, "-c", TICKER], stdout=subprocess.PIPE),
            "sleeper": spawn()}


def run_script(side: Side) -> dict[str, str]:
    return {label: side.run(op, args) for label, op, args in SCRIPT}


def test_freeze_and_kill_give_the_kernel_results_apart_from_documented_differences(
        kernel_v2: Path, mounted_v2, spawn, as_user) -> None:  # noqa: F811 (fixtures)
    kernel = run_script(Side(KERNEL_V2, kernel_v2, "hugetlb", start_processes(spawn), as_user))
    _system, mnt = mounted_v2
    (mnt / "ref").mkdir()
    ours = run_script(Side(mnt, mnt / "ref", "ioasids", start_processes(spawn), as_user))
    wrong = []
    for label, _op, _args in SCRIPT:
        expected = DIFFERENCES.get(label, (kernel[label], kernel[label]))
        if (kernel[label], ours[label]) != expected:
            wrong.append(f"{label}: kernel {kernel[label]!r}, ours {ours[label]!r}, "
                         f"expected {expected!r}")
    assert not wrong, "\n".join(wrong)
    # what the script shows, so that a kernel that changed would not pass unnoticed
    assert (kernel["kill-'0'"], kernel["kill-'abc'"], kernel["read-kill"]) == \
        ("ERANGE", "EINVAL", "EINVAL")
    assert (kernel["ticker-frozen"], kernel["ticker-runs-out"], kernel["ticker-killed"]) == \
        ("still", "runs", "-9")


def test_every_freezer_difference_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "cgroupfs.md").read_text()
    labels = {label for label, _op, _args in SCRIPT}
    assert set(DIFFERENCES) <= labels
    missing = [label for label in DIFFERENCES if f"`{label}`" not in doc]
    assert not missing, f"docs/cgroupfs.md does not mention {missing}"
    kernel, ours = DIFFERENCES["files"]
    assert set(PRESSURE.split()) <= set(kernel.split()) - set(ours.split())
    assert all(f"`{name}`" in doc for name in PRESSURE.split())


def test_freezing_and_killing_real_processes_without_a_kernel(mounted_v2, spawn) -> None:  # noqa: F811
    """What the comparison shows, checked on ours alone (machines without cgroup2 too)."""
    _system, mnt = mounted_v2
    (mnt / "a").mkdir()
    (mnt / "a" / "b").mkdir()
    side = Side(mnt, mnt, "ioasids", start_processes(spawn), lambda *args: "")
    (mnt / "a" / "b" / "cgroup.procs").write_text(str(side.procs["ticker"].pid))
    assert side.op_progress() == "runs"
    (mnt / "a" / "cgroup.freeze").write_text("1")
    assert (mnt / "a" / "b" / "cgroup.events").read_text() == "populated 1\nfrozen 1\n"
    assert side.op_progress() == "still"
    (mnt / "a" / "cgroup.freeze").write_text("0")
    assert side.op_progress() == "runs"
    with pytest.raises(OSError) as refused:
        (mnt / "a" / "cgroup.kill").write_text("2")
    assert refused.value.errno == errno.ERANGE
    (mnt / "a" / "cgroup.kill").write_text("1")
    assert side.procs["ticker"].wait(10) == -9


def frozen_events(top: Path) -> list[bool]:
    """Whether a watcher of ``top/f/cgroup.events`` sees a change when ``f`` is frozen, when it
    is asked again (nothing turns), and when it is thawed."""
    (top / "f").mkdir()
    seen = []
    watcher = Inotify()
    try:
        watcher.watch(top / "f" / "cgroup.events")
        (top / "f" / "cgroup.freeze").write_text("1")
        seen.append(watcher.modified(10))
        (top / "f" / "cgroup.freeze").write_text("1")
        seen.append(watcher.modified(0.5))
        (top / "f" / "cgroup.freeze").write_text("0")
        seen.append(watcher.modified(10))
    finally:
        watcher.close()
    return seen


def test_frozen_is_notified_as_the_kernels_is(kernel_v2: Path, mounted_v2) -> None:  # noqa: F811
    kernel = frozen_events(kernel_v2)
    _system, mnt = mounted_v2
    ours = frozen_events(mnt)
    assert kernel == [True, False, True]
    assert ours == kernel
