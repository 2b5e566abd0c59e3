"""``notify_on_release``: run the release agent for each cgroup that became empty.

The model queues the path of every cgroup with ``notify_on_release`` that lost its last process
or child (``Hierarchy.releases``). ``ReleaseAgents`` drains that queue on its own thread,
off ``system.lock``, and runs the root's ``release_agent`` for each path as the kernel does
(``cgroup1_release_agent``): ``argv`` is the agent and the cgroup's path relative to the
hierarchy's root, each exactly the bytes written (the model keeps both as text with
``surrogateescape``, so any byte but NUL survives; they are encoded back explicitly, whatever
the daemon's locale), the environment is only ``HOME=/`` and
``PATH=/sbin:/bin:/usr/sbin:/usr/bin``, the working directory ``/``; nothing is run while the
agent is empty, and the daemon does not wait for the agent to finish (it reaps it later). An
agent that cannot be started is logged and counted in ``failed``.
"""

from __future__ import annotations

import subprocess
import threading
from typing import Any

from ioasidsd.system import System

AGENT_ENV = {"HOME": "/", "PATH": "/sbin:/bin:/usr/sbin:/usr/bin"}

if hasattr(subprocess, "_USE_VFORK"):
    # The daemon serves its FUSE mount from its own threads. Python before 3.12 holds the GIL
    # across vfork (CPython gh-104372): a child whose exec walks a path on that mount (an agent
    # kept there) would wait for a server thread that waits for the GIL, hanging the daemon.
    # fork costs a little more per agent; the daemon does not start children on a hot path.
    subprocess._USE_VFORK = False  # type: ignore[misc]  # Final in typeshed, a documented switch


def _bytes(text: str) -> bytes:
    """The bytes a path kept as text stands for (UTF-8 with ``surrogateescape``, as written)."""
    return text.encode("utf-8", "surrogateescape")


class ReleaseAgents:
    """The release-agent runner of one system. Call ``wake`` after a change that may have
    queued releases (cheap when none did)."""

    def __init__(self, system: System, log: Any) -> None:
        self.system = system
        self.log = log
        self.started = 0
        self.failed = 0
        self._wake = threading.Event()
        self._stopping = False
        self._children: list[subprocess.Popen[bytes]] = []
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Look at the queue soon (from any thread, locks held or not)."""
        if self.system.cgroups.releases:
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="release-agent", daemon=True)
        self._thread.start()
        self._wake.set()  # releases queued before we started

    def stop(self) -> None:
        """Run what is queued, then end the thread. Agents still running are left alone."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            self.run_pending()
            if self._stopping:
                return

    def run_pending(self) -> int:
        """Start the agent for every queued path now; returns how many were started."""
        with self.system.lock:
            releases = self.system.cgroups.releases
            paths = list(dict.fromkeys(releases))  # the kernel queues a cgroup's work once
            releases.clear()
            agent = self.system.cgroups.release_agent
        self._children = [c for c in self._children if c.poll() is None]
        if not agent:
            return 0
        started = 0
        for path in paths:
            try:
                child = subprocess.Popen(
                    [_bytes(agent), _bytes(path)], env=AGENT_ENV, cwd="/",
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True)
            except (OSError, UnicodeEncodeError) as exc:  # the latter: a name with no bytes
                self.failed += 1
                self.log.warning("release agent not started", agent=agent, cgroup=path,
                                 error=getattr(exc, "strerror", None) or str(exc))
                continue
            self._children.append(child)
            self.started += 1
            started += 1
            self.log.info("release agent started", agent=agent, cgroup=path, pid=child.pid)
        return started
