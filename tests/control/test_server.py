"""The control server serves every connection from one thread, in order, and a client that does
not read its replies stalls only itself."""

from __future__ import annotations

import json
import socket
import threading

import pytest
import structlog

from ioasidsd.control.client import ControlClient
from ioasidsd.control.server import ControlServer


@pytest.fixture
def server(tmp_path):
    calls: list[int] = []

    def count(request, peer):
        calls.append(request.get("n", 0))
        return {"n": request.get("n", 0), "pad": "x" * int(request.get("pad", 0))}

    srv = ControlServer(tmp_path / "control.sock", {"count": count}, structlog.get_logger())
    srv.start()
    yield srv, tmp_path / "control.sock", calls
    srv.stop()


def test_connections_do_not_take_a_thread_each(server) -> None:
    srv, path, _ = server
    before = threading.active_count()
    socks = []
    for i in range(40):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(path))
        s.sendall(json.dumps({"verb": "count", "n": i}).encode() + b"\n")
        socks.append(s)
    for i, s in enumerate(socks):
        reply = json.loads(s.makefile("rb").readline())
        assert reply == {"ok": True, "result": {"n": i, "pad": ""}}
    assert srv.connections == 40
    assert threading.active_count() == before
    for s in socks:
        s.close()


def test_a_client_that_does_not_read_stalls_only_itself(server) -> None:
    """A client sends requests whose replies (1 MiB each) it never reads: its later requests
    wait, and another client is answered meanwhile."""
    _srv, path, calls = server
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(str(path))
    hog.setblocking(False)
    request = json.dumps({"verb": "count", "n": -1, "pad": 1 << 20}).encode() + b"\n"
    for _ in range(8):
        try:
            hog.send(request)
        except BlockingIOError:
            break
    assert ControlClient(path, timeout=10).call("count", n=7) == {"n": 7, "pad": ""}
    assert 7 in calls and calls.count(-1) < 8  # the hog's later requests wait for its reads
    hog.close()


def test_requests_on_one_connection_are_answered_in_order(server) -> None:
    _srv, path, _ = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(b"".join(json.dumps({"verb": "count", "n": i}).encode() + b"\n"
                           for i in range(100)))
        f = s.makefile("rb")
        assert [json.loads(f.readline())["result"]["n"] for _ in range(100)] == list(range(100))
