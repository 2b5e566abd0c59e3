"""The framing of ``/dev/ioasid`` requests on the daemon's unix socket ``ioasid.sock``.

One connection is one open file. The server answers the connection with a greeting (the result
of ``open()``), then each request with one reply, in order; a client may send several requests
before reading their replies. Frames are in the host's byte order (the socket is local):

* request: ``struct { __u32 cmd; __u32 len; }`` then ``len`` argument bytes in the uAPI layout;
* reply and greeting: ``struct { __s32 ret; __u32 len; }`` then ``len`` bytes: the output for
  ``ret >= 0`` (see ``IoasidDevice.ioctl``), a UTF-8 message for ``ret < 0`` (``-errno``).

Requests whose ``len`` exceeds ``MAX_ARG`` are answered ``-EMSGSIZE`` and their bytes skipped.
``docs/ioasid-protocol.md`` describes the same for C programs.
"""

from __future__ import annotations

import struct
from typing import Final

SOCKET_NAME: Final = "ioasid.sock"
REQUEST = struct.Struct("=II")
"""Request header: command number, argument length."""
REPLY = struct.Struct("=iI")
"""Reply (and greeting) header: result (``-errno`` on failure), data length."""
MAX_ARG: Final = 1 << 20
"""The longest argument accepted (a FREE_BATCH of 65,536 IDs is 262,156 bytes)."""
MAX_MESSAGE: Final = 512
"""Error messages are cut to this many bytes."""


def request(cmd: int, arg: bytes = b"") -> bytes:
    """The frame of one request."""
    return REQUEST.pack(cmd, len(arg)) + arg


def reply(ret: int, data: bytes = b"") -> bytes:
    """The frame of one reply (``ret`` is the ioctl's result or ``-errno``)."""
    return REPLY.pack(ret, len(data)) + data


def error_reply(errno: int, message: str) -> bytes:
    """The frame of a failed request: ``-errno`` and the message (cut to ``MAX_MESSAGE``)."""
    return reply(-errno, message.encode("utf-8", "replace")[:MAX_MESSAGE])


class RequestReader:
    """Splits the bytes received on a connection into ``(cmd, arg)`` requests.

    ``feed(data)`` returns the requests completed by ``data`` and the replies owed for requests
    that were too long (``(cmd, None)`` entries: answer ``-EMSGSIZE``, their bytes are skipped
    as they arrive). Requests keep their order.
    """

    __slots__ = ("_buf", "_skip")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skip = 0

    def feed(self, data: bytes | memoryview) -> list[tuple[int, bytes | None]]:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        buf = self._buf
        if not buf and len(data) >= REQUEST.size:  # the usual case: whole requests
            cmd, length = REQUEST.unpack_from(data)
            if len(data) == REQUEST.size + length and length <= MAX_ARG:
                return [(cmd, bytes(data[REQUEST.size:]))]
        buf += data
        out: list[tuple[int, bytes | None]] = []
        pos = 0
        end = len(buf)
        header = REQUEST.size
        while end - pos >= header:
            cmd, length = REQUEST.unpack_from(buf, pos)
            if length > MAX_ARG:
                out.append((cmd, None))
                pos += header
                skipped = min(length, end - pos)
                pos += skipped
                self._skip = length - skipped
                continue
            if end - pos - header < length:
                break
            start = pos + header
            out.append((cmd, bytes(buf[start:start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete request held back."""
        return len(self._buf)
