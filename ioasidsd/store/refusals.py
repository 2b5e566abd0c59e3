"""The refusal log: the last refused ``/dev/ioasid`` requests of each cgroup, in bounded rings.

Each entry is plain data (what ``ioasidctl events --json`` prints), made by ``entry`` from a
``Refusal`` of the change feed: ``seq`` (one counter for the whole log, rising, never reused),
``time`` (seconds since the epoch), ``pid``, ``command`` (the process's command name, ``None``
if it was gone), ``uid`` (``None`` if the face did not know it), ``cgroup`` (the cgroup that
asked), ``level`` (the cgroup whose ``ioasids.max`` refused, ``None`` when no limit did),
``errno`` (its name, ``EAGAIN``), ``request`` (the ioctl's name as ``ioctl`` and its arguments)
and ``message`` (why, in one line).

A cgroup keeps at most ``ring`` entries (``[events] ring`` in the daemon's configuration): a new
one pushes its oldest out. The rings follow the hierarchy: removing a cgroup drops its ring,
renaming it moves its ring. ``RefusalLog`` is pure data with no I/O; the store
(``ioasidsd.store.state``) makes each change of it durable with the rest of the state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from ioasidsd.model.changes import Refusal

__all__ = ["DEFAULT_RING", "RefusalLog", "entry"]

DEFAULT_RING = 256
"""Entries a cgroup keeps by default."""


def entry(refusal: Refusal, *, seq: int, time: float, command: str | None) -> dict[str, Any]:
    """The log entry of ``refusal``, numbered ``seq``, made at ``time``."""
    return {
        "seq": seq,
        "time": time,
        "pid": refusal.pid,
        "command": command,
        "uid": refusal.uid,
        "cgroup": refusal.cgroup,
        "level": refusal.level,
        "errno": refusal.error,
        "request": {"ioctl": refusal.command, **refusal.request},
        "message": refusal.message,
    }


def _under(path: str, top: str) -> bool:
    return top == "/" or path == top or path.startswith(top + "/")


class RefusalLog:
    """Per-cgroup rings of refusal entries (see the module's documentation)."""

    def __init__(self, ring: int = DEFAULT_RING) -> None:
        if ring < 1:
            raise ValueError("a ring holds at least one entry")
        self.ring = ring
        self.last_seq = 0
        self._rings: dict[str, deque[dict[str, Any]]] = {}

    def __len__(self) -> int:
        return sum(len(r) for r in self._rings.values())

    def add(self, new: dict[str, Any]) -> list[dict[str, Any]]:
        """Append ``new`` (an ``entry`` numbered above ``last_seq``) to its cgroup's ring;
        returns the entries it pushed out."""
        ring = self._rings.setdefault(new["cgroup"], deque())
        ring.append(new)
        self.last_seq = max(self.last_seq, new["seq"])
        out = []
        while len(ring) > self.ring:
            out.append(ring.popleft())
        return out

    def load(self, entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add stored entries (any order); returns those beyond the rings (a smaller ``ring``
        than they were saved with)."""
        out = []
        for item in sorted(entries, key=lambda e: e["seq"]):
            out.extend(self.add(item))
        return out

    def drop(self, path: str) -> list[dict[str, Any]]:
        """Forget the ring of the removed cgroup ``path``; returns its entries."""
        return list(self._rings.pop(path, ()))

    def rename(self, old: str, new: str) -> list[dict[str, Any]]:
        """Move the rings of ``old`` and the cgroups below it under ``new``; returns the
        entries that moved (their ``cgroup`` and ``level`` rewritten)."""
        moved = []
        for path in [p for p in self._rings if _under(p, old)]:
            where = new + path[len(old):]
            ring = self._rings.pop(path)
            for item in ring:
                item["cgroup"] = where
                level = item.get("level")
                if level is not None and _under(level, old):
                    item["level"] = new + level[len(old):]
                moved.append(item)
            self._rings[where] = ring
        return moved

    def entries(self, path: str = "/", *, after: int = 0) -> list[dict[str, Any]]:
        """The entries of ``path`` and the cgroups below it numbered above ``after``, oldest
        first."""
        found = [item for where, ring in self._rings.items() if _under(where, path)
                 for item in ring if item["seq"] > after]
        found.sort(key=lambda e: e["seq"])
        return found
