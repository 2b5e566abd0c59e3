"""sd_notify: tell the service manager about start-up, status, liveness and shutdown.

The protocol (``sd_notify(3)``): when ``$NOTIFY_SOCKET`` is set, send one datagram of
newline-separated ``KEY=VALUE`` lines to that AF_UNIX socket, a path or, with a leading ``@``,
an abstract name. Without the variable there is nothing to do.

The watchdog (``sd_watchdog_enabled(3)``): a service started with ``WatchdogSec=`` finds the
interval in ``$WATCHDOG_USEC`` (microseconds) and, when ``$WATCHDOG_PID`` is set, the pid it is
meant for; it must send ``WATCHDOG=1`` more often than that, or the manager kills it.
``Heartbeat`` sends it at half the interval, and only while every liveness check of the
daemon passes, so that a wedged daemon stops sending and is restarted. It also sends the
``STATUS=`` line again when what it says changes, at most once per ``status_interval``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def sd_notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=serving"``) as one notification.

    Returns ``False`` when there is no ``$NOTIFY_SOCKET``; raises ``OSError`` if it is set but
    cannot be reached, and ``ValueError`` for a kind of address this code does not speak
    (``vsock:``) or a line holding a newline.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if any("\n" in line for line in lines):
        raise ValueError("a notification line may not contain a newline")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        raise ValueError(f"unsupported NOTIFY_SOCKET address {address!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall("\n".join(lines).encode())
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None,
                      pid: int | None = None) -> float | None:
    """The watchdog interval the service manager gave this process, in seconds; ``None`` when
    there is none: no ``$WATCHDOG_USEC``, a value that is not a positive whole number of
    microseconds, or a ``$WATCHDOG_PID`` naming another process than ``pid`` (default: this
    one), which the interval is then not meant for."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    meant_for = env.get("WATCHDOG_PID", "")
    me = os.getpid() if pid is None else pid
    if meant_for and (not meant_for.isdigit() or int(meant_for) != me):
        return None
    return int(usec) / 1_000_000


Check = Callable[[], "str | None"]
"""A liveness check: ``None`` when that part of the daemon answers, else why not."""


class Heartbeat:
    """``WATCHDOG=1`` and ``STATUS=`` lines, sent from the daemon's main loop.

    The loop waits at most ``due()`` seconds (``None``: nothing to wait for), then calls
    ``tick()``, which sends what is due: ``WATCHDOG=1`` every half ``interval`` (the watchdog
    interval, ``None`` for no watchdog) if every one of ``checks`` passes, else nothing, with
    one warning through ``warn(message, **fields)`` until they pass again; and, after
    ``changed()``, the line ``status()`` gives if it differs from the last one sent, at most
    once per ``status_interval`` seconds (``status()`` may answer ``None``, "not now": the
    line stays pending). ``send(*lines)`` is ``sd_notify``; its ``OSError``
    and ``ValueError`` are reported through ``warn`` and never raised. ``clock`` is
    ``time.monotonic``.
    """

    def __init__(self, *, interval: float | None, status: Callable[[], str | None],
                 checks: Sequence[Check] = (), status_interval: float = 1.0,
                 send: Callable[..., Any] = sd_notify,
                 warn: Callable[..., Any] = lambda message, **fields: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.status = status
        self.checks = tuple(checks)
        self.status_interval = status_interval
        self.send = send
        self.warn = warn
        self.clock = clock
        now = clock()
        self.next_ping = now if interval is not None else None
        self.last_status: str | None = None
        self.status_sent_at = now - status_interval
        self.dirty = False
        self.pings = 0
        self.failing: str | None = None
        """Why the last due ``WATCHDOG=1`` was withheld; ``None`` while the checks pass."""

    def sent_status(self, line: str) -> None:
        """Record that ``line`` was sent by someone else (with ``READY=1``)."""
        self.last_status = line
        self.status_sent_at = self.clock()

    def changed(self) -> bool:
        """What ``status()`` says may have changed; ``True`` if nothing was pending before (the
        caller then wakes the loop)."""
        was, self.dirty = self.dirty, True
        return not was

    def due(self) -> float | None:
        """Seconds until ``tick`` has something to do (0 if now), ``None`` if never."""
        waits = []
        if self.next_ping is not None:
            waits.append(self.next_ping)
        if self.dirty:
            waits.append(self.status_sent_at + self.status_interval)
        if not waits:
            return None
        return max(0.0, min(waits) - self.clock())

    def tick(self) -> None:
        """Send what is due (see the class)."""
        now = self.clock()
        if self.next_ping is not None and self.interval is not None and now >= self.next_ping:
            self.next_ping = now + self.interval / 2
            why = next((reason for reason in (check() for check in self.checks)
                        if reason is not None), None)
            if why is None:
                if self._send("WATCHDOG=1"):
                    self.pings += 1
                if self.failing is not None:
                    self.warn("the daemon answers again: WATCHDOG=1 resumed")
                self.failing = None
            elif self.failing is None:
                self.failing = why
                self.warn("WATCHDOG=1 withheld: the daemon does not answer", reason=why)
        if self.dirty and now >= self.status_sent_at + self.status_interval:
            line = self.status()
            if line is None:  # not now: try again after another interval
                self.status_sent_at = now
                return
            self.dirty = False
            if line != self.last_status:
                self._send(f"STATUS={line}")
                self.sent_status(line)

    def _send(self, line: str) -> bool:
        try:
            return bool(self.send(line))
        except (OSError, ValueError) as exc:
            self.warn("the service manager cannot be notified", error=str(exc))
            return False
