"""Page requests: the 256-bit page request descriptor and the page request queue (PRQ).

A device with PRI sends page requests; the unit writes each as a descriptor into the PRQ, a ring
of 32-byte slots in memory at PQA (2^PQS pages), advancing PQT; software consumes from PQH.

Descriptor layout (Linux ``struct page_req_dsc``, with the VT-d 3.x private-data bit):

* qw0: type (7:0, 1 for a page request), PASID present (8), private data present (9), RID
  (31:16), PASID (51:32), execute requested (52), privileged mode (53);
* qw1: read (0), write (1), last page in group (2), page request group index (11:3), page
  address (63:12);
* qw2, qw3: private data.

``PageRequestQueue`` is the hardware side: it queues while there is room, sets PRS.PRO and drops
the request when the ring is full (or PRO is still set), and sets PRS.PPR with the page-request
event on the first request after software cleared PPR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ioasidsd.vtd.hardware import registers as r
from ioasidsd.vtd.hardware.bits import Field, bit, pack, unpack

if TYPE_CHECKING:
    from ioasidsd.vtd.counters import Counters
    from ioasidsd.vtd.hardware.memory import PhysMem
    from ioasidsd.vtd.hardware.registers import RegisterFile
    from ioasidsd.vtd.trace import Trace

PRQ_DESC_SIZE = 32
PRQ_TYPE_PAGE_REQUEST = 1

QW0 = {
    "type": Field(7, 0),
    "pasid_present": bit(8),
    "pdp": bit(9),
    "rid": Field(31, 16),
    "pasid": Field(51, 32),
    "exe": bit(52),
    "priv": bit(53),
}
QW1 = {
    "read": bit(0),
    "write": bit(1),
    "lpig": bit(2),
    "prg_index": Field(11, 3),
    "addr": Field(63, 12),
}


@dataclass(frozen=True, slots=True)
class PageRequest:
    """One page request. ``pasid`` is ``None`` for a request without PASID; ``private`` is the
    private data (two qwords) or ``None`` when the request carries none."""

    rid: int
    addr: int
    pasid: int | None = None
    read: bool = True
    write: bool = False
    exe: bool = False
    priv: bool = False
    lpig: bool = True
    prg_index: int = 0
    private: tuple[int, int] | None = None

    @property
    def needs_response(self) -> bool:
        """A page group response is due (Intel's VT-d specification 3.x, section 7.7:
        LPIG or private data)."""
        return self.lpig or self.private is not None

    @property
    def is_stop_marker(self) -> bool:
        """A stop marker: last page in group with neither read nor write."""
        return self.lpig and not self.read and not self.write

    @property
    def group(self) -> tuple[int | None, int]:
        """The key the device waits on for a response: (PASID, group index)."""
        return self.pasid, self.prg_index

    def encode(self) -> tuple[int, int, int, int]:
        qw0 = pack(QW0, {
            "type": PRQ_TYPE_PAGE_REQUEST, "pasid_present": self.pasid is not None,
            "pdp": self.private is not None, "rid": self.rid, "pasid": self.pasid or 0,
            "exe": self.exe, "priv": self.priv,
        })
        qw1 = pack(QW1, {
            "read": self.read, "write": self.write, "lpig": self.lpig,
            "prg_index": self.prg_index, "addr": (self.addr >> 12) & ((1 << 52) - 1),
        })
        qw2, qw3 = self.private if self.private is not None else (0, 0)
        return qw0, qw1, qw2, qw3

    @classmethod
    def decode(cls, words: tuple[int, ...]) -> PageRequest:
        f0 = unpack(QW0, words[0])
        f1 = unpack(QW1, words[1])
        return cls(
            rid=f0["rid"], addr=f1["addr"] << 12,
            pasid=f0["pasid"] if f0["pasid_present"] else None,
            read=bool(f1["read"]), write=bool(f1["write"]), exe=bool(f0["exe"]),
            priv=bool(f0["priv"]), lpig=bool(f1["lpig"]), prg_index=f1["prg_index"],
            private=(words[2], words[3]) if f0["pdp"] else None,
        )

    def describe(self) -> str:
        """Linux's ``decode_prq_descriptor`` summary: rid, address, flags, PASID, index."""
        flags = "".join(c if on else "-" for c, on in (
            ("r", self.read), ("w", self.write), ("x", self.exe), ("p", self.priv),
            ("l", self.lpig)))
        pasid = "-" if self.pasid is None else str(self.pasid)
        return (f"rid=0x{self.rid:04x} addr=0x{self.addr:x} {flags} pasid={pasid} "
                f"index=0x{self.prg_index:x}")


class PageRequestQueue:
    """The hardware end of the PRQ. ``interrupt`` is called for a page-request event."""

    def __init__(self, regs: RegisterFile, mem: PhysMem, counters: Counters, trace: Trace,
                 unit_name: str) -> None:
        self.regs = regs
        self.mem = mem
        self.counters = counters
        self.trace = trace
        self.unit_name = unit_name
        self.base = 0
        self.size_bytes = 0
        self.interrupt: Callable[[], None] | None = None
        self.arrivals: dict[int, int] = {}  # slot offset -> trace seq at arrival (a check)

    @property
    def entries(self) -> int:
        return self.size_bytes // PRQ_DESC_SIZE

    @property
    def configured(self) -> bool:
        return self.size_bytes > 0

    def latch(self, pqa: int) -> None:
        """A PQA write: the ring's base and size (2^PQS pages)."""
        self.base = pqa & r.IQ_ADDR_MASK
        self.size_bytes = (1 << ((pqa & r.PQA_PQS_MASK) + 12))

    def head(self) -> int:
        return self.regs.value("PQH") & r.PQ_OFFSET_MASK

    def tail(self) -> int:
        return self.regs.value("PQT") & r.PQ_OFFSET_MASK

    def pending(self) -> list[tuple[int, PageRequest]]:
        """The queued descriptors from head to tail, as (byte offset, request)."""
        out = []
        head, tail = self.head(), self.tail()
        while head != tail:
            words = self.mem.read_words(self.base + head, 4)
            out.append((head, PageRequest.decode(words)))
            head = (head + PRQ_DESC_SIZE) % self.size_bytes
        return out

    def enqueue(self, req: PageRequest) -> bool:
        """Write ``req`` at the tail; ``False`` (and PRS.PRO) when there is no room."""
        if not self.configured:
            self.counters.inc("prq.dropped_unconfigured")
            return False
        prs = self.regs.value("PRS")
        tail = self.tail()
        next_tail = (tail + PRQ_DESC_SIZE) % self.size_bytes
        if prs & r.PRS_PRO or next_tail == self.head():
            if not prs & r.PRS_PRO:
                self.counters.inc("prq.overflows")
            self.regs.set_bits("PRS", r.PRS_PRO)
            self.counters.inc("prq.dropped")
            return False
        for i, word in enumerate(req.encode()):
            self.mem.write64(self.base + tail + 8 * i, word)
        self.regs.set("PQT", next_tail)
        self.arrivals[tail] = self.trace.seq
        used = ((next_tail - self.head()) % self.size_bytes) // PRQ_DESC_SIZE
        self.counters.high("prq.high_water", used)
        if not prs & r.PRS_PPR:
            self.regs.set_bits("PRS", r.PRS_PPR)
            self.raise_event()
        return True

    def raise_event(self) -> None:
        """Signal the page-request event: pending if PECTL.IM, else delivered now."""
        if self.regs.value("PECTL") & r.ECTL_IM:
            self.regs.set_bits("PECTL", r.ECTL_IP)
            return
        self.regs.clear_bits("PECTL", r.ECTL_IP)
        self.counters.inc("irq.prq")
        if self.interrupt is not None:
            self.interrupt()
