"""``ioasidsd.host``: the one reader of ``/proc`` process files and ``boot_id``."""

from __future__ import annotations

import ast
import builtins
import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import cgroupfs
import ioasidsd
from ioasidsd import host
from ioasidsd.host import ProcStat, read_stat
from ioasidsd.model.errors import IoasidError
from ioasidsd.userapi.server import process_exiting

NO_PID = 2**22 + 12345  # beyond pid_max: never a process

# ---------------------------------------------------------------------- processes
def test_stat_of_this_process_and_of_none() -> None:
    stat = read_stat(os.getpid())
    assert stat is not None and stat.running and not stat.exiting
    assert stat.ppid == os.getppid()
    assert (stat.pgid, stat.sid) == (os.getpgid(0), os.getsid(0))
    assert 0 < stat.start_time <= host.process_clock()
    assert read_stat(NO_PID) is None


def test_exiting_is_a_zombie_a_dead_task_or_pf_exiting() -> None:
    def stat(state: bytes, flags: int = 0) -> ProcStat:
        return ProcStat(state, 1, 1, 1, flags, 1.0)

    assert not stat(b"S").exiting and not stat(b"R").exiting
    assert stat(b"S", host.PF_EXITING).exiting
    assert all(stat(state).exiting for state in (b"Z", b"X", b"x"))


def test_process_exiting_reads_the_stat() -> None:
    """The socket face's question (``process_exiting``) is answered from ``read_stat``: a
    running process is not exiting, a zombie (exited, not reaped) and a pid with no process
    are."""
    assert not process_exiting(os.getpid())
    assert process_exiting(NO_PID)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie
        assert read_stat(child.pid).state == b"Z"
        assert process_exiting(child.pid)
    finally:
        child.wait()


def test_a_process_gone_is_none_or_esrch_for_every_read(monkeypatch) -> None:
    """Every process read of the module, on a pid with no process and on a process whose files
    fail with ESRCH after the open (it exited meanwhile): ``None``, ``False``, empty, ESRCH."""
    source = host.ProcessSource()

    def check(pid: int) -> None:
        assert read_stat(pid) is None
        assert source.stat(pid) is None
        assert source.parent(pid) is None
        assert not source.alive(pid, 0.0)
        assert source.thread_ids(pid) == []
        with pytest.raises(IoasidError) as info:
            source.facts(pid)
        assert info.value.errno == errno.ESRCH

    check(NO_PID)

    class Vanishing:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, *args):
            raise ProcessLookupError(errno.ESRCH, "No such process")

        def __iter__(self):
            raise ProcessLookupError(errno.ESRCH, "No such process")

    real_open, real_listdir = builtins.open, os.listdir

    def vanishing_listdir(path):
        if str(path).startswith("/proc/"):
            raise ProcessLookupError(errno.ESRCH, "No such process")
        return real_listdir(path)

    monkeypatch.setattr("ioasidsd.host.open",
                        lambda path, *a, **k: Vanishing() if str(path).startswith("/proc/")
                        else real_open(path, *a, **k), raising=False)
    monkeypatch.setattr(host.os, "listdir", vanishing_listdir)
    check(os.getpid())


def test_this_process_facts_and_threads() -> None:
    facts = host.ProcessSource().facts(os.getpid())
    assert facts.tgid == os.getpid() and facts.ppid == os.getppid()
    assert facts.uids == os.getresuid()
    assert os.getpid() in host.ProcessSource().thread_ids(os.getpid())


def test_boot_id_and_clock() -> None:
    assert uuid.UUID(host.boot_id()) and host.boot_id() == host.boot_id()
    before = host.process_clock()
    assert host.process_clock() >= before


# ---------------------------------------------------------------------- the one reader
PACKAGE_ROOTS = (Path(ioasidsd.__file__).parent, Path(cgroupfs.__file__).parent)


def literals(path: Path) -> list[tuple[int, str]]:
    """The string literals of ``path`` that are not documentation (a string statement)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docs]


def test_no_other_module_names_the_files_host_reads() -> None:
    """Only ``ioasidsd/host.py`` names ``/proc`` paths or ``boot_id`` in code (mountinfo is
    still read in two places)."""
    here = Path(host.__file__)
    named = [f"{path}:{line}: {text!r}"
             for root in PACKAGE_ROOTS for path in sorted(root.rglob("*.py")) if path != here
             for line, text in literals(path)
             if ("/proc" in text and "mountinfo" not in text) or "boot_id" in text]
    assert named == []
    assert any("/proc/" in text for _, text in literals(here))  # the scan sees literals
