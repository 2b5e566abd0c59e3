"""The ``/dev/ioasid`` server: the user API on the unix socket ``ioasid.sock``.

A connection is an open file of the misc device. At connect the peer's pid (``SO_PEERCRED``)
opens the file (``System.ioasid_open``) and the greeting carries the result; each request is an
ioctl, run as the process that sent it (``SO_PASSCRED`` gives its pid, so a connection inherited
by a forked child is used "by another process" as the series' uAPI doc describes); the end of
the connection is ``release()``, or the process's exit when the peer is exiting then.

One thread per connection, each blocking in ``recvmsg``, every change under ``system.lock``
through ``System`` methods. Bad input is answered with an error and never ends the server.
Stopping the server closes the connections without releasing their files: the IOASIDs stay in
the durable state, as after a ``kill -9`` (see ``docs/ioasid-protocol.md`` on reconnecting).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from errno import EIO, EMSGSIZE
from typing import TYPE_CHECKING

import structlog

from ioasidsd.model.errors import IoasidError
from ioasidsd.userapi import protocol, uapi

if TYPE_CHECKING:
    from ioasidsd.system import System
    from ioasidsd.userapi.device import IoasidFile

log = structlog.get_logger("ioasidsd.userapi")

UCRED = struct.Struct("=iII")
"""``struct ucred``: pid, uid, gid."""
_CMSG_SPACE = socket.CMSG_SPACE(UCRED.size)
RECV_SIZE = 1 << 18
PF_EXITING = 0x00000004


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process that connected (``SO_PEERCRED``)."""
    return UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size))


def process_exiting(pid: int) -> bool:
    """Whether process ``pid`` is gone, a zombie, or in ``do_exit`` (``PF_EXITING``).

    The kernel closes an exiting process's files after setting ``PF_EXITING``, so a connection
    that ends while this holds ended because its process is exiting.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return True
    state, flags = fields[0], int(fields[6])
    return state in (b"Z", b"X", b"x") or bool(flags & PF_EXITING)


class UserApiServer:
    """Serves ``system``'s ``/dev/ioasid`` on ``runtime_dir/ioasid.sock`` (mode 0666).

    ``start()`` binds (replacing a stale socket file) and accepts on a background thread;
    ``stop()`` closes everything and returns when every thread has ended. ``connections`` counts
    the open ones.
    """

    def __init__(self, system: System, runtime_dir: str, *, mode: int = 0o666) -> None:
        self.system = system
        self.path = os.path.join(runtime_dir, protocol.SOCKET_NAME)
        self.mode = mode
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._conns_lock = threading.Lock()
        self._stopping = False

    @property
    def connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def start(self) -> None:
        """Listen on the socket. Raises ``OSError`` if it cannot be bound."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            listener.bind(self.path)
            os.chmod(self.path, self.mode)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, name="ioasid-accept",
                                               daemon=True)
        self._accept_thread.start()
        log.info("userapi listening", socket=self.path)

    def stop(self) -> None:
        """Stop accepting, close every connection (their files stay open in the model, to be
        adopted or released after a restart) and wait for the threads."""
        self._stopping = True
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join()
        with self._conns_lock:
            conns = list(self._conns.items())
        for conn, _thread in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for _conn, thread in conns:
            thread.join()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> UserApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ connections
    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping:
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._stopping:
                    return
                continue  # EMFILE, ECONNABORTED...: keep serving the others
            thread = threading.Thread(target=self._serve, args=(conn,), name="ioasid-conn",
                                      daemon=True)
            with self._conns_lock:
                self._conns[conn] = thread
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._serve_connection(conn)
        except Exception:  # a bug must not end the daemon: log it, drop this connection
            log.exception("userapi connection failed")
        finally:
            with self._conns_lock:
                self._conns.pop(conn, None)
            conn.close()

    def _serve_connection(self, conn: socket.socket) -> None:
        pid, _uid, _gid = peer_credentials(conn)
        try:
            file = self.system.ioasid_open(pid)
        except IoasidError as exc:
            log.info("userapi open refused", pid=pid, error=str(exc))
            with contextlib.suppress(OSError):
                conn.sendall(protocol.error_reply(exc.errno or EIO, str(exc)))
            return
        exited = False
        try:
            conn.sendall(protocol.reply(0))
            self._request_loop(conn, file, pid)
        except OSError:
            pass  # ECONNRESET, EPIPE: the peer went away, as a closed file
        finally:
            if not self._stopping:
                exited = process_exiting(pid)
                self.system.ioasid_release(file, exited=exited)
        log.debug("userapi connection closed", pid=pid, exited=exited)

    def _request_loop(self, conn: socket.socket, file: IoasidFile, pid: int) -> None:
        reader = protocol.RequestReader()
        ioctl = self.system.ioasid_ioctl
        buf = bytearray(RECV_SIZE)  # reused: a fresh 256 KiB bytes per recv costs page faults
        view = memoryview(buf)
        while True:
            n, ancdata, _flags, _addr = conn.recvmsg_into([buf], _CMSG_SPACE)
            if not n:
                return
            data = view[:n]
            sender = pid
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = UCRED.unpack_from(cdata)[0]
            out = []
            for cmd, arg in reader.feed(data):
                if arg is None:
                    out.append(protocol.error_reply(
                        EMSGSIZE, f"argument longer than {protocol.MAX_ARG} bytes"))
                    continue
                try:
                    ret, result = ioctl(file, cmd, arg, pid=sender)
                except IoasidError as exc:
                    out.append(protocol.error_reply(exc.errno or EIO, str(exc)))
                    continue
                except Exception:
                    log.exception("userapi request failed", pid=sender,
                                  cmd=uapi.COMMAND_NAMES.get(cmd, hex(cmd)))
                    out.append(protocol.error_reply(EIO, "internal error"))
                    continue
                out.append(protocol.reply(ret, result))
            if out:
                conn.sendall(out[0] if len(out) == 1 else b"".join(out))
