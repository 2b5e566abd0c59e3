"""``IdMap``: which set each IOASID was last written in, for the store, in 4 bytes an ID.

The store must name the set of an IOASID that is gone from the model (to recount the set and
rewrite the cgroups its IDs are charged to) without reading the database. A dict would cost
about 100 bytes an entry, 100 MB for the 2^20 IOASIDs of a 20-bit PASID space; this keeps one
32-bit value per possible ID, by chunks of 65,536 made when first used (as the model's
``IdSpace`` keeps its values): 4 MiB for those 2^20, however many sets share them.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Iterator

_BITS = 16
_SIZE = 1 << _BITS
_MASK = _SIZE - 1
_NONE = -1
_EMPTY = array("i", [_NONE]) * _SIZE
_VALUE = struct.Struct("=i")
_LOW_HALVES = memoryview(array("H", range(_SIZE)))  # what the low halves of a run hold
_LOW, _HIGH = (0, 1) if sys.byteorder == "little" else (1, 0)  # a u32's halves, in memory


def ascending_run(ids: Iterable[int]) -> tuple[int, int] | None:
    """``(first, last)`` when ``ids`` (a ``range``, ``array``, tuple or list) is exactly
    ``first, first + 1, ..., last`` in that order, at least two of them, ``first >= 0``
    (compared in C; a ``range`` of step 1 is one at once); else ``None``."""
    if isinstance(ids, range):
        if ids.step == 1 and len(ids) >= 2 and ids.start >= 0:
            return ids.start, ids.stop - 1
        return None
    if not isinstance(ids, array | tuple | list) or len(ids) < 2:
        return None
    lo = ids[0]
    hi = lo + len(ids) - 1
    if lo < 0 or ids[-1] != hi:
        return None
    expected = range(lo, hi + 1)
    if isinstance(ids, array):
        if ids.typecode == "I" and ids.itemsize == 4 and lo >> _BITS == hi >> _BITS:
            same = _u32_run_in_one_chunk(ids, lo, hi)
        else:
            same = ids.typecode in "bBhHiIlLqQ" and ids == array(ids.typecode, expected)
    else:
        same = ids == type(ids)(expected)
    return (lo, hi) if same else None


def _u32_run_in_one_chunk(ids: array, lo: int, hi: int) -> bool:
    """Whether ``ids`` (32-bit, from ``lo`` to ``hi`` in one chunk of 65,536) is ``lo, lo +
    1, ..., hi``: its low 16-bit halves are compared with a slice of 0..65535 and its high
    halves with their one value, in C, instead of building the run's integers."""
    halves = memoryview(ids).cast("B").cast("H")
    high = memoryview(array("H", [lo >> _BITS]) * len(ids))
    return halves[_LOW::2] == _LOW_HALVES[lo & _MASK : (hi & _MASK) + 1] and \
        halves[_HIGH::2] == high


class IdMap:
    """IDs (``0 <= id < 2^32``) to values (``0 <= value < 2^31``); unset IDs map to ``None``.
    Entries are only ever overwritten, never cleared: a value may be stale, and its reader
    checks it against the model."""

    __slots__ = ("_chunks",)

    def __init__(self) -> None:
        self._chunks: dict[int, array] = {}

    def _chunk(self, i: int) -> array:
        chunk = self._chunks.get(i >> _BITS)
        if chunk is None:
            chunk = self._chunks[i >> _BITS] = array("i", _EMPTY)
        return chunk

    def all_map_to(self, ids: Iterable[int], value: int) -> bool:
        """Whether every one of ``ids`` maps to ``value`` (a whole batch in one call, at a
        fraction of the cost of ``get`` for each; a run of consecutive IDs is compared a
        chunk at a time)."""
        chunks = self._chunks
        run = ascending_run(ids)
        if run is not None:
            lo, hi = run
            while lo <= hi:
                block = chunks.get(lo >> _BITS)
                end = min(hi, lo | _MASK)
                if block is None or block[lo & _MASK : (end & _MASK) + 1] != \
                        array("i", [value]) * (end - lo + 1):
                    return False
                lo = end + 1
            return True
        last = -1
        chunk: array | None = None
        for i in ids:
            c = i >> _BITS
            if c != last:
                chunk = chunks.get(c) if i >= 0 else None
                last = c
            if chunk is None or chunk[i & _MASK] != value:
                return False
        return True

    def get(self, i: int) -> int | None:
        chunk = self._chunks.get(i >> _BITS) if i >= 0 else None
        if chunk is None:
            return None
        value = chunk[i & _MASK]
        return None if value == _NONE else value

    def set(self, i: int, value: int) -> None:
        chunk = self._chunks.get(i >> _BITS)
        if chunk is None:
            chunk = self._chunk(i)
        chunk[i & _MASK] = value

    def set_many(self, ids: Iterable[int], value: int) -> None:
        """``set`` for each of ``ids``; consecutive IDs (what allocations of the lowest free
        ID give), as a ``set`` or in ascending order, are written a chunk at a time."""
        run = ascending_run(ids)
        if run is None and isinstance(ids, set | frozenset) and ids:
            lo, hi = min(ids), max(ids)
            if hi - lo + 1 == len(ids) and lo >= 0:
                run = lo, hi
        if run is not None:
            lo, hi = run
            while lo <= hi:
                block = self._chunk(lo)
                end = min(hi, lo | _MASK)
                block[lo & _MASK : (end & _MASK) + 1] = array("i", [value]) * (end - lo + 1)
                lo = end + 1
            return
        chunks = self._chunks
        for i in ids:
            chunk = chunks.get(i >> _BITS)
            if chunk is None:
                chunk = self._chunk(i)
            chunk[i & _MASK] = value

    def ids_of(self, value: int) -> Iterator[int]:
        """The IDs mapped to ``value``, ascending (a scan of every chunk, in C)."""
        pattern = _VALUE.pack(value)
        for c in sorted(self._chunks):
            data = self._chunks[c].tobytes()
            base = c << _BITS
            at = data.find(pattern)
            while at >= 0:
                if at % 4 == 0:
                    yield base | (at >> 2)
                    at = data.find(pattern, at + 4)
                else:
                    at = data.find(pattern, at + 1)
