"""Simulated physical memory: 4-KiB pages of 64-bit words, allocated by kind.

Every memory-resident VT-d structure (root and context tables, PASID directories and tables,
the invalidation and page-request queues, the driver's wait-status words) lives in pages of a
``PhysMem``. The hardware model reads them through ``read64`` on every uncached lookup, so what
it sees is exactly what the driver stored, in the order it stored it.

Pages are allocated in contiguous blocks tagged with a *kind* (``pasid_dir``, ``pasid_table``,
``iq``...) and an owner; live and peak counts are kept per kind. Physical addresses are never
reused, so an access to a freed page is caught (``MemoryAccessError``) instead of silently
reading another structure. Words are stored in the host's byte order.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
WORDS_PER_PAGE = PAGE_SIZE // 8

PAGE_KINDS = (
    "root",
    "context",
    "pasid_dir",
    "pasid_table",
    "iq",
    "iq_status",
    "prq",
    "sl_pgd",
)
"""The kinds of pages the model allocates (``sl_pgd``: a second-level page-table root)."""


class MemoryAccessError(Exception):
    """An access to an address that is not backed by an allocated page."""


@dataclass(frozen=True, slots=True)
class Block:
    """One allocation: ``count`` contiguous pages from ``pfn``."""

    pfn: int
    count: int
    kind: str
    owner: Any


class PhysMem:
    """Sparse physical memory with a page allocator and per-kind accounting.

    ``observers`` are called as ``observer(addr, value)`` after every 64-bit store (tests use
    them to take snapshots between the driver's ordered writes). ``on_page_change(event, block)``
    is called with ``"alloc"`` or ``"free"`` (the unit traces them).
    """

    def __init__(self, base: int = 0x1_0000_0000,
                 on_page_change: Callable[[str, Block], None] | None = None) -> None:
        self._pages: dict[int, tuple[bytearray, memoryview]] = {}
        self._blocks: dict[int, Block] = {}
        self._next_pfn = base >> PAGE_SHIFT
        self.live: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.live_total = 0
        self.peak_total = 0
        self.observers: list[Callable[[int, int], None]] = []
        self.on_page_change = on_page_change

    # --- allocation
    def alloc(self, kind: str, count: int = 1, owner: Any = None) -> int:
        """Allocate ``count`` zeroed contiguous pages; returns the physical address."""
        if count < 1:
            raise ValueError(f"cannot allocate {count} pages")
        pfn = self._next_pfn
        self._next_pfn += count
        for i in range(count):
            buf = bytearray(PAGE_SIZE)
            self._pages[pfn + i] = (buf, memoryview(buf).cast("Q"))
        block = Block(pfn, count, kind, owner)
        self._blocks[pfn] = block
        self.live[kind] += count
        if self.live[kind] > self.peak[kind]:
            self.peak[kind] = self.live[kind]
        self.live_total += count
        self.peak_total = max(self.peak_total, self.live_total)
        if self.on_page_change is not None:
            self.on_page_change("alloc", block)
        return pfn << PAGE_SHIFT

    def free(self, addr: int) -> Block:
        """Free the block that starts at ``addr``; ``MemoryAccessError`` if none does."""
        pfn = addr >> PAGE_SHIFT
        block = self._blocks.pop(pfn, None)
        if block is None or addr & (PAGE_SIZE - 1):
            raise MemoryAccessError(f"no allocation starts at {addr:#x}")
        for i in range(block.count):
            del self._pages[pfn + i]
        self.live[block.kind] -= block.count
        self.live_total -= block.count
        if self.on_page_change is not None:
            self.on_page_change("free", block)
        return block

    def block(self, addr: int) -> Block | None:
        """The allocation that starts at ``addr``, if any."""
        return self._blocks.get(addr >> PAGE_SHIFT)

    # --- access
    def _words(self, addr: int) -> memoryview:
        page = self._pages.get(addr >> PAGE_SHIFT)
        if page is None:
            raise MemoryAccessError(f"access to unbacked address {addr:#x}")
        return page[1]

    def read64(self, addr: int) -> int:
        """The 64-bit word at ``addr`` (8-byte aligned)."""
        if addr & 7:
            raise MemoryAccessError(f"unaligned 64-bit access at {addr:#x}")
        return self._words(addr)[(addr & (PAGE_SIZE - 1)) >> 3]

    def write64(self, addr: int, value: int) -> None:
        """Store a 64-bit word at ``addr`` and tell the observers."""
        if addr & 7:
            raise MemoryAccessError(f"unaligned 64-bit access at {addr:#x}")
        self._words(addr)[(addr & (PAGE_SIZE - 1)) >> 3] = value
        for observer in self.observers:
            observer(addr, value)

    def read_words(self, addr: int, n: int) -> tuple[int, ...]:
        """``n`` consecutive 64-bit words from ``addr`` (within one page)."""
        if addr & 7:
            raise MemoryAccessError(f"unaligned 64-bit access at {addr:#x}")
        i = (addr & (PAGE_SIZE - 1)) >> 3
        if i + n > WORDS_PER_PAGE:
            raise MemoryAccessError(f"{n} words at {addr:#x} cross a page")
        return tuple(self._words(addr)[i : i + n])

    def read32(self, addr: int) -> int:
        """The 32-bit word at ``addr`` (4-byte aligned)."""
        if addr & 3:
            raise MemoryAccessError(f"unaligned 32-bit access at {addr:#x}")
        page = self._pages.get(addr >> PAGE_SHIFT)
        if page is None:
            raise MemoryAccessError(f"access to unbacked address {addr:#x}")
        return struct.unpack_from("=I", page[0], addr & (PAGE_SIZE - 1))[0]

    def write32(self, addr: int, value: int) -> None:
        """Store a 32-bit word at ``addr`` (the invalidation-wait status write)."""
        if addr & 3:
            raise MemoryAccessError(f"unaligned 32-bit access at {addr:#x}")
        page = self._pages.get(addr >> PAGE_SHIFT)
        if page is None:
            raise MemoryAccessError(f"access to unbacked address {addr:#x}")
        struct.pack_into("=I", page[0], addr & (PAGE_SIZE - 1), value & 0xFFFFFFFF)

    def stats(self) -> dict[str, Any]:
        """Live and peak pages per kind, and the totals."""
        kinds = sorted(set(self.live) | set(self.peak))
        return {
            "live": {k: self.live[k] for k in kinds},
            "peak": {k: self.peak[k] for k in kinds},
            "live_total": self.live_total,
            "peak_total": self.peak_total,
        }
