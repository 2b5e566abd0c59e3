"""Scalable-mode root and context entries: how a requester id finds its PASID directory.

The root table is one page of 256 root entries (16 bytes each), indexed by bus number. In
scalable mode the low qword points to the context table of devfn 0-127 and the high qword to the
one of devfn 128-255. Each scalable-mode context entry is 256 bits, so a context table holds
128 entries in one page; Linux programs the low two qwords only:

* lo: P (0), FPD (1), DTE (2), PASIDE (3), PRE (4), reserved (8:5), PDTS (11:9) and the PASID
  directory pointer (63:12). The directory has 2^(PDTS+7) entries.
* hi: RID_PASID (19:0), the PASID used for requests without one (Linux writes 0).
"""

from __future__ import annotations

from dataclasses import dataclass

from ioasidsd.vtd.hardware.bits import Field, bit, pack, unpack

ROOT_ENTRY_SIZE = 16
CONTEXT_ENTRY_SIZE = 32
CONTEXT_ENTRIES_PER_TABLE = 128

ROOT_LO_FIELDS = {"lp": bit(0), "lctp": Field(63, 12)}
ROOT_HI_FIELDS = {"up": bit(0), "uctp": Field(63, 12)}
ROOT_RESERVED = Field(11, 1).mask

CTX_LO_FIELDS = {
    "p": bit(0),
    "fpd": bit(1),
    "dte": bit(2),
    "paside": bit(3),
    "pre": bit(4),
    "pdts": Field(11, 9),
    "pasid_dir": Field(63, 12),  # page frame of the directory
}
CTX_HI_FIELDS = {"rid_pasid": Field(19, 0)}
CTX_LO_RESERVED = Field(8, 5).mask
CTX_HI_RESERVED = Field(63, 21).mask


@dataclass(frozen=True, slots=True)
class RootEntry:
    """One scalable-mode root entry: lower and upper context-table pointers."""

    lower: int = 0  # physical address of the devfn 0-127 context table, 0 if not present
    upper: int = 0  # devfn 128-255

    def encode(self) -> tuple[int, int]:
        lo = pack(ROOT_LO_FIELDS, {"lp": bool(self.lower), "lctp": self.lower >> 12})
        hi = pack(ROOT_HI_FIELDS, {"up": bool(self.upper), "uctp": self.upper >> 12})
        return lo, hi

    @classmethod
    def decode(cls, lo: int, hi: int) -> RootEntry:
        low = unpack(ROOT_LO_FIELDS, lo)
        high = unpack(ROOT_HI_FIELDS, hi)
        return cls(low["lctp"] << 12 if low["lp"] else 0, high["uctp"] << 12 if high["up"] else 0)


@dataclass(frozen=True, slots=True)
class SmContextEntry:
    """One scalable-mode context entry (the fields Linux programs)."""

    p: bool = False
    fpd: bool = False
    dte: bool = False
    paside: bool = False
    pre: bool = False
    pdts: int = 0
    pasid_dir: int = 0  # physical address of the PASID directory
    rid_pasid: int = 0

    def encode(self) -> tuple[int, int, int, int]:
        lo = pack(CTX_LO_FIELDS, {
            "p": self.p, "fpd": self.fpd, "dte": self.dte, "paside": self.paside,
            "pre": self.pre, "pdts": self.pdts, "pasid_dir": self.pasid_dir >> 12,
        })
        hi = pack(CTX_HI_FIELDS, {"rid_pasid": self.rid_pasid})
        return lo, hi, 0, 0

    @classmethod
    def decode(cls, words: tuple[int, ...]) -> SmContextEntry:
        lo = unpack(CTX_LO_FIELDS, words[0])
        hi = unpack(CTX_HI_FIELDS, words[1])
        return cls(
            p=bool(lo["p"]), fpd=bool(lo["fpd"]), dte=bool(lo["dte"]),
            paside=bool(lo["paside"]), pre=bool(lo["pre"]), pdts=lo["pdts"],
            pasid_dir=lo["pasid_dir"] << 12, rid_pasid=hi["rid_pasid"],
        )

    @staticmethod
    def reserved_bits_set(words: tuple[int, ...]) -> bool:
        """Whether a present entry has any reserved bit set (fault 0x42)."""
        return bool(words[0] & CTX_LO_RESERVED or words[1] & CTX_HI_RESERVED
                    or words[2] or words[3])

    @property
    def directory_entries(self) -> int:
        """The number of PASID directory entries the entry allows: 2^(PDTS+7)."""
        return 1 << (self.pdts + 7)

    @property
    def max_pasid(self) -> int:
        """One past the largest PASID the entry allows (64 per directory entry)."""
        return self.directory_entries << 6
