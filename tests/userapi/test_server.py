"""The /dev/ioasid server with real client processes, over an in-process System."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
from errno import (
    EACCES,
    EAGAIN,
    EBUSY,
    EFAULT,
    EINVAL,
    EMSGSIZE,
    ENODEV,
    ENOENT,
    ENOSPC,
    ENOTTY,
    EPERM,
)
from pathlib import Path

import pytest

from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.userapi import protocol
from ioasidsd.userapi.client import IoasidClient

from .helpers import MAX31, Served


class RawConn:
    """A client on a raw socket, for frames the Python client would never send."""

    def __init__(self, served: Served) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(served.server.path)
        self.buf = b""

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk

    def reply(self) -> tuple[int, bytes]:
        self._fill(protocol.REPLY.size)
        ret, length = protocol.REPLY.unpack_from(self.buf)
        end = protocol.REPLY.size + length
        self._fill(end)
        data, self.buf = self.buf[protocol.REPLY.size:end], self.buf[end:]
        return ret, data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        """Close and wait until the server has released the file."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        self.sock.close()


def test_socket_is_world_writable(served: Served) -> None:
    mode = os.stat(served.server.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o666


def test_version_info_alloc_free_from_a_real_process(served: Served) -> None:
    a = served.agent()
    a.ok("open")
    assert a.ok("version") == [0]
    assert a.ok("info") == [31]
    first = a.ok("alloc 1 100")[0]
    assert first == 1 and a.ok("alloc 1 100") == [2]
    proc = served.system.cgroups.process(a.pid)
    assert served.system.core.find_mm_set(proc.mm).nr_ioasids == 2
    a.ok(f"free {first}")
    assert first not in served.system.core
    assert "set" in served.changes.kinds() and "ioasid" in served.changes.kinds()


def test_bad_requests_errnos(served: Served) -> None:
    """Each bad request's errno, as a real process sees it."""
    distinct = served.system.knobs.user_errors == "distinct"
    served.cgroup("lim", 2)
    a = served.agent("lim")
    a.ok("open")
    assert a.err("alloc 10 9") == EINVAL
    assert a.err(f"alloc 1 {1 << 31}") == EINVAL
    assert a.err(f"alloc {1 << 31} {1 << 31}") == EINVAL
    a.ok("alloc 1 1")
    assert a.err("alloc 1 1") == (ENOSPC if distinct else EINVAL)  # range exhausted
    a.ok("alloc 2 10")
    assert a.err("alloc 2 10") == (EAGAIN if distinct else EINVAL)  # cgroup limit
    assert a.err("free -5") == EINVAL
    if distinct:
        assert a.err("free 77") == ENOENT
    else:
        a.ok("free 77")


def test_malformed_frames(served_fixed: Served) -> None:
    """argsz, flags, short arguments, unknown commands and oversized frames, on a raw socket;
    the connection stays usable after each."""
    sock = RawConn(served_fixed)
    assert sock.reply() == (0, b"")
    cases = [
        (uapi.IOASID_GET_INFO, uapi.INFO.pack(11, 0, 0), EINVAL),
        (uapi.IOASID_GET_INFO, uapi.INFO.pack(12, 1, 0), EINVAL),
        (uapi.IOASID_REQUEST_ALLOC, uapi.ALLOC_REQUEST.pack(15, 0, 1, 2), EINVAL),
        (uapi.IOASID_REQUEST_ALLOC, uapi.ALLOC_REQUEST.pack(16, 4, 1, 2), EINVAL),
        (uapi.IOASID_REQUEST_ALLOC, b"\x10\x00\x00\x00", EFAULT),
        (uapi.IOASID_REQUEST_FREE, b"", EFAULT),
        (0x6999, b"", ENOTTY),
        (uapi.IOASID_BIND_GPASID, uapi.BIND_GPASID.pack(32, 0, 1, 1, 0x10, 48, 0), ENODEV),
    ]
    for cmd, arg, want in cases:
        sock.send(protocol.request(cmd, arg))
        ret, message = sock.reply()
        assert ret == -want, (hex(cmd), arg, ret, message)
        assert message  # the daemon says why
    big = protocol.MAX_ARG + 1
    sock.send(protocol.REQUEST.pack(uapi.IOASID_REQUEST_FREE, big))
    sock.send(b"\0" * big)
    assert sock.reply()[0] == -EMSGSIZE
    sock.send(protocol.request(uapi.IOASID_GET_API_VERSION))
    assert sock.reply() == (0, b"")
    sock.close()


def test_pipelined_requests_answered_in_order(served_fixed: Served) -> None:
    sock = RawConn(served_fixed)
    sock.reply()
    alloc = uapi.ALLOC_REQUEST.pack(16, 0, 1, 100)
    frames = b"".join(protocol.request(uapi.IOASID_REQUEST_ALLOC, alloc) for _ in range(50))
    sock.send(frames[:7])  # split inside a header
    sock.send(frames[7:])
    assert [sock.reply()[0] for _ in range(50)] == list(range(1, 51))
    sock.close()


def test_garbage_does_not_kill_the_server(served_fixed: Served) -> None:
    for junk in (b"\xff" * 3, os.urandom(4096), protocol.REQUEST.pack(0x6966, 10) + b"x"):
        sock = RawConn(served_fixed)
        sock.reply()
        sock.send(junk)
        sock.close()
        assert served_fixed.server.connections == 0
    with IoasidClient.open(served_fixed.runtime) as dev:
        assert dev.get_api_version() == 0


def test_one_open_per_process(served: Served) -> None:
    with IoasidClient.open(served.runtime) as dev:
        with pytest.raises(OSError) as info:
            IoasidClient.open(served.runtime)
        assert info.value.errno == EBUSY
        assert dev.alloc() >= 0
    assert served.changes.wait_for(lambda: len(served.system.core) == 0)
    with IoasidClient.open(served.runtime):  # the close released it
        pass


def test_close_frees_everything(served: Served) -> None:
    served.cgroup("t", 10)
    a = served.agent("t")
    a.ok("open")
    ids = [a.ok("alloc 1 100")[0] for _ in range(3)]
    cg = served.system.cgroups.lookup("t")
    assert cg.counter == 3 and all(i in served.system.core for i in ids)
    a.ok("close")
    assert served.changes.wait_for(lambda: len(served.system.core) == 0)
    assert cg.counter == 0


def test_kill_9_frees_everything(served: Served) -> None:
    """The process's exit releases its file. fixed: the charges go; v4: the exiting mm is gone
    when the file is released, so its charges leak (quirk 7)."""
    served.cgroup("t", 10)
    a = served.agent("t")
    a.ok("open")
    a.ok("batch 4 1 100")
    cg = served.system.cgroups.lookup("t")
    assert cg.counter == 4
    a.kill()
    assert served.changes.wait_for(lambda: len(served.system.core) == 0)
    assert served.changes.wait_for(lambda: "exit" in served.changes.kinds())
    assert served.system.cgroups.process(a.pid) is None  # handled as the exit
    assert cg.counter == (4 if served.system.knobs.uncharge_skips_defunct_mm else 0)


def test_two_processes_cannot_free_each_others(served_two: Served) -> None:
    a, b = served_two.agent(), served_two.agent()
    a.ok("open")
    b.ok("open")
    ia, ib = a.ok("alloc 1 100")[0], b.ok("alloc 1 100")[0]
    if served_two.system.knobs.user_errors == "distinct":
        assert a.err(f"free {ib}") == EACCES
        assert b.err(f"free {ia}") == EACCES
        assert b.err(f"freebatch {ia}") == EACCES
    else:
        a.ok(f"free {ib}")  # the series answers 0 and frees nothing
        b.ok(f"free {ia}")
    assert ia in served_two.system.core and ib in served_two.system.core


def test_second_opener_in_v4_gets_enospc(tmp_path) -> None:
    served = Served("v4", str(tmp_path))
    try:
        a, b = served.agent(), served.agent()
        a.ok("open")
        assert b.err("open") == ENOSPC
        assert b.err("open") == ENOSPC  # and the server is still fine
        assert a.ok("alloc 1 10") == [1]
    finally:
        served.close()


def test_inherited_connection_used_by_a_child(served: Served) -> None:
    """A forked child uses its parent's connection (the sender's pid comes with each message).
    fixed: EPERM. v4: ALLOC fails at the cgroup charge (EINVAL), FREE goes through."""
    a = served.agent()
    a.ok("open")
    ioasid, _keep = a.ok("batch 2 1 100")  # two, so that v4's set outlives the child's free
    if served.system.knobs.user_errors == "distinct":
        assert a.err("child alloc 1 100") == EPERM
        assert a.err(f"child free {ioasid}") == EPERM
        assert a.ok("child info") == [31]
        assert ioasid in served.system.core
    else:
        assert a.err("child alloc 1 100") == EINVAL
        a.ok(f"child free {ioasid}")
        assert ioasid not in served.system.core
    assert a.ok("alloc 1 100")[0] >= 1  # the parent still owns its file


def test_batches_over_the_socket(served: Served) -> None:
    served.cgroup("t", 1000)
    a = served.agent("t")
    a.ok("open")
    ids = a.ok("batch 500 10 100000")
    assert ids == list(range(10, 510))
    assert served.system.cgroups.lookup("t").counter == 500
    assert a.ok("freebatch " + " ".join(map(str, ids[:250]))) == [250]
    assert served.system.cgroups.lookup("t").counter == 250
    assert a.err("batch 751 1 100000") == (
        EAGAIN if served.system.knobs.user_errors == "distinct" else EINVAL)
    assert served.system.cgroups.lookup("t").counter == 250


def test_large_batch_in_one_request(served_fixed: Served) -> None:
    with IoasidClient.open(served_fixed.runtime) as dev:
        ids = dev.alloc_batch(uapi.IOASID_BATCH_MAX)
        assert ids == list(range(1, uapi.IOASID_BATCH_MAX + 1))
        assert dev.free_batch(ids) == uapi.IOASID_BATCH_MAX
        assert dev.alloc(1, MAX31) == 1


def test_stop_keeps_the_files(served_fixed: Served) -> None:
    """Stopping the server (daemon shutdown) ends the connections without releasing: the IDs
    stay for the durable state."""
    a = served_fixed.agent()
    a.ok("open")
    ioasid = a.ok("alloc 1 100")[0]
    served_fixed.server.stop()
    assert not os.path.exists(served_fixed.server.path)
    assert served_fixed.server.connections == 0
    assert ioasid in served_fixed.system.core


def test_a_c_program_speaks_the_documented_protocol(served: Served, tmp_path) -> None:
    """c_client.c is written from docs/ioasid-protocol.md alone."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    exe = tmp_path / "c_client"
    subprocess.run([cc, "-Wall", "-Werror", "-o", str(exe),
                    str(Path(__file__).with_name("c_client.c"))], check=True, timeout=60)
    done = subprocess.run([str(exe), served.server.path, "5", "9"], capture_output=True,
                          text=True, timeout=30, check=True)
    second_free = -ENOENT if served.system.knobs.user_errors == "distinct" else 0
    assert done.stdout.splitlines() == [
        "open 0", "version 0", "info 0 31", "alloc 5", f"badflags {-EINVAL}", "free 0",
        f"free {second_free}",
    ]


def test_a_client_that_does_not_read_stalls_only_itself(served_fixed: Served) -> None:
    """Eight batch replies (2 MiB) pile up unread: the server keeps them for that client, which
    gets them all in order later, while another client is served meanwhile."""
    sock = RawConn(served_fixed)
    sock.reply()
    batch = protocol.request(uapi.IOASID_REQUEST_ALLOC_BATCH,
                             uapi.ALLOC_BATCH.pack(20, 0, 1, MAX31, uapi.IOASID_BATCH_MAX))
    sock.send(batch * 8)
    other = served_fixed.agent()
    other.ok("open")
    assert other.ok("version") == [0]  # not stuck behind the stalled client
    for i in range(8):
        ret, data = sock.reply()
        assert ret == uapi.IOASID_BATCH_MAX
        ids = memoryview(data).cast("I")
        assert (ids[0], ids[-1]) == (i * 65536 + 1, (i + 1) * 65536)
    sock.close()
    assert served_fixed.changes.wait_for(lambda: served_fixed.system.core.capacity_avail
                                         == served_fixed.system.core.capacity)


def test_a_client_gone_with_replies_unread_is_released(served_fixed: Served) -> None:
    sock = RawConn(served_fixed)
    sock.reply()
    batch = protocol.request(uapi.IOASID_REQUEST_ALLOC_BATCH,
                             uapi.ALLOC_BATCH.pack(20, 0, 1, MAX31, uapi.IOASID_BATCH_MAX))
    sock.send(batch * 4)
    system = served_fixed.system
    assert served_fixed.changes.wait_for(lambda: len(system.core) >= 2 * 65536)
    sock.sock.close()  # without reading: the server's pending replies have no reader
    assert served_fixed.changes.wait_for(lambda: len(system.core) == 0)
    assert served_fixed.server.connections == 0


def test_a_refusal_through_the_socket_names_the_real_process_and_its_uid(
        served_fixed: Served) -> None:
    served_fixed.cgroup("lim", 1)
    a = served_fixed.agent("lim")
    a.ok("open")
    a.ok("alloc 1 10")
    assert a.err("alloc 1 10") == EAGAIN
    refusal = served_fixed.changes.log[-1].refusal  # reported before the reply was sent
    assert refusal is not None
    assert (refusal.pid, refusal.uid, refusal.cgroup, refusal.level, refusal.errno) == (
        a.pid, os.getuid(), "/lim", "/lim", EAGAIN)
