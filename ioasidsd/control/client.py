"""The control API's client: one JSON request, one JSON reply, for ``ioasidctl`` and scripts."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import TYPE_CHECKING, Any

from ioasidsd.control.protocol import MAX_REQUEST

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ControlClient", "ControlError"]


class ControlError(Exception):
    """A control request failed: ``error`` is the daemon's error name (an errno name, or
    ``ENOTCONN`` when there is no daemon to ask)."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error


class ControlClient:
    """Requests to the daemon whose control socket is at ``path``."""

    def __init__(self, path: str | Path, *, timeout: float = 10.0) -> None:
        self.path = os.fspath(path)  # a str: pathlib is not imported (ioasidctl starts fast)
        self.timeout = timeout

    def call(self, verb: str, **args: Any) -> Any:
        """Send one request and return its result. ``ControlError`` when the daemon answers
        with an error, or with ``error="ENOTCONN"`` when there is no daemon to ask."""
        request = json.dumps({"verb": verb, **args}).encode() + b"\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    sock.sendall(request)  # a refused connection was answered already
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
