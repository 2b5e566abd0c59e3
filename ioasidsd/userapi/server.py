"""The ``/dev/ioasid`` server: the user API on the unix socket ``ioasid.sock``.

A connection is an open file of the misc device. At connect the peer's pid (``SO_PEERCRED``)
opens the file (``System.ioasid_open``) and the greeting carries the result; each request is an
ioctl, run as the process that sent it (``SO_PASSCRED`` gives its pid, so a connection inherited
by a forked child is used "by another process" as the series' uAPI doc describes); the end of
the connection (its last copy closed, whichever process held it: one inherited over ``fork()``
outlives the opener) is ``release()``, after the opener's exit when the opener is exiting.

The sockets are non-blocking, served by one thread: the ``EventLoop`` (``ioasidsd.eventloop``)
the daemon shares with the control API, or one of the server's own when it is given none.
Requests are served in the order they arrive, every change under ``system.lock`` through
``System`` methods. A batch of more than ``batches.SLICE`` IDs is served in slices
(``ioasidsd.userapi.batches``): after each slice the loop serves every other connection that is
ready before the next slice runs, so a small request waits for at most one slice, not for the
whole batch; the batch's connection is not read meanwhile (its requests stay in order). (One
thread per connection was measured too: as fast for one client, but four clients' threads
fighting for the GIL got half the throughput; see ``docs/benchmarks.md``.)
Replies a client does not read are kept for it and its further requests wait, so a stalled
client stalls only itself. Bad input is answered with an error and never ends the server.
Stopping the server closes the connections without releasing their files: the IOASIDs stay in
the durable state, as after a ``kill -9`` (see ``docs/ioasid-protocol.md`` on reconnecting).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time
from errno import EAGAIN, EIO, EMSGSIZE
from typing import TYPE_CHECKING

import structlog

from ioasidsd.clients import (
    CLIENT_LOG_LIMIT,
    CLIENT_UID,
    ConnectionCap,
    SocketServer,
    client_context,
    peer_of,
)
from ioasidsd.eventloop import EventLoop
from ioasidsd.host import read_stat
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.errors import IoasidError
from ioasidsd.userapi import protocol
from ioasidsd.userapi.batches import Batch, sliced

if TYPE_CHECKING:
    from ioasidsd.model.ioasid_device import IoasidFile
    from ioasidsd.system import System

log = structlog.get_logger("ioasidsd.userapi")

UCRED = struct.Struct("=iII")
"""``struct ucred``: pid, uid, gid."""
_CMSG_SPACE = socket.CMSG_SPACE(UCRED.size)
_UNPACK_UCRED = UCRED.unpack_from
_SOL_SOCKET = socket.SOL_SOCKET
_SCM_CREDENTIALS = socket.SCM_CREDENTIALS
RECV_SIZE = 1 << 18
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_GONE = select.EPOLLHUP | select.EPOLLERR
DEFAULT_CAP = 64
_BATCHES = frozenset((uapi.IOASID_REQUEST_ALLOC_BATCH, uapi.IOASID_REQUEST_FREE_BATCH))


def process_exiting(pid: int) -> bool:
    """Whether process ``pid`` is gone, a zombie, or in ``do_exit`` (``PF_EXITING``).

    The kernel closes an exiting process's files after setting ``PF_EXITING``, so a connection
    that ends while this holds ended because its process is exiting.
    """
    stat = read_stat(pid)
    return stat is None or stat.exiting


class _Connection:
    """One open file: its socket, the peer, the requests read so far, the replies unsent, and
    a batch being served in slices (with the requests that came after it and the replies
    made before it)."""

    __slots__ = ("batch", "file", "pending", "pid", "reader", "replies", "sock", "uid",
                 "waiting")

    def __init__(self, sock: socket.socket, file: IoasidFile, pid: int, uid: int) -> None:
        self.sock = sock
        self.file = file
        self.pid = pid
        self.uid = uid
        self.reader = protocol.RequestReader()
        self.pending = bytearray()
        self.batch: Batch | None = None
        self.waiting: list[tuple[int, bytes | None, int, int]] = []
        self.replies: list[bytes] = []


class UserApiServer(SocketServer):
    """Serves ``system``'s ``/dev/ioasid`` on ``runtime_dir/ioasid.sock`` (mode 0666).

    ``start()`` binds (replacing a stale socket file) and serves on ``loop`` (started by its
    owner), or without one on a loop and thread of the server's own; ``stop()`` closes
    everything and returns when nothing of the server runs any more. ``connections`` counts
    the open ones. ``cap`` bounds them (default: 64 for each uid but root's): a connection over
    it, or one that comes when the daemon is out of descriptors, is answered with an error
    greeting (``EAGAIN``, ``EMFILE``) and closed. The log lines a client causes are counted
    against its uid (``ioasidsd.clients.ClientLogLimit``).
    """

    def __init__(self, system: System, runtime_dir: str, *, mode: int = 0o666,
                 cap: ConnectionCap | None = None, loop: EventLoop | None = None) -> None:
        super().__init__(os.path.join(runtime_dir, protocol.SOCKET_NAME), mode, log,
                         what="userapi", loop=loop, passcred=True)
        self.path: str
        self.system = system
        self.cap = cap or ConnectionCap(DEFAULT_CAP)
        self._conns: dict[int, _Connection] = {}
        self._buf = bytearray(RECV_SIZE)  # reused: a fresh 256 KiB bytes per recv page-faults
        self._bufs = [self._buf]
        self._view = memoryview(self._buf)

    @property
    def connections(self) -> int:
        return len(self._conns)

    def _new_loop(self) -> EventLoop:
        return EventLoop(log, name="ioasid-server")

    def start(self) -> None:
        """Listen on the socket. Raises ``OSError`` if it cannot be bound."""
        super().start()
        log.info("userapi listening", socket=self.path)

    def stop(self) -> None:
        """Stop serving and close every connection (their files stay open in the model, to be
        adopted or released after a restart). Idempotent."""
        super().stop()

    def close_connections(self) -> None:
        """On the loop's thread, when the server stops: close the connections without
        releasing their files."""
        for conn in list(self._conns.values()):
            self._close(conn, release=False)

    def __enter__(self) -> UserApiServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop
    def _on_ready(self, fd: int, events: int) -> None:
        """A connection's socket is ready: read, serve every complete request, reply."""
        conn = self._conns.get(fd)
        if conn is None:
            return
        try:
            if conn.batch is not None:  # a batch is being served: its requests wait
                if events & _GONE:
                    self._close(conn)
                elif events & _OUT:
                    self._flush(conn)  # the replies made before it
                return
            if events & _OUT:
                self._flush(conn)
            if conn.pending:  # its replies wait: so do its requests
                if events & _GONE:
                    self._close(conn)  # nobody will read them
                return
            # the hot path, inline
            try:
                n, ancdata, _flags, _addr = conn.sock.recvmsg_into(self._bufs, _CMSG_SPACE)
            except BlockingIOError:
                return
            if not n:
                self._close(conn)
                return
            sender, sender_uid = conn.pid, conn.uid
            for level, kind, cdata in ancdata:
                if level == _SOL_SOCKET and kind == _SCM_CREDENTIALS:
                    sender, sender_uid = _UNPACK_UCRED(cdata)[:2]
            requests = conn.reader.feed(self._view[:n])
            if not requests:
                return
            if len(requests) == 1 and requests[0][0] not in _BATCHES:  # the hot path
                cmd, arg = requests[0]
                token = CLIENT_UID.set(conn.uid)  # what these requests log is theirs
                try:
                    data = self._request(conn.file, cmd, arg, sender, sender_uid)
                finally:
                    CLIENT_UID.reset(token)
                try:  # ``_send`` inline: no reply waits (``pending`` is empty here)
                    sent = conn.sock.send(data)
                except BlockingIOError:
                    sent = 0
                if sent < len(data):
                    self._keep(conn, data, sent)
                return
            conn.waiting = [(cmd, arg, sender, sender_uid) for cmd, arg in requests]
            self._serve(conn)
        except OSError:  # ECONNRESET, EPIPE: the peer went away, as a closed file
            self._close(conn)
        except Exception:  # a bug must not end the daemon: drop this connection
            log.exception("userapi connection failed", pid=conn.pid)
            self._close(conn)

    def _send(self, conn: _Connection, data: bytes) -> None:
        if conn.pending:  # earlier replies wait to be sent: after them
            conn.pending += data
            return
        try:
            sent = conn.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._keep(conn, data, sent)

    def _serve(self, conn: _Connection) -> None:
        """Serve the connection's waiting requests in order, until one is a batch to be
        served in slices: that one is started (its first slice waits for the loop's next
        round) and the rest wait for it. Sends the replies made."""
        waiting, replies = conn.waiting, conn.replies
        token = CLIENT_UID.set(conn.uid)
        try:
            while waiting:
                cmd, arg, sender, uid = waiting.pop(0)
                batch = None
                if cmd in _BATCHES and arg is not None:
                    batch = sliced(self.system, conn.file, cmd, arg, pid=sender, uid=uid)
                if batch is not None:
                    conn.batch = batch
                    if replies:  # those before it go now
                        data = b"".join(replies)
                        replies.clear()
                        self._send(conn, data)
                    assert self._loop is not None
                    if not conn.pending:
                        self._loop.modify(conn.sock.fileno(), 0)  # only a hang-up comes now
                    self._loop.call_at(time.monotonic(), lambda: self._slice(conn))
                    return
                replies.append(self._request(conn.file, cmd, arg, sender, uid))
        finally:
            CLIENT_UID.reset(token)
        data = b"".join(replies)
        replies.clear()
        self._send(conn, data)

    def _slice(self, conn: _Connection) -> None:
        """The loop's turn for a batch served in slices: make the next slice; when it was
        the last (or one was refused), reply and serve what waited behind it."""
        batch = conn.batch
        if batch is None or self._conns.get(conn.sock.fileno()) is not conn:
            return  # closed meanwhile (which closed the batch)
        token = CLIENT_UID.set(conn.uid)
        try:
            try:
                next(batch)
            except StopIteration as done:
                ret, result = done.value
                conn.replies.append(protocol.REPLY.pack(ret, len(result)) + result)
            except IoasidError as exc:
                conn.replies.append(protocol.error_reply(exc.errno or EIO, str(exc)))
            except Exception:
                log.exception("userapi request failed", pid=conn.pid)
                conn.replies.append(protocol.error_reply(EIO, "internal error"))
            else:
                assert self._loop is not None
                self._loop.call_at(time.monotonic(), lambda: self._slice(conn))
                return
        finally:
            CLIENT_UID.reset(token)
        conn.batch = None
        try:
            assert self._loop is not None
            self._loop.modify(conn.sock.fileno(), _OUT if conn.pending else _IN)
            self._serve(conn)
        except OSError:
            self._close(conn)
        except Exception:
            log.exception("userapi connection failed", pid=conn.pid)
            self._close(conn)

    def _request(self, file: IoasidFile, cmd: int, arg: bytes | None, sender: int,
                 uid: int | None = None) -> bytes:
        """Serve one request of process ``sender`` (user ``uid``); its reply frame."""
        if arg is None:
            return protocol.error_reply(EMSGSIZE, f"argument longer than {protocol.MAX_ARG} bytes")
        try:
            ret, result = self.system.ioasid_ioctl(file, cmd, arg, pid=sender, uid=uid)
        except IoasidError as exc:
            return protocol.error_reply(exc.errno or EIO, str(exc))
        except Exception:
            log.exception("userapi request failed", pid=sender,
                          cmd=uapi.COMMAND_NAMES.get(cmd, hex(cmd)))
            return protocol.error_reply(EIO, "internal error")
        return protocol.REPLY.pack(ret, len(result)) + result

    def _admit(self, sock: socket.socket) -> None:
        """A connection accepted: open its file (or refuse it), closing what cannot be kept."""
        try:
            self._open(sock)
        except OSError:
            sock.close()

    def _refuse(self, sock: socket.socket, code: int, message: str) -> None:
        sock.sendall(protocol.error_reply(code, message))

    def _open(self, sock: socket.socket) -> None:
        peer = peer_of(sock)
        with client_context(peer.uid):
            why = self.cap.admit(peer.uid)
            if why is not None:
                log.warning("userapi connection refused", pid=peer.pid, reason=why)
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
                    self._refuse(sock, EAGAIN, why)
                sock.close()
                return
            try:
                file = self.system.ioasid_open(peer.pid, closes_at_exit=False)
            except IoasidError as exc:
                self.cap.leave(peer.uid)
                log.info("userapi open refused", pid=peer.pid, error=str(exc))
                with contextlib.suppress(OSError):
                    sock.setblocking(False)
                    self._refuse(sock, exc.errno or EIO, str(exc))
                sock.close()
                return
            except BaseException:
                self.cap.leave(peer.uid)
                raise
        sock.setblocking(False)
        conn = _Connection(sock, file, peer.pid, peer.uid)
        self._conns[sock.fileno()] = conn
        assert self._loop is not None
        self._loop.register(sock.fileno(), _IN, self._on_ready)
        greeting = protocol.reply(0)
        try:
            sent = sock.send(greeting)  # an empty socket buffer takes 8 bytes
        except OSError:  # the peer is gone already: its file is released at once
            self._close(conn)
            return
        if sent < len(greeting):
            self._keep(conn, greeting, sent)

    def _keep(self, conn: _Connection, data: bytes, sent: int) -> None:
        """The socket took only ``sent`` bytes of ``data``: keep the rest until the client reads
        (its further requests wait meanwhile)."""
        conn.pending += memoryview(data)[sent:]
        assert self._loop is not None
        self._loop.modify(conn.sock.fileno(), _OUT)

    def _flush(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.pending)
        except BlockingIOError:
            return
        del conn.pending[:sent]
        if not conn.pending:
            assert self._loop is not None
            self._loop.modify(conn.sock.fileno(), 0 if conn.batch is not None else _IN)

    def _close(self, conn: _Connection, *, release: bool = True) -> None:
        """The connection ended: release its file (as the process's exit when the peer is
        exiting), unless the server is stopping."""
        fd = conn.sock.fileno()
        if self._conns.pop(fd, None) is None:
            return
        if self._loop is not None:
            self._loop.unregister(fd)
        exited = False
        if conn.batch is not None:  # unanswered: what it allocated is freed
            batch, conn.batch = conn.batch, None
            try:
                with client_context(conn.uid):
                    batch.close()
            except Exception:
                log.exception("userapi batch not undone", pid=conn.pid)
        if release:
            exited = process_exiting(conn.pid)
            try:
                with client_context(conn.uid):
                    self.system.ioasid_release(conn.file, exited=exited)
            except Exception:
                log.exception("userapi release failed", pid=conn.pid)
        conn.sock.close()
        self.cap.leave(conn.uid)
        CLIENT_LOG_LIMIT.flush(conn.uid)
        log.debug("userapi connection closed", pid=conn.pid, exited=exited, released=release)
