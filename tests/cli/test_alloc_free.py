"""``ioasidctl alloc`` and ``ioasidctl free`` as real processes against ``/dev/ioasid`` device in
this process (``userapi.helpers.Served``, each profile), not the module's daemon of
``conftest.device``: the fixtures here are ``device`` and ``device_two``."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from userapi.helpers import Served, serving

IOASIDCTL = str(Path(sys.executable).with_name("ioasidctl"))


@pytest.fixture(params=["fixed", "v4"])
def device(request: pytest.FixtureRequest, tmp_path) -> Iterator[Served]:
    with serving(request.param, str(tmp_path)) as s:
        yield s


@pytest.fixture(params=["fixed", "v4"])
def device_two(request: pytest.FixtureRequest, tmp_path) -> Iterator[Served]:
    """Where two processes can open: in v4 with the quota-0 grab switched off."""
    with serving(request.param, str(tmp_path), two=True) as s:
        yield s


def ctl(device: Served | None, *args: str,
        runtime: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, IOASIDS_RUNTIME_DIR=runtime or device.runtime)
    return subprocess.run([IOASIDCTL, *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_alloc_prints_ids_and_frees_them_at_exit(device: Served) -> None:
    done = ctl(device, "alloc", "--count", "3", "--range", "10-20")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["10", "11", "12"]
    assert device.changes.wait_for(lambda: len(device.system.core) == 0)


def test_alloc_batch(device: Served) -> None:
    done = ctl(device, "alloc", "--batch", "-n", "4", "--range", "0x10-0x100")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["16", "17", "18", "19"]


def test_alloc_refused_one_line_and_status_1(device: Served) -> None:
    """Another process holds ID 7. fixed: ALLOC in 7-7 finds the range full (ENOSPC). v4: the
    other process's quota-0 set took the pool, so even the open fails with ENOSPC."""
    a = device.agent()
    a.ok("open")
    assert a.ok("alloc 7 7") == [7]
    done = ctl(device, "alloc", "--range", "7-7")
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    if device.system.knobs.profile == "fixed":
        assert done.stderr.startswith("ioasidctl: alloc: No space left on device (ENOSPC: ")
    else:
        assert done.stderr.startswith("ioasidctl: cannot open /dev/ioasid: No space left")


def test_hold_keeps_until_killed(device: Served) -> None:
    cg = device.cgroup("t", 5)
    env = dict(os.environ, IOASIDS_RUNTIME_DIR=device.runtime)
    holder = subprocess.Popen([IOASIDCTL, "alloc", "-n", "2", "--hold"], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        device.system.write_procs("t", str(holder.pid), writer_pid=holder.pid, writer_uid=0)
    except Exception:
        holder.kill()
        raise
    try:
        assert select.select([holder.stdout], [], [], 30)[0]
        ids = [int(holder.stdout.readline()), int(holder.stdout.readline())]
        assert all(i in device.system.core for i in ids)
        assert holder.poll() is None  # still holding
    finally:
        holder.terminate()
        holder.wait()
    assert device.changes.wait_for(lambda: len(device.system.core) == 0)
    assert cg.counter == (2 if device.system.knobs.uncharge_skips_defunct_mm else 0)


def test_free_of_someone_elses_id(device_two: Served) -> None:
    """A fresh process owns no IOASID: fixed refuses (EACCES, ENOENT), v4 answers success."""
    device = device_two
    a = device.agent()
    a.ok("open")
    ioasid = a.ok("alloc 1 100")[0]
    done = ctl(device, "free", str(ioasid), "999")
    if device.system.knobs.user_errors == "distinct":
        assert done.returncode == 1
        lines = done.stderr.splitlines()
        assert len(lines) == 2
        assert lines[0].startswith(f"ioasidctl: free {ioasid}: Permission denied")
        assert lines[1].startswith("ioasidctl: free 999: No such file or directory")
    else:
        assert done.returncode == 0 and done.stderr == ""
    assert ioasid in device.system.core


def test_no_daemon(tmp_path) -> None:
    done = ctl(None, "alloc", runtime=str(tmp_path))
    assert done.returncode == 1
    assert done.stderr == f"ioasidctl: no daemon: {tmp_path}/ioasid.sock does not exist\n"


def test_bad_arguments_one_line(tmp_path) -> None:
    for args in (["alloc", "--range", "9-1"], ["alloc", "--count", "0"], ["free"],
                 ["free", "-3"]):
        done = ctl(None, *args, runtime=str(tmp_path))
        assert done.returncode == 2, args
        assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("ioasidctl: ")
