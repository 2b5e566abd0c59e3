"""A Python client of the daemon's ``/dev/ioasid`` socket.

::

    with IoasidClient.open() as dev:            # open("/dev/ioasid")
        assert dev.get_api_version() == 0
        ioasid = dev.alloc(1, 1000)             # IOASID_REQUEST_ALLOC
        dev.free(ioasid)                        # IOASID_REQUEST_FREE

Every failure raises ``OSError`` with the errno the ioctl returned (``EAGAIN`` when a cgroup
limit refuses, ...) and the daemon's message; a daemon that cannot be reached raises the
``OSError`` of ``connect`` (``ENOENT``, ``ECONNREFUSED``). Closing the client (or the process's
exit) releases the file: the daemon frees every IOASID it allocated.
"""

from __future__ import annotations

import os
import socket
from array import array
from typing import Self

from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.userapi import protocol

DEFAULT_RUNTIME_DIR = "/run/ioasidsd"
RUNTIME_DIR_ENV = "IOASIDS_RUNTIME_DIR"
MAX_ID = (1 << uapi.IOASID_BITS) - 1


def runtime_dir(path: str | None = None) -> str:
    """The daemon's runtime directory: ``path``, else ``$IOASIDS_RUNTIME_DIR``, else
    ``/run/ioasidsd``."""
    return path or os.environ.get(RUNTIME_DIR_ENV) or DEFAULT_RUNTIME_DIR


def _error(ret: int, data: bytes) -> OSError:
    errno = -ret
    message = os.strerror(errno)
    detail = data.decode("utf-8", "replace")
    return OSError(errno, f"{message} ({detail})" if detail else message)


class IoasidClient:
    """One open file of the daemon's ``/dev/ioasid``: a connection to ``ioasid.sock``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    @classmethod
    def open(cls, runtime: str | None = None) -> Self:
        """Connect (``open()``); raises ``OSError``: the connect's, or the open's errno
        (``EBUSY`` when this process has it open already, ``ENOSPC``, ``EEXIST``...)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.path.join(runtime_dir(runtime), protocol.SOCKET_NAME))
            client = cls(sock)
            client._reply()
        except BaseException:
            sock.close()
            raise
        return client

    def close(self) -> None:
        """``close()``: the daemon releases the file and frees its IOASIDs, then this returns
        (a reopen right after cannot find the file still open). Closing twice does nothing."""
        sock = self._sock
        if sock.fileno() < 0:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):  # unread replies, then the daemon's end after release
                pass
        except OSError:
            pass  # the daemon is gone: nothing to wait for
        finally:
            sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ frames
    def _recv(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the daemon closed the connection")
            self._buf += chunk

    def _reply(self) -> tuple[int, bytes]:
        header = protocol.REPLY.size
        self._recv(header)
        ret, length = protocol.REPLY.unpack_from(self._buf)
        self._recv(header + length)
        data = bytes(self._buf[header:header + length])
        del self._buf[:header + length]
        if ret < 0:
            raise _error(ret, data)
        return ret, data

    def ioctl(self, cmd: int, arg: bytes = b"") -> tuple[int, bytes]:
        """Send one request; returns the result and the output bytes, or raises ``OSError``."""
        self._sock.sendall(protocol.REQUEST.pack(cmd, len(arg)) + arg)
        return self._reply()

    # ------------------------------------------------------------------ the series' uAPI
    def get_api_version(self) -> int:
        """``IOASID_GET_API_VERSION``: 0."""
        return self.ioctl(uapi.IOASID_GET_API_VERSION)[0]

    def get_info(self) -> int:
        """``IOASID_GET_INFO``: the supported IOASID width in bits (31)."""
        _, out = self.ioctl(uapi.IOASID_GET_INFO, uapi.INFO.pack(uapi.INFO.size, 0, 0))
        return uapi.INFO.unpack(out)[2]

    def alloc(self, min: int = 1, max: int = MAX_ID) -> int:
        """``IOASID_REQUEST_ALLOC``: the lowest free IOASID in ``[min, max]``."""
        arg = uapi.ALLOC_REQUEST.pack(uapi.ALLOC_REQUEST.size, 0, min, max)
        return self.ioctl(uapi.IOASID_REQUEST_ALLOC, arg)[0]

    def free(self, ioasid: int) -> None:
        """``IOASID_REQUEST_FREE``."""
        self.ioctl(uapi.IOASID_REQUEST_FREE, uapi.FREE_ARG.pack(ioasid))

    # ------------------------------------------------------------------ extensions
    def alloc_batch(self, count: int, min: int = 1, max: int = MAX_ID) -> list[int]:
        """``IOASID_REQUEST_ALLOC_BATCH``: ``count`` IOASIDs, or none (the first failure)."""
        arg = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, min, max, count)
        _, out = self.ioctl(uapi.IOASID_REQUEST_ALLOC_BATCH, arg)
        ids = array("I")
        ids.frombytes(out)
        return ids.tolist()

    def free_batch(self, ids: list[int]) -> int:
        """``IOASID_REQUEST_FREE_BATCH``: free ``ids``; returns how many."""
        body = array("I", ids).tobytes()
        head = uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + len(body), 0, len(ids))
        return self.ioctl(uapi.IOASID_REQUEST_FREE_BATCH, head + body)[0]

    def bind(self, hpasid: int, device: int | str, gpasid: int | None = None, *,
             addr_width: int = 48, gpgd: int = 0) -> None:
        """``IOASID_BIND_GPASID``: bind ``hpasid`` on ``device`` (a devid or ``bus:dev.fn``)
        for a guest, with ``gpasid`` as its guest PASID when given."""
        devid = uapi.parse_bdf(device) if isinstance(device, str) else device
        flags = 0 if gpasid is None else uapi.IOASID_BIND_GPASID_VAL
        arg = uapi.BIND_GPASID.pack(uapi.BIND_GPASID.size, flags, hpasid, gpasid or 0, devid,
                                    addr_width, gpgd)
        self.ioctl(uapi.IOASID_BIND_GPASID, arg)

    def unbind(self, hpasid: int, device: int | str) -> None:
        """``IOASID_UNBIND_GPASID``."""
        devid = uapi.parse_bdf(device) if isinstance(device, str) else device
        arg = uapi.UNBIND_GPASID.pack(uapi.UNBIND_GPASID.size, 0, hpasid, devid)
        self.ioctl(uapi.IOASID_UNBIND_GPASID, arg)
