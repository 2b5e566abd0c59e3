"""Counters of the VT-d simulation, keyed by dotted names.

``inc("desc.pc_inv")`` counts, ``high("iq.high_water", n)`` keeps a maximum. Names group into
sections by their first component (``desc``, ``gran``, ``wait``, ``iq``, ``fault``, ``cache``,
``prq``, ``drain``, ``vcmd``, ``ioasid``, ``hazard``...); ``as_dict`` returns them nested by
section, which is what the snapshot shows. The sections are listed in ``docs/vtd.md``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class Counters:
    """Named integer counters and high-water marks."""

    __slots__ = ("_counts", "_highs")

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._highs: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    def high(self, name: str, value: int) -> None:
        """Keep the largest ``value`` seen for ``name``."""
        if value > self._highs.get(name, -1):
            self._highs[name] = value

    def __getitem__(self, name: str) -> int:
        if name in self._highs:
            return self._highs[name]
        return self._counts.get(name, 0)

    def flat(self) -> dict[str, int]:
        """Every counter by its dotted name."""
        return {**{k: v for k, v in self._counts.items() if v}, **self._highs}

    def as_dict(self) -> dict[str, Any]:
        """The counters nested by section: ``{"desc": {"pc_inv": 3, ...}, ...}``."""
        nested: dict[str, Any] = {}
        for name, value in sorted(self.flat().items()):
            section, _, rest = name.partition(".")
            nested.setdefault(section, {})[rest or section] = value
        return nested

    def merge(self, other: Counters) -> None:
        """Add ``other``'s counts into this one and keep the larger high-water marks."""
        self._counts.update(other._counts)
        for name, value in other._highs.items():
            self.high(name, value)
