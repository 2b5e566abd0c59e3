"""The per-device PASID directory, its lazily allocated PASID tables, and the 512-bit entry.

Indexing is the hardware's: a PASID's directory index is ``pasid >> 6`` (its upper 14 bits)
and its index in a PASID table is ``pasid & 0x3F``. A directory entry is 64 bits (P, FPD, the
table's page address); a PASID table is one 4-KiB page of 64 entries of 512 bits.

``PasidTable`` follows Linux's ``intel_pasid_alloc_table``/``intel_pasid_get_entry``: the
directory is allocated at probe for ``min(device PASIDs, system maximum)`` PASIDs, rounded up to
a power-of-two number of pages (one page covers 32,768 PASIDs; 2^20 PASIDs need 32 pages), and
a leaf table is allocated the first time any PASID of its 64-PASID block is looked up. Leaves
are not freed before the whole table is, unless ``reclaim_empty`` asks for it.

``PasidEntry`` is the codec of the entry (fields at the positions of Linux's ``pasid.h``
setters); ``write_field`` performs one of those setters: a read-modify-write of one 64-bit word,
which is how the driver programs an entry in the kernel's order.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, fields

from ioasidsd.vtd.hardware.bits import Field, bit
from ioasidsd.vtd.hardware.memory import PAGE_SHIFT, PAGE_SIZE, PhysMem

PASID_PDE_SHIFT = 6
PASID_PTE_MASK = 0x3F
PASID_TBL_ENTRIES = 64
PASID_ENTRY_SIZE = 64
PASID_ENTRY_WORDS = 8
DIR_ENTRY_SIZE = 8
PDE_P = 1 << 0
PDE_FPD = 1 << 1
PDE_ADDR_MASK = ~0xFFF & ((1 << 64) - 1)

PASID_RID2PASID = 0
PASID_MIN = 1
FLPT_DEFAULT_DID = 1


class Pgtt(enum.IntEnum):
    """PASID-granular translation type (``PASID_ENTRY_PGTT_*``)."""

    FL_ONLY = 1
    SL_ONLY = 2
    NESTED = 3
    PT = 4


# Each field: (word index, bits within the word).
ENTRY_FIELDS: dict[str, tuple[int, Field]] = {
    "p": (0, bit(0)),
    "fpd": (0, bit(1)),
    "aw": (0, Field(4, 2)),
    "pgtt": (0, Field(8, 6)),
    "ssade": (0, bit(9)),
    "slptptr": (0, Field(63, 12)),  # page frame
    "did": (1, Field(15, 0)),
    "pwsnp": (1, bit(23)),
    "pgsnp": (1, bit(24)),
    "sre": (2, bit(0)),
    "flpm": (2, Field(3, 2)),
    "wpe": (2, bit(4)),
    "nxe": (2, bit(5)),
    "eafe": (2, bit(7)),
    "flptptr": (2, Field(63, 12)),  # page frame
}
# Bits the model requires to be zero in a present entry (fault 0x5A): words 3-7, which Linux
# always zeroes; the fields of words 0-2 that the model does not name are not checked.
ENTRY_RESERVED = (
    0,
    0,
    0,
    (1 << 64) - 1,
    (1 << 64) - 1,
    (1 << 64) - 1,
    (1 << 64) - 1,
    (1 << 64) - 1,
)
_POINTERS = ("slptptr", "flptptr")


@dataclass(frozen=True, slots=True)
class PasidEntry:
    """A decoded PASID table entry. Pointers are physical addresses (low 12 bits zero)."""

    p: bool = False
    fpd: bool = False
    aw: int = 0
    pgtt: int = 0
    ssade: bool = False
    slptptr: int = 0
    did: int = 0
    pwsnp: bool = False
    pgsnp: bool = False
    sre: bool = False
    flpm: int = 0
    wpe: bool = False
    nxe: bool = False
    eafe: bool = False
    flptptr: int = 0

    def encode(self) -> tuple[int, ...]:
        """The eight 64-bit words of the entry."""
        words = [0] * PASID_ENTRY_WORDS
        for name, (index, field) in ENTRY_FIELDS.items():
            value = int(getattr(self, name))
            if name in _POINTERS:
                if value & (PAGE_SIZE - 1):
                    raise ValueError(f"{name} {value:#x} is not page aligned")
                value >>= PAGE_SHIFT
            if not 0 <= value <= field.max:
                raise ValueError(f"{name}={value:#x} does not fit bits {field.hi}:{field.lo}")
            words[index] |= value << field.lo
        return tuple(words)

    @classmethod
    def decode(cls, words: tuple[int, ...]) -> PasidEntry:
        values: dict[str, int | bool] = {}
        for f in fields(cls):
            index, field = ENTRY_FIELDS[f.name]
            value = (words[index] >> field.lo) & field.max
            if f.name in _POINTERS:
                value <<= PAGE_SHIFT
            values[f.name] = bool(value) if field.width == 1 else value
        return cls(**values)  # type: ignore[arg-type]

    @staticmethod
    def reserved_bits_set(words: tuple[int, ...]) -> bool:
        return any(w & r for w, r in zip(words, ENTRY_RESERVED, strict=True))


def dir_index(pasid: int) -> int:
    """The PASID directory index of ``pasid`` (its bits 19:6)."""
    return pasid >> PASID_PDE_SHIFT


def table_index(pasid: int) -> int:
    """The index of ``pasid`` in its PASID table (its bits 5:0)."""
    return pasid & PASID_PTE_MASK


def write_field(mem: PhysMem, entry_addr: int, name: str, value: int) -> None:
    """One ``pasid_set_*`` setter: read-modify-write the word that holds field ``name``."""
    index, field = ENTRY_FIELDS[name]
    if name in _POINTERS:
        value >>= PAGE_SHIFT
    addr = entry_addr + 8 * index
    word = mem.read64(addr)
    mem.write64(addr, (word & ~field.mask) | ((value << field.lo) & field.mask))


def clear_entry(mem: PhysMem, entry_addr: int, *, keep_fpd: bool = False) -> None:
    """``pasid_clear_entry`` (all words zero) or ``pasid_clear_entry_with_fpd`` (only FPD)."""
    for i in range(PASID_ENTRY_WORDS):
        mem.write64(entry_addr + 8 * i, PDE_FPD if (keep_fpd and i == 0) else 0)


def _order_for(size: int) -> int:
    """``get_order``: the smallest page order whose block holds ``size`` bytes."""
    order = 0
    while (PAGE_SIZE << order) < size:
        order += 1
    return order


class PasidTable:
    """One device's PASID directory and leaf tables in ``mem``.

    ``max_pasid`` is what the directory covers (Linux's ``pasid_table->max_pasid``, at least
    32,768 because the directory is at least one page). ``present`` counts present entries by
    PGTT; the driver reports every entry change through ``account``.
    """

    def __init__(self, mem: PhysMem, pasids: int, owner: object = None, *,
                 reclaim_empty: bool = False) -> None:
        size = pasids >> (PASID_PDE_SHIFT - 3)
        order = _order_for(size) if size else 0
        self.mem = mem
        self.owner = owner
        self.dir_pages = 1 << order
        self.dir_addr = mem.alloc("pasid_dir", self.dir_pages, owner)
        self.max_pasid = 1 << (order + PAGE_SHIFT + 3)
        self.leaves: dict[int, int] = {}  # directory index -> leaf address
        self.leaf_peak = 0
        self.reclaim_empty = reclaim_empty
        self.present: Counter[int] = Counter()  # PGTT -> present entries
        self._leaf_present: Counter[int] = Counter()  # directory index -> present entries

    @property
    def pdts(self) -> int:
        """The context entry's PDTS for this directory (Linux ``context_get_sm_pds``)."""
        max_pde = self.max_pasid >> PASID_PDE_SHIFT
        pds = max_pde.bit_length() - 1
        return 0 if pds < 7 else pds - 7

    @property
    def leaf_pages(self) -> int:
        return len(self.leaves)

    def entry_addr(self, pasid: int, *, alloc: bool = True) -> int | None:
        """The address of ``pasid``'s entry (``intel_pasid_get_entry``), allocating its leaf
        table if needed and ``alloc``; ``None`` beyond ``max_pasid`` or when not allocated."""
        if not 0 <= pasid < self.max_pasid:
            return None
        index = dir_index(pasid)
        pde_addr = self.dir_addr + DIR_ENTRY_SIZE * index
        pde = self.mem.read64(pde_addr)
        if not pde & PDE_P:
            if not alloc:
                return None
            leaf = self.mem.alloc("pasid_table", 1, self.owner)
            self.mem.write64(pde_addr, leaf | PDE_P)
            self.leaves[index] = leaf
            self.leaf_peak = max(self.leaf_peak, len(self.leaves))
        else:
            leaf = pde & PDE_ADDR_MASK
        return leaf + PASID_ENTRY_SIZE * table_index(pasid)

    def read_entry(self, pasid: int) -> PasidEntry | None:
        """The decoded entry of ``pasid``, or ``None`` if its leaf table does not exist."""
        addr = self.entry_addr(pasid, alloc=False)
        if addr is None:
            return None
        return PasidEntry.decode(self.mem.read_words(addr, PASID_ENTRY_WORDS))

    def account(self, pasid: int, old: tuple[bool, int], new: tuple[bool, int]) -> None:
        """Record that ``pasid``'s entry went from ``(present, pgtt)`` ``old`` to ``new``."""
        if old == new:
            return
        index = dir_index(pasid)
        if old[0]:
            self.present[old[1]] -= 1
            self._leaf_present[index] -= 1
        if new[0]:
            self.present[new[1]] += 1
            self._leaf_present[index] += 1

    def reclaim_if_empty(self, pasid: int) -> bool:
        """With ``reclaim_empty``, free the leaf of ``pasid`` when no entry in it is present
        and no FPD-only entry remains; returns whether it was freed. Linux never does this."""
        index = dir_index(pasid)
        leaf = self.leaves.get(index)
        if not self.reclaim_empty or leaf is None or self._leaf_present[index]:
            return False
        if any(self.mem.read64(leaf + PASID_ENTRY_SIZE * i) for i in range(PASID_TBL_ENTRIES)):
            return False
        self.mem.write64(self.dir_addr + DIR_ENTRY_SIZE * index, 0)
        self.mem.free(leaf)
        del self.leaves[index]
        return True

    def free(self) -> None:
        """Free every leaf and the directory (``intel_pasid_free_table``)."""
        for leaf in self.leaves.values():
            self.mem.free(leaf)
        self.leaves.clear()
        self.mem.free(self.dir_addr)
        self.present.clear()
        self._leaf_present.clear()

    def stats(self) -> dict[str, int]:
        return {
            "dir_pages": self.dir_pages,
            "leaf_pages": len(self.leaves),
            "leaf_peak": self.leaf_peak,
            "max_pasid": self.max_pasid,
            "pdts": self.pdts,
            "present": sum(self.present.values()),
        }
