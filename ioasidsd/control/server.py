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
    Acceptor,
    ConnectionCap,
    Peer,
    client_context,
    peer_of,
)
from ioasidsd.control.protocol import MAX_REQUEST
from ioasidsd.model.errors import IoasidError

__all__ = ["ControlServer", "Handler"]

DEFAULT_CAP = 64

Handler = Callable[[dict[str, Any], Peer], Any]


def _error(code: int, message: str) -> dict[str, Any]:
    return {"ok": False, "error": errno.errorcode.get(code, "EIO"), "message": message}


class ControlServer:
    """Serves ``handlers`` on the socket at ``path`` (mode 0666: verbs check ``peer``), one
    thread per connection, at most ``cap`` connections (default: 64 for each uid but root's)."""

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
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    @property
    def connections(self) -> int:
        """Connections open now."""
        with self._open_lock:
            return len(self._open)

    def start(self) -> None:
        """Bind (replacing a socket left by a killed daemon) and serve on a thread. ``OSError``
        if the socket cannot be created."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(str(self.path))
            os.chmod(self.path, 0o666)
            listener.listen(128)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
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
        """Stop accepting, end the open connections, close and remove the socket. Idempotent."""
        if self._thread is None:
            return
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join()
        self._thread = None
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
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

    # ------------------------------------------------------------------ accepting
    def _serve(self) -> None:
        listener, acceptor = self._listener, self._acceptor
        assert listener is not None and acceptor is not None
        selector = self._selector
        assert selector is not None
        while not self._stopping:
            pause = acceptor.paused - time.monotonic()
            if pause > 0:  # not asking for the listener meanwhile: no spinning
                selector.unregister(listener)
                selector.select(pause)
                selector.register(listener, selectors.EVENT_READ)
                continue
            selector.select()
            while not self._stopping and (sock := acceptor.accept()) is not None:
                self._admit(sock)

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
        with self._open_lock:
            self._open.add(sock)
        thread = threading.Thread(target=self._connection, args=(sock, peer),
                                  name=f"control {peer.pid}", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread can be made: refuse like any other shortage
            self._end(sock, peer)

    def _refuse(self, sock: socket.socket, code: int, message: str) -> None:
        sock.sendall(json.dumps(_error(code, message)).encode() + b"\n")

    # ------------------------------------------------------------------ one connection
    def _connection(self, sock: socket.socket, peer: Peer) -> None:
        try:
            with sock.makefile("rb") as rfile:
                while not self._stopping:
                    line = rfile.readline(MAX_REQUEST + 1)
                    if not line:
                        return
                    if len(line) > MAX_REQUEST:
                        self._reply(sock, {"ok": False, "error": "E2BIG",
                                           "message": "request too long"})
                        return
                    if not line.strip():
                        continue
                    with client_context(peer.uid):
                        reply = self.answer(line, peer)
                    if not self._reply(sock, reply):
                        return
        except OSError:
            pass
        finally:
            self._end(sock, peer)

    def _end(self, sock: socket.socket, peer: Peer) -> None:
        with self._open_lock:
            self._open.discard(sock)
        sock.close()
        self.cap.leave(peer.uid)
        CLIENT_LOG_LIMIT.flush(peer.uid)

    @staticmethod
    def _reply(sock: socket.socket, reply: dict[str, Any]) -> bool:
        try:
            sock.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            return False
        return True

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
