"""Real processes through the mount: listing, moving, the writer's own pid, permissions,
threads, and exits the model was not told about."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

from ioasidsd.system import System

NOBODY = 65534


def ids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().splitlines()]


def put(path: Path, data: str) -> str:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        return "open " + errno.errorcode[exc.errno]
    try:
        return f"ok {os.write(fd, data.encode())}"
    except OSError as exc:
        return errno.errorcode[exc.errno]
    finally:
        os.close(fd)


def test_root_lists_the_machine_and_a_move_takes_a_process_out(mounted: Path, spawn) -> None:
    child = spawn()
    (mounted / "a").mkdir()
    root = ids(mounted / "cgroup.procs")
    assert root == sorted(set(root))
    assert child.pid in root and os.getpid() in root and 1 in root
    assert put(mounted / "a" / "cgroup.procs", f"{child.pid}\n") == f"ok {len(str(child.pid)) + 1}"
    assert ids(mounted / "a" / "cgroup.procs") == [child.pid]
    assert ids(mounted / "a" / "tasks") == [child.pid]
    assert child.pid not in ids(mounted / "cgroup.procs")
    assert child.pid not in ids(mounted / "tasks")
    assert put(mounted / "cgroup.procs", str(child.pid)) == f"ok {len(str(child.pid))}"
    assert ids(mounted / "a" / "cgroup.procs") == []
    assert child.pid in ids(mounted / "cgroup.procs")


def test_tasks_lists_every_thread(mounted: Path, spawn) -> None:
    code = ("import threading, time\n"
            "for _ in range(3):\n"
            "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    child = spawn([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    threads = sorted(int(t) for t in os.listdir(f"/proc/{child.pid}/task"))
    assert len(threads) == 4
    (mounted / "a").mkdir()
    (mounted / "a" / "cgroup.procs").write_text(str(child.pid))
    assert ids(mounted / "a" / "tasks") == threads
    assert ids(mounted / "a" / "cgroup.procs") == [child.pid]
    # A thread id written to tasks moves its whole process (the model tracks processes).
    (mounted / "b").mkdir()
    (mounted / "b" / "tasks").write_text(str(threads[-1]))
    assert ids(mounted / "b" / "tasks") == threads
    assert ids(mounted / "a" / "tasks") == []


def test_pid_zero_moves_the_writer(mounted: Path, spawn) -> None:
    (mounted / "a").mkdir()
    procs = mounted / "a" / "cgroup.procs"
    child = spawn(["sh", "-c", 'echo 0 > "$1"; echo $?; exec sleep 60', "sh", str(procs)],
                  stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"0\n"
    assert ids(procs) == [child.pid]


def test_move_errnos(mounted: Path, spawn) -> None:
    (mounted / "a").mkdir()
    procs = mounted / "a" / "cgroup.procs"
    gone = spawn(["true"])
    gone.wait()
    assert put(procs, str(gone.pid)) == "ESRCH"
    assert put(procs, "abc") == "EINVAL"
    assert put(procs, "-1") == "EINVAL"
    assert put(procs, "1 2") == "EINVAL"
    assert put(procs, "2") == "EINVAL"  # kthreadd may not move
    assert ids(procs) == []


def test_a_user_moves_only_its_own_processes(mounted: Path, spawn, as_user) -> None:
    mine = spawn(user=NOBODY, group=NOBODY, extra_groups=[])
    roots = spawn()
    (mounted / "a").mkdir()
    os.chown(mounted / "a" / "cgroup.procs", NOBODY, NOBODY)
    assert as_user(NOBODY, "write", mounted / "a" / "cgroup.procs", str(roots.pid)) == "EACCES"
    assert as_user(NOBODY, "write", mounted / "a" / "cgroup.procs", str(mine.pid)).startswith("ok")
    assert as_user(NOBODY, "write", mounted / "a" / "tasks", str(mine.pid)) == "open EACCES"
    assert ids(mounted / "a" / "cgroup.procs") == [mine.pid]


def test_an_unreported_exit_is_not_listed_and_does_not_block_rmdir(mounted: Path, spawn,
                                                                   system: System) -> None:
    child = spawn()
    (mounted / "a").mkdir()
    (mounted / "a" / "cgroup.procs").write_text(str(child.pid))
    assert errno.errorcode[_rmdir_errno(mounted / "a")] == "EBUSY"
    child.kill()
    child.wait()  # reaped; nobody told the model
    assert system.cgroups.process(child.pid) is not None
    assert ids(mounted / "a" / "cgroup.procs") == []
    assert child.pid not in ids(mounted / "cgroup.procs")
    os.rmdir(mounted / "a")
    assert system.cgroups.process(child.pid) is None


def _rmdir_errno(path: Path) -> int:
    try:
        os.rmdir(path)
    except OSError as exc:
        return exc.errno
    return 0
