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
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ioasidsd.clients import (
    CLIENT_LOG_LIMIT,
    PAUSE,
    Acceptor,
    ConnectionCap,
    Peer,
    client_context,
    listen_unix,
    peer_of,
)
from ioasidsd.control.protocol import MAX_REQUEST
from ioasidsd.model.errors import IoasidError

__all__ = ["ControlServer", "Handler"]

DEFAULT_CAP = 64

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


class ControlServer:
    """Serves ``handlers`` on the socket at ``path`` (mode 0666: verbs check ``peer``) from one
    thread: every connection is a non-blocking socket on one selector, requests are answered in
    the order they arrive, and a client that does not read its replies stalls only itself (its
    further requests wait). At most ``cap`` connections (default: 64 for each uid but root's).
    """

    def __init__(self, path: str | Path, handlers: dict[str, Handler], log: Any, *,
                 cap: ConnectionCap | None = None) -> None:
        self.path = Path(path)
        self.handlers = handlers
        self.log = log
        self.cap = cap or ConnectionCap(DEFAULT_CAP)
        self._listener: socket.socket | None = None
        self._acceptor: Acceptor | None = None
        self._selector: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self._conns: dict[int, _Connection] = {}

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    def start(self) -> None:
        """Bind (replacing a socket left by a killed daemon) and serve on a thread. ``OSError``
        if the socket cannot be created."""
        listener = listen_unix(str(self.path), 0o666)
        self._listener = listener
        self._acceptor = Acceptor(listener, self._refuse, self.log)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopping = False
        # made here, not on the thread: a failure is start()'s, not a thread's silent end
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close the open connections (replies not sent are dropped), close
        and remove the socket. Idempotent."""
        if self._thread is None:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        for conn in list(self._conns.values()):
            self._close(conn)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        assert self._acceptor is not None and self._listener is not None
        self._acceptor.close()
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    # ------------------------------------------------------------------ the loop
    def _serve(self) -> None:
        listener, acceptor = self._listener, self._acceptor
        selector = self._selector
        assert listener is not None and acceptor is not None and selector is not None
        listening = True
        while not self._stopping:
            pause = acceptor.paused - time.monotonic()
            if pause > 0 and listening:  # accepting failed: not asked again meanwhile
                selector.unregister(listener)
                listening = False
            elif pause <= 0 and not listening:
                selector.register(listener, selectors.EVENT_READ)
                listening = True
            for key, mask in selector.select(pause if pause > 0 else None):
                conn = key.data
                if conn is None:
                    if key.fileobj is listener:
                        self._accept_all()
                    continue  # the wake pipe: the loop checks _stopping
                try:
                    if mask & selectors.EVENT_WRITE:
                        self._flush(conn)
                    if mask & selectors.EVENT_READ and not conn.outbox:
                        self._receive(conn)
                except Exception:  # a bug must not end the server: drop this connection
                    self.log.exception("control connection failed", pid=conn.peer.pid)
                    self._close(conn)
        self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _accept_all(self) -> None:
        """Accept and admit every waiting connection. A failure pauses accepting (and is
        logged if it can be): it never ends the server's thread."""
        acceptor = self._acceptor
        assert acceptor is not None
        try:
            while (sock := acceptor.accept()) is not None:
                self._admit(sock)
        except Exception:
            acceptor.paused = time.monotonic() + PAUSE
            with contextlib.suppress(Exception):
                self.log.exception("control: accepting failed; pausing")

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
        assert self._selector is not None
        self._selector.register(sock, selectors.EVENT_READ, conn)

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
        selector = self._selector
        assert selector is not None
        if conn.outbox:
            selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        elif conn.closing:
            self._close(conn)
        else:
            selector.modify(conn.sock, selectors.EVENT_READ, conn)

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
        if self._conns.pop(conn.sock.fileno(), None) is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(conn.sock)
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
