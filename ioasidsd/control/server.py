"""The control API's server: JSON requests and replies on the unix socket
``RUNTIME_DIR/control.sock`` (the wire format: ``ioasidsd.control.protocol``).

Verbs are functions ``handler(request, peer) -> result`` registered by name; ``peer`` holds the
caller's pid, uid and gid from ``SO_PEERCRED``, for verbs that must check who asks. A handler's
``IoasidError`` becomes its errno name; any other failure is logged and answered ``EIO``.
Malformed requests get an error reply; a connection never ends the daemon. A uid other than
root holds at most ``max_connections_per_uid`` connections (``ioasidsd.clients``): one more is
answered ``{"ok": false, "error": "EAGAIN", ...}`` and closed; the log lines a client's
requests cause are rate-limited per uid.

``ioasidsd.control.client.ControlClient`` is the other end, for ``ioasidctl``; the verbs the
daemon serves are in ``ioasidsd.control.verbs``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import select
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ioasidsd.clients import (
    CLIENT_LOG_LIMIT,
    ConnectionCap,
    Peer,
    SocketServer,
    client_context,
    peer_of,
)
from ioasidsd.control.protocol import MAX_REQUEST
from ioasidsd.eventloop import EventLoop
from ioasidsd.model.errors import IoasidError

__all__ = ["ControlServer", "Handler"]

DEFAULT_CAP = 64
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT

Handler = Callable[[dict[str, Any], Peer], Any]


_TOO_LONG = {"ok": False, "error": "E2BIG", "message": "request too long"}


def _error(code: int, message: str) -> dict[str, Any]:
    return {"ok": False, "error": errno.errorcode.get(code, "EIO"), "message": message}


class _Connection:
    """One client: its socket, who it is, what it sent that is not a whole line yet, and the
    replies it has not read yet."""

    __slots__ = ("closing", "inbox", "outbox", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: Peer) -> None:
        self.sock = sock
        self.peer = peer
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.closing = False  # close once the outbox is sent


class ControlServer(SocketServer):
    """Serves ``handlers`` on the socket at ``path`` (mode 0666: verbs check ``peer``) on
    ``loop``, the ``EventLoop`` the daemon shares with the user API (started by its owner), or
    without one on a loop and thread of the server's own: every connection is a non-blocking
    socket on that loop, requests are answered in the order they arrive, and a client that does
    not read its replies stalls only itself (its further requests wait). At most ``cap``
    connections (default: 64 for each uid but root's). ``start`` binds (replacing a socket left
    by a killed daemon) and serves, ``OSError`` if the socket cannot be created; ``stop`` stops
    accepting, closes the open connections (replies not sent are dropped), closes and removes
    the socket (``ioasidsd.clients.SocketServer``).
    """

    def __init__(self, path: str | Path, handlers: dict[str, Handler], log: Any, *,
                 cap: ConnectionCap | None = None, loop: EventLoop | None = None) -> None:
        super().__init__(Path(path), 0o666, log, what="control", loop=loop)
        self.path: Path
        self.handlers = handlers
        self.cap = cap or ConnectionCap(DEFAULT_CAP)
        self._conns: dict[int, _Connection] = {}

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def _new_loop(self) -> EventLoop:
        return EventLoop(self.log, name="control")

    def close_connections(self) -> None:
        """On the loop's thread, when the server stops: close every connection (replies not
        sent are dropped)."""
        for conn in list(self._conns.values()):
            self._close(conn)

    # ------------------------------------------------------------------ the loop
    def _on_ready(self, fd: int, events: int) -> None:
        conn = self._conns.get(fd)
        if conn is None:
            return
        try:
            if events & _OUT:
                self._flush(conn)
            if events & _IN and not conn.outbox and fd in self._conns:
                self._receive(conn)
        except Exception:  # a bug must not end the server: drop this connection
            self.log.exception("control connection failed", pid=conn.peer.pid)
            self._close(conn)

    def _admit(self, sock: socket.socket) -> None:
        try:
            peer = peer_of(sock)
        except OSError:
            sock.close()
            return
        why = self.cap.admit(peer.uid)
        if why is not None:
            with client_context(peer.uid):
                self.log.warning("control connection refused", pid=peer.pid, reason=why)
            with contextlib.suppress(OSError):
                sock.settimeout(0.5)
                self._refuse(sock, errno.EAGAIN, why)
            sock.close()
            return
        sock.setblocking(False)
        conn = _Connection(sock, peer)
        self._conns[sock.fileno()] = conn
        assert self._loop is not None
        self._loop.register(sock.fileno(), _IN, self._on_ready)

    def _refuse(self, sock: socket.socket, code: int, message: str) -> None:
        sock.sendall(json.dumps(_error(code, message)).encode() + b"\n")

    # ------------------------------------------------------------------ one connection
    def _receive(self, conn: _Connection) -> None:
        """Read what the client sent, then answer what can be answered."""
        try:
            data = conn.sock.recv(MAX_REQUEST + 1)
        except BlockingIOError:
            return
        except OSError:  # ECONNRESET: the client went away
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.inbox += data
        self._work(conn)

    def _work(self, conn: _Connection) -> None:
        """Answer the whole request lines received, one at a time, while the client reads its
        replies; then wait for the socket as the state requires (to send, or to read)."""
        with client_context(conn.peer.uid):
            while not conn.outbox and not conn.closing:
                end = conn.inbox.find(b"\n")
                if end < 0:
                    if len(conn.inbox) > MAX_REQUEST:
                        self._queue(conn, _TOO_LONG)
                        conn.closing = True
                    break
                line = bytes(conn.inbox[: end + 1])
                del conn.inbox[: end + 1]
                if len(line) > MAX_REQUEST:
                    self._queue(conn, _TOO_LONG)
                    conn.closing = True
                elif line.strip():
                    self._queue(conn, self.answer(line, conn.peer))
                if not self._send(conn):
                    return
        loop = self._loop
        assert loop is not None
        if conn.outbox:
            loop.modify(conn.sock.fileno(), _OUT)
        elif conn.closing:
            self._close(conn)
        else:
            loop.modify(conn.sock.fileno(), _IN)

    def _queue(self, conn: _Connection, reply: dict[str, Any]) -> None:
        conn.outbox += json.dumps(reply).encode() + b"\n"

    def _send(self, conn: _Connection) -> bool:
        """Send what the socket takes of the outbox; ``False`` if the client is gone (the
        connection is closed then)."""
        if not conn.outbox:
            return True
        try:
            sent = conn.sock.send(conn.outbox)
        except BlockingIOError:
            return True
        except OSError:
            self._close(conn)
            return False
        del conn.outbox[:sent]
        return True

    def _flush(self, conn: _Connection) -> None:
        """The socket can take more: send, and once the outbox is empty go on answering."""
        if self._send(conn):
            self._work(conn)

    def _close(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if self._conns.pop(fd, None) is None:
            return
        if self._loop is not None:
            self._loop.unregister(fd)
        conn.sock.close()
        self.cap.leave(conn.peer.uid)
        CLIENT_LOG_LIMIT.flush(conn.peer.uid)

    def answer(self, line: bytes, peer: Peer) -> dict[str, Any]:
        """The reply to one request line from ``peer``."""
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "EINVAL", "message": "not a JSON request"}
        if not isinstance(request, dict) or not isinstance(request.get("verb"), str):
            return {"ok": False, "error": "EINVAL", "message": "a request needs a verb"}
        verb = request["verb"]
        handler = self.handlers.get(verb)
        if handler is None:
            return {"ok": False, "error": "EINVAL", "message": f"unknown verb {verb!r}"}
        try:
            return {"ok": True, "result": handler(request, peer)}
        except IoasidError as exc:
            return {"ok": False, "error": exc.name, "message": exc.strerror}
        except Exception:
            self.log.exception("control request failed", verb=verb, pid=peer.pid)
            return {"ok": False, "error": "EIO", "message": f"{verb} failed in the daemon"}
