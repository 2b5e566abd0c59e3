"""The default IOASID allocator: the lowest free value in an inclusive range.

The kernel uses an allocating xarray; here the 32-bit ID space is cut into chunks of 65,536
values, each a ``bytearray`` with one byte per value (0 free, 1 used) allocated when first
touched. ``bytearray.find`` scans in C, a per-chunk hint skips the dense prefix, and a byte per
chunk marks the full ones, so sequential and alloc/free-pair patterns stay O(1) while the memory
is one byte per value of the chunks in use.
"""

from __future__ import annotations

CHUNK_BITS = 16
CHUNK_SIZE = 1 << CHUNK_BITS
CHUNK_MASK = CHUNK_SIZE - 1
ID_LIMIT = 1 << 32  # IDs are 32-bit; the all-ones value is INVALID_IOASID and never handed out


class IdSpace:
    """A set of used 32-bit values with lowest-free-in-range allocation."""

    __slots__ = ("_chunks", "_full", "_hint", "_used", "count")

    def __init__(self) -> None:
        self._chunks: dict[int, bytearray] = {}
        self._used: dict[int, int] = {}  # chunk -> values used in it
        self._hint: dict[int, int] = {}  # chunk -> no free value below this offset
        self._full = bytearray(ID_LIMIT >> CHUNK_BITS)  # 1 where a chunk is full
        self.count = 0

    def __contains__(self, value: int) -> bool:
        chunk = self._chunks.get(value >> CHUNK_BITS)
        return chunk is not None and chunk[value & CHUNK_MASK] == 1

    def __len__(self) -> int:
        return self.count

    def alloc(self, lo: int, hi: int) -> int:
        """Mark and return the lowest free value in ``[lo, hi]``, or -1 if there is none."""
        hi = min(hi, ID_LIMIT - 2)
        if lo > hi or lo < 0:
            return -1
        c = lo >> CHUNK_BITS
        off = lo & CHUNK_MASK
        chunks = self._chunks
        while True:
            if not self._full[c]:
                chunk = chunks.get(c)
                if chunk is None:
                    chunk = chunks[c] = bytearray(CHUNK_SIZE)
                    self._used[c] = 0
                    self._hint[c] = 0
                hint = self._hint[c]
                i = chunk.find(0, off if off > hint else hint)
                if i >= 0:
                    value = (c << CHUNK_BITS) | i
                    if value > hi:
                        return -1
                    chunk[i] = 1
                    if i == hint:
                        self._hint[c] = i + 1
                    used = self._used[c] + 1
                    self._used[c] = used
                    if used == CHUNK_SIZE:
                        self._full[c] = 1
                    self.count += 1
                    return value
            c = self._full.find(0, c + 1)
            if c < 0 or (c << CHUNK_BITS) > hi:
                return -1
            off = 0

    def take(self, value: int) -> bool:
        """Mark ``value`` used (custom allocators, restore); ``False`` if it already was."""
        c = value >> CHUNK_BITS
        chunk = self._chunks.get(c)
        if chunk is None:
            chunk = self._chunks[c] = bytearray(CHUNK_SIZE)
            self._used[c] = 0
            self._hint[c] = 0
        i = value & CHUNK_MASK
        if chunk[i]:
            return False
        chunk[i] = 1
        used = self._used[c] + 1
        self._used[c] = used
        if used == CHUNK_SIZE:
            self._full[c] = 1
        self.count += 1
        return True

    def release(self, value: int) -> None:
        """Mark ``value`` free again. Releasing a free value is a no-op."""
        c = value >> CHUNK_BITS
        chunk = self._chunks.get(c)
        i = value & CHUNK_MASK
        if chunk is None or not chunk[i]:
            return
        chunk[i] = 0
        if i < self._hint[c]:
            self._hint[c] = i
        used = self._used[c] - 1
        self.count -= 1
        if used == 0:
            del self._chunks[c], self._used[c], self._hint[c]
        else:
            self._used[c] = used
        self._full[c] = 0
