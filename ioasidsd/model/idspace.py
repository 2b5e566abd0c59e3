"""The ID space of the default allocator: a map from 32-bit values to objects, with allocation of
the lowest free value in an inclusive range (what the kernel's allocating xarray gives).

The space is cut into chunks of 65,536 values, allocated when first used. A chunk keeps a
``bytearray`` with one byte per value (0 free, 1 used), so that ``bytearray.find`` looks for the
lowest free value in C; a hint skips its dense prefix; a byte per chunk marks the full ones. The
objects themselves sit in a list per chunk: 8 bytes a value instead of a dict entry, which is what
keeps 2^20 live IOASIDs within the memory target.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

CHUNK_BITS = 16
CHUNK_SIZE = 1 << CHUNK_BITS
CHUNK_MASK = CHUNK_SIZE - 1
ID_LIMIT = 1 << 32  # values are 32-bit; the all-ones value (INVALID_IOASID) is never handed out
MAX_VALUE = ID_LIMIT - 2


class IdLookup(Protocol):
    """The reading half of an ``IdSpace``: what a holder of a live index may do with it
    without changing it. ``get`` gives the object stored at a value or ``None``; iteration and
    ``values`` go in ascending value order; ``len`` counts the used values, and so does
    ``count``, read without a call (for a reader that asks after every change)."""

    count: int

    def __len__(self) -> int: ...

    def __contains__(self, value: int) -> bool: ...

    def __iter__(self) -> Iterator[int]: ...

    def get(self, value: int) -> Any: ...

    def values(self) -> Iterator[Any]: ...

    def any_used(self, values: Iterable[int]) -> bool: ...

    def get_range(self, first: int, last: int) -> list[Any]: ...


class _Chunk:
    __slots__ = ("count", "hint", "items", "used")

    def __init__(self) -> None:
        self.used = bytearray(CHUNK_SIZE)
        self.items: list[Any] = [None] * CHUNK_SIZE
        self.count = 0
        self.hint = 0  # no free value below this offset


class IdSpace:
    """Values 0 .. 2^32-2 mapped to objects; ``alloc`` picks the lowest free value in a range."""

    __slots__ = ("_chunks", "_full", "count")

    def __init__(self) -> None:
        self._chunks: dict[int, _Chunk] = {}
        self._full = bytearray(ID_LIMIT >> CHUNK_BITS)  # 1 where a chunk is full
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __contains__(self, value: int) -> bool:
        chunk = self._chunks.get(value >> CHUNK_BITS)
        return chunk is not None and chunk.used[value & CHUNK_MASK] == 1

    def get(self, value: int) -> Any:
        """The object stored at ``value``, or ``None``."""
        chunk = self._chunks.get(value >> CHUNK_BITS)
        return None if chunk is None else chunk.items[value & CHUNK_MASK]

    def any_used(self, values: Iterable[int]) -> bool:
        """Whether any of ``values`` is used: ``in`` for a whole batch in one call, at a
        fraction of the cost of asking for each value; a ``range`` of step 1 (a slice of a
        batch) is looked at a chunk at a time, in C."""
        chunks = self._chunks
        if isinstance(values, range) and values.step == 1:
            first, last = max(values.start, 0), min(values.stop - 1, MAX_VALUE)
            while first <= last:
                end = min(last, first | CHUNK_MASK)
                chunk = chunks.get(first >> CHUNK_BITS)
                if chunk is not None and \
                        chunk.used.find(1, first & CHUNK_MASK, (end & CHUNK_MASK) + 1) >= 0:
                    return True
                first = end + 1
            return False
        last = -1
        used: bytearray | None = None
        for value in values:
            c = value >> CHUNK_BITS
            if c != last:
                chunk = chunks.get(c)
                used = None if chunk is None else chunk.used
                last = c
            if used is not None and used[value & CHUNK_MASK]:
                return True
        return False

    def alloc(self, lo: int, hi: int, obj: Any) -> int:
        """Store ``obj`` at the lowest free value in ``[lo, hi]`` and return the value, or -1 if
        every value of the range is used (or the range is empty)."""
        if hi > MAX_VALUE:
            hi = MAX_VALUE
        if lo > hi or lo < 0:
            return -1
        c = lo >> CHUNK_BITS
        off = lo & CHUNK_MASK
        chunks = self._chunks
        full = self._full
        while True:
            if not full[c]:
                chunk = chunks.get(c)
                if chunk is None:
                    chunk = chunks[c] = _Chunk()
                hint = chunk.hint
                i = chunk.used.find(0, off if off > hint else hint)
                if i >= 0:
                    value = (c << CHUNK_BITS) | i
                    if value > hi:
                        return -1
                    chunk.used[i] = 1
                    chunk.items[i] = obj
                    if i == hint:
                        chunk.hint = i + 1
                    chunk.count += 1
                    if chunk.count == CHUNK_SIZE:
                        full[c] = 1
                    self.count += 1
                    return value
            c = full.find(0, c + 1)
            if c < 0 or (c << CHUNK_BITS) > hi:
                return -1
            off = 0

    def insert(self, value: int, obj: Any) -> bool:
        """Store ``obj`` at a chosen ``value`` (custom allocators, restore); ``False`` if the
        value is used or out of range."""
        if not 0 <= value <= MAX_VALUE:
            return False
        c = value >> CHUNK_BITS
        chunk = self._chunks.get(c)
        if chunk is None:
            chunk = self._chunks[c] = _Chunk()
        i = value & CHUNK_MASK
        if chunk.used[i]:
            return False
        chunk.used[i] = 1
        chunk.items[i] = obj
        chunk.count += 1
        if chunk.count == CHUNK_SIZE:
            self._full[c] = 1
        self.count += 1
        return True

    def remove(self, value: int) -> Any:
        """Free ``value`` and return the object that was there (``None`` if it was free)."""
        c = value >> CHUNK_BITS
        chunk = self._chunks.get(c)
        if chunk is None:
            return None
        i = value & CHUNK_MASK
        if not chunk.used[i]:
            return None
        obj = chunk.items[i]
        chunk.used[i] = 0
        chunk.items[i] = None
        if i < chunk.hint:
            chunk.hint = i
        chunk.count -= 1
        self.count -= 1
        self._full[c] = 0  # an emptied chunk is kept: alloc/free pairs would rebuild it each time
        return obj

    def __iter__(self) -> Iterator[int]:
        """The used values, ascending."""
        for c in sorted(self._chunks):
            chunk = self._chunks[c]
            base = c << CHUNK_BITS
            i = chunk.used.find(1)
            while i >= 0:
                yield base | i
                i = chunk.used.find(1, i + 1)

    def get_range(self, first: int, last: int) -> list[Any]:
        """``get`` of each value from ``first`` to ``last`` (``0 <= first``), in order: a
        slice of consecutive values (a batch's) read a chunk at a time."""
        out: list[Any] = []
        while first <= last:
            end = min(last, first | CHUNK_MASK)
            chunk = self._chunks.get(first >> CHUNK_BITS)
            if chunk is None:
                out.extend([None] * (end - first + 1))
            else:
                out.extend(chunk.items[first & CHUNK_MASK : (end & CHUNK_MASK) + 1])
            first = end + 1
        return out

    def values(self) -> Iterator[Any]:
        """The stored objects, by ascending value."""
        for value in self:
            yield self.get(value)
