"""Local clients of the daemon's sockets: who they are, how many connections each may hold, how
they are accepted when descriptors run short, and how much each may make the daemon log.

The contract every socket face keeps (the control API, ``/dev/ioasid``):

- ``peer_of(sock)`` is the kernel's word on who connected (``SO_PEERCRED``).
- ``ConnectionCap``: at most ``per_uid`` open connections for each uid but root's, and at most
  ``total`` for all of them together, so that whatever other users do, root always gets in and
  the daemon keeps descriptors for its own work. A connection over the cap is answered with
  ``EAGAIN`` and a message, then closed: never left hanging.
- ``SocketServer``: a face's server started and stopped (its listener, ``Acceptor`` and event
  loop) the same way for every face.
- ``Acceptor``: ``accept(2)`` that never spins. Out of descriptors (``EMFILE``, ``ENFILE``), a
  descriptor kept in reserve is given up to take the waiting connection, answer it with the
  face's refusal and close it, then taken back; any other failure pauses accepting briefly.
- ``client_context(uid)`` marks the log lines that a client's request causes; ``ClientLogLimit``
  (a structlog processor) lets each uid cause ``burst`` lines per ``interval`` seconds and drops
  the rest, then says how many it dropped in one line (before that uid's next line, or when
  ``flush`` is called as its connection ends), as the kernel's printk rate limit does.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog

ROOT = 0


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of a connection: its pid, uid and gid (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


_UCRED = struct.Struct("=iII")


def peer_of(sock: socket.socket) -> Peer:
    """The credentials of the process that connected ``sock``; ``OSError`` if the socket is
    closed."""
    return Peer(*_UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                               _UCRED.size)))


def listen_unix(path: str, mode: int, *, passcred: bool = False,
                backlog: int = 128) -> socket.socket:
    """A non-blocking unix stream socket listening at ``path`` with permissions ``mode``; a
    socket file left there (by a killed daemon) is replaced. ``passcred``: every message
    carries its sender's credentials (``SO_PASSCRED``). ``OSError`` if it cannot be made."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if passcred:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        listener.bind(path)
        os.chmod(path, mode)
        listener.listen(backlog)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


# ---------------------------------------------------------------------- the connection cap
class ConnectionCap:
    """Counts open connections by uid and refuses those over the cap. Thread-safe.

    ``per_uid`` bounds each uid other than root; ``total`` bounds all of them together (``None``:
    no bound but ``per_uid``). Root is never refused.
    """

    def __init__(self, per_uid: int, total: int | None = None) -> None:
        if per_uid < 1 or (total is not None and total < 1):
            raise ValueError("connection caps must be at least 1")
        self.per_uid = per_uid
        self.total = total
        self.refused = 0
        self._open: dict[int, int] = {}
        self._others = 0  # open connections of uids other than root
        self._lock = threading.Lock()

    def admit(self, uid: int) -> str | None:
        """Count a new connection of ``uid``: ``None`` when admitted (``leave`` must follow),
        otherwise why it is refused (nothing counted)."""
        with self._lock:
            held = self._open.get(uid, 0)
            if uid != ROOT:
                if held >= self.per_uid:
                    self.refused += 1
                    return (f"uid {uid} already holds {held} connections, the most one user "
                            f"may (max_connections_per_uid)")
                if self.total is not None and self._others >= self.total:
                    self.refused += 1
                    return (f"the daemon holds {self._others} connections of users other "
                            f"than root, as many as it keeps descriptors for")
                self._others += 1
            self._open[uid] = held + 1
            return None

    def leave(self, uid: int) -> None:
        """A connection of ``uid`` that ``admit`` counted has ended."""
        with self._lock:
            held = self._open.get(uid, 0)
            if held <= 1:
                self._open.pop(uid, None)
            else:
                self._open[uid] = held - 1
            if uid != ROOT and held:
                self._others -= 1


# ---------------------------------------------------------------------- accepting
PAUSE = 0.1
"""Seconds an ``Acceptor`` stops accepting after a failure it cannot answer."""


_EPOLLIN = select.EPOLLIN


def _close(sock: socket.socket) -> None:
    sock.close()


class Acceptor:
    """Accepts connections on the non-blocking ``listener`` without ever spinning.

    ``refuse(sock, errno, message)`` answers a connection that cannot be served (in the face's
    own protocol) before it is closed. ``accept`` returns a connected socket, or ``None`` when
    there is nothing more to accept now; ``paused`` says until when (``time.monotonic``) the
    caller should not ask again.
    """

    def __init__(self, listener: socket.socket,
                 refuse: Callable[[socket.socket, int, str], None], log: Any) -> None:
        self.listener = listener
        self.refuse = refuse
        self.log = log
        self.paused = 0.0
        self.starved = 0  # connections answered from the reserve descriptor
        self._loop: Any = None  # the event loop serving the listener (``serve_on``)
        self._admit: Callable[[socket.socket], None] = _close
        self._what = ""
        self._reserve: int | None = None
        self._take_reserve()

    def _take_reserve(self) -> None:
        if self._reserve is None:
            with contextlib.suppress(OSError):
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        """Stop serving (``serve_on``) and give the reserve descriptor back. Idempotent."""
        self.stop_serving()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None

    def serve_on(self, loop: Any, admit: Callable[[socket.socket], None], what: str) -> None:
        """Watch the listener on ``loop`` (an ``ioasidsd.eventloop.EventLoop``; call on its
        thread, or before it starts): when connections wait, accept each and hand it to
        ``admit``. A failure, of accepting or of ``admit`` (which must close what it cannot
        keep), is logged as ``what``'s and pauses accepting: the listener is not watched until
        the pause ends, so a failing listener never spins the loop."""
        self._loop, self._admit, self._what = loop, admit, what
        loop.register(self.listener.fileno(), _EPOLLIN, self._on_ready)

    def stop_serving(self) -> None:
        """Stop watching the listener (on the loop's thread). Idempotent."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.unregister(self.listener.fileno())

    def _on_ready(self, fd: int, events: int) -> None:
        try:
            while (sock := self.accept()) is not None:
                self._admit(sock)
        except Exception:
            self.paused = time.monotonic() + PAUSE
            with contextlib.suppress(Exception):
                self.log.exception(f"{self._what}: accepting failed; pausing")
        if self.paused > time.monotonic() and self._loop is not None:
            self._loop.unregister(fd)
            self._loop.call_at(self.paused, self._listen_again)

    def _listen_again(self) -> None:
        """The pause after a failed accept is over: watch the listener again, if still
        serving."""
        self.paused = 0.0
        if self._loop is not None:
            self._loop.register(self.listener.fileno(), _EPOLLIN, self._on_ready)

    def accept(self) -> socket.socket | None:
        """The next waiting connection, or ``None``: none is waiting, or accepting is paused
        (see ``paused``) after a failure. Never raises."""
        if self.paused and time.monotonic() < self.paused:
            return None
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE) and self._answer_starved():
                return None
            self.paused = time.monotonic() + PAUSE
            self._log("warning", "accept failed; pausing", error=str(exc), seconds=PAUSE)
            return None
        try:
            sock.setblocking(True)
        except OSError:
            sock.close()
            return None
        return sock

    def _answer_starved(self) -> bool:
        """Out of descriptors: take the waiting connection with the reserve one, refuse it,
        and take the reserve back. Whether a connection was answered. Never raises."""
        if self._reserve is None:
            self._take_reserve()  # a descriptor may have been freed since
            return False
        os.close(self._reserve)
        self._reserve = None
        try:
            sock, _ = self.listener.accept()
        except OSError:
            self._take_reserve()
            return False
        try:
            sock.setblocking(True)
            sock.settimeout(0.5)
            self.refuse(sock, errno.EMFILE, "the daemon is out of file descriptors")
        except Exception:  # the answer is a courtesy: failing to give it changes nothing
            pass
        finally:
            sock.close()
            self._take_reserve()
        self.starved += 1
        if self.starved == 1 or self.starved % 1000 == 0:
            self._log("error", "out of file descriptors: refusing connections",
                      refused=self.starved)
        return True

    def _log(self, level: str, event: str, **fields: Any) -> None:
        """Log, if logging can be done at all: out of descriptors, even a log call may fail
        (a lazy import, a log file), and that must not end the thread that accepts."""
        with contextlib.suppress(Exception):
            getattr(self.log, level)(event, **fields)


class SocketServer:
    """Starting and stopping a socket face's server, which both faces share: ``start`` listens
    at ``path`` (``listen_unix``: permissions ``mode``, ``passcred``) and serves the listener
    with an ``Acceptor`` on ``loop``, an ``ioasidsd.eventloop.EventLoop`` started by its owner,
    or without one on a loop of the server's own (``_new_loop``), started here; ``OSError`` if
    the socket cannot be made. ``stop`` runs ``_shut`` on the loop's thread, stops a loop of
    the server's own, closes the listener and removes the socket file; idempotent.

    A subclass gives ``_new_loop()``, ``_admit(sock)`` (a connection accepted: keep or close
    it), ``_refuse(sock, errno, message)`` (see ``Acceptor``) and ``close_connections()``.
    ``what`` names the face in the log.
    """

    def __init__(self, path: str | os.PathLike[str], mode: int, log: Any, *, what: str,
                 loop: Any = None, passcred: bool = False) -> None:
        self.path = path
        self.mode = mode
        self.log = log
        self._what = what
        self._passcred = passcred
        self._loop = loop
        self._own_loop = loop is None
        self._listener: socket.socket | None = None
        self._acceptor: Acceptor | None = None

    def _new_loop(self) -> Any:
        """An event loop of the server's own, when it was given none."""
        raise NotImplementedError

    def _admit(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def _refuse(self, sock: socket.socket, code: int, message: str) -> None:
        raise NotImplementedError

    def start(self) -> None:
        listener = listen_unix(os.fspath(self.path), self.mode, passcred=self._passcred)
        self._listener = listener
        self._acceptor = Acceptor(listener, self._refuse, self.log)
        if self._loop is None:
            self._loop = self._new_loop()
        loop = self._loop
        acceptor = self._acceptor
        loop.call(lambda: acceptor.serve_on(loop, self._admit, self._what))
        if self._own_loop:
            loop.start()

    def stop(self) -> None:
        loop, listener = self._loop, self._listener
        if loop is None or listener is None:
            return
        loop.call(self._shut)
        if self._own_loop:
            loop.stop()
            self._loop = None
        if self._acceptor is not None:
            self._acceptor.close()
        listener.close()
        self._listener = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def close_connections(self) -> None:
        """On the loop's thread, when the server stops: close every open connection."""
        raise NotImplementedError

    def _shut(self) -> None:
        """On the loop's thread: stop listening, then close the connections."""
        assert self._acceptor is not None
        self._acceptor.stop_serving()
        self.close_connections()


# ---------------------------------------------------------------------- logging
CLIENT_UID: contextvars.ContextVar[int | None] = contextvars.ContextVar("ioasids_client",
                                                                       default=None)
"""The uid of the client whose request this thread serves (``None``: none). Hot paths set and
reset it directly (``CLIENT_UID.set(uid)``, ``CLIENT_UID.reset(token)``); others use
``client_context``."""


@contextlib.contextmanager
def client_context(uid: int) -> Iterator[None]:
    """Within this block, log lines are caused by a client of uid ``uid`` (and rate-limited
    per uid by ``ClientLogLimit``)."""
    token = CLIENT_UID.set(uid)
    try:
        yield
    finally:
        CLIENT_UID.reset(token)


class ClientLogLimit:
    """A structlog processor: each client uid may cause ``burst`` log lines per ``interval``
    seconds; the rest are dropped and counted, and one line says how many (``suppressed``) as
    soon as that uid may log again or ``flush(uid)`` is called. Lines outside
    ``client_context`` pass untouched. Thread-safe."""

    def __init__(self, burst: int = 10, interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # uid -> [window start, lines in this window, lines dropped not yet reported]
        self._windows: dict[int, list[float]] = {}

    def __call__(self, logger: Any, method: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        uid = CLIENT_UID.get()
        if uid is None:
            return event_dict
        now = self._clock()
        with self._lock:
            window = self._windows.get(uid)
            if window is None or now - window[0] >= self.interval:
                dropped = int(window[2]) if window is not None else 0
                window = self._windows[uid] = [now, 0, 0]
            else:
                dropped = 0
            if window[1] >= self.burst:
                window[2] += 1
                raise structlog.DropEvent
            window[1] += 1
            self._forget_old(now)
        if dropped:
            self._summary(uid, dropped)
        event_dict.setdefault("client_uid", uid)
        return event_dict

    def flush(self, uid: int) -> None:
        """Say now how many lines of ``uid`` were dropped, if any."""
        with self._lock:
            window = self._windows.get(uid)
            dropped = int(window[2]) if window is not None else 0
            if window is not None:
                window[2] = 0
        if dropped:
            self._summary(uid, dropped)

    def _summary(self, uid: int, dropped: int) -> None:
        token = CLIENT_UID.set(None)  # the summary itself is never dropped
        try:
            structlog.get_logger("ioasidsd").warning(
                "log lines caused by a client were suppressed", client_uid=uid,
                suppressed=dropped, burst=self.burst, interval=self.interval)
        finally:
            CLIENT_UID.reset(token)

    def _forget_old(self, now: float) -> None:
        """Drop the windows of uids silent for a while (nothing left to report)."""
        if len(self._windows) > 1024:
            for uid in [u for u, w in self._windows.items()
                        if now - w[0] >= self.interval and not w[2]]:
                del self._windows[uid]


CLIENT_LOG_LIMIT = ClientLogLimit()
"""The daemon's limit, installed by ``ioasidsd.daemon.logs.setup_logging``."""
