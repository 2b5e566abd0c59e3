"""The control API: JSON requests and replies on the unix socket ``RUNTIME_DIR/control.sock``.

One request per line, one reply per line::

    -> {"verb": "status"}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": "EINVAL", "message": "unknown verb 'stauts'"}

Verbs are functions ``handler(request, peer) -> result`` registered by name; ``peer`` holds the
caller's pid, uid and gid from ``SO_PEERCRED``, for verbs that must check who asks. A handler's
``IoasidError`` becomes its errno name; any other failure is logged and answered ``EIO``.
Malformed requests get an error reply; a connection never ends the daemon.

``ControlClient`` is the other end, for ``ioasidctl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ioasidsd.model.errors import IoasidError

MAX_REQUEST = 1 << 16


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection."""

    pid: int
    uid: int
    gid: int


Handler = Callable[[dict[str, Any], Peer], Any]


class ControlError(Exception):
    """A control request failed: ``error`` is the daemon's error name (an errno name, or
    ``ENOTCONN`` when there is no daemon to ask)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


def _peer(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", creds))


class _Connection(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        peer = _peer(self.request)
        while True:
            line = self.rfile.readline(MAX_REQUEST + 1)
            if not line:
                return
            if len(line) > MAX_REQUEST:
                self._reply({"ok": False, "error": "E2BIG", "message": "request too long"})
                return
            if not line.strip():
                continue
            self._reply(self.server.answer(line, peer))

    def _reply(self, reply: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, handlers: dict[str, Handler], log: Any) -> None:
        self.handlers = handlers
        self.log = log
        super().__init__(path, _Connection)

    def answer(self, line: bytes, peer: Peer) -> dict[str, Any]:
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


class ControlServer:
    """Serves ``handlers`` on the socket at ``path`` (mode 0666: verbs check ``peer``)."""

    def __init__(self, path: str | Path, handlers: dict[str, Handler], log: Any) -> None:
        self.path = Path(path)
        self.handlers = handlers
        self.log = log
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (replacing a socket left by a killed daemon) and serve on a thread. ``OSError``
        if the socket cannot be created."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = _Server(str(self.path), self.handlers, self.log)
        os.chmod(self.path, 0o666)
        self._thread = threading.Thread(target=self._server.serve_forever, name="control",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, close and remove the socket. Idempotent."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class ControlClient:
    """Requests to the daemon whose control socket is at ``path``."""

    def __init__(self, path: str | Path, *, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def call(self, verb: str, **args: Any) -> Any:
        """Send one request and return its result. ``ControlError`` when the daemon answers
        with an error, or with ``error="ENOTCONN"`` when there is no daemon to ask."""
        request = json.dumps({"verb": verb, **args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(request)
                with sock.makefile("rb") as f:
                    line = f.readline(MAX_REQUEST * 16)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError("ENOTCONN", f"no ioasidsd is listening on {self.path} "
                                           f"({exc.strerror})") from None
        except OSError as exc:
            raise ControlError("ENOTCONN", f"cannot talk to ioasidsd on {self.path} "
                                           f"({exc.strerror or exc})") from None
        if not line:
            raise ControlError("ENOTCONN", f"ioasidsd on {self.path} closed the connection")
        try:
            reply = json.loads(line)
        except ValueError:
            raise ControlError("EPROTO", "the daemon's reply is not JSON") from None
        if not reply.get("ok"):
            raise ControlError(str(reply.get("error", "EIO")), str(reply.get("message", "")))
        return reply.get("result")
