"""A PCI device behind a unit: its identity and the hardware state it carries.

Identity: the BDF (``0000:03:00.0``, segment optional), hence the 16-bit source id; the PASID
width of its PASID capability (0 = no PASID, up to 20); ATS (with its invalidation queue depth)
and PRI; the PF's source id for a VF (used with ECAP.DIT).

Hardware state: the device TLB (ATS translations), the page requests it has issued that the unit
has not received yet (``in_flight``, moved into the PRQ by an invalidation wait with PD or by
``Unit.deliver_page_requests``), and the page groups it waits a response for. Responses it
receives are checked: private data must echo the request's, and a response for a group it is not
waiting on is unexpected; both count as protocol violations.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field
from errno import EINVAL
from typing import TYPE_CHECKING, Any

from ioasidsd.model.errors import IoasidError
from ioasidsd.vtd.hardware.caches import DeviceTlb

if TYPE_CHECKING:
    from ioasidsd.vtd.hardware.page_requests import PageRequest

_BDF = re.compile(
    r"^(?:(?P<seg>[0-9a-fA-F]{1,4}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<dev>[0-9a-fA-F]{1,2})"
    r"\.(?P<fn>[0-7])$"
)
MAX_PASID_BITS = 20


def parse_bdf(text: str) -> tuple[int, int, int, int]:
    """``(segment, bus, device, function)`` of ``[SSSS:]BB:DD.F``; ``EINVAL`` otherwise."""
    m = _BDF.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise IoasidError(EINVAL, f"bad PCI address {text!r}: expected [SSSS:]BB:DD.F")
    seg = int(m["seg"] or "0", 16)
    bus, dev, fn = int(m["bus"], 16), int(m["dev"], 16), int(m["fn"])
    if dev > 0x1F:
        raise IoasidError(EINVAL, f"bad PCI address {text!r}: device number above 0x1f")
    return seg, bus, dev, fn


def format_bdf(segment: int, bus: int, dev: int, fn: int) -> str:
    return f"{segment:04x}:{bus:02x}:{dev:02x}.{fn}"


@dataclass(frozen=True, slots=True)
class Response:
    """A page group response as the device received it."""

    pasid: int | None
    prg_index: int
    code: int
    private: tuple[int, int] | None
    lpig: bool


@dataclass(eq=False)
class PciDevice:
    """A device: identity, capabilities and device-side state."""

    bdf: str
    pasid_bits: int = MAX_PASID_BITS
    ats: bool = True
    pri: bool = True
    qdep: int = 32
    pf_bdf: str | None = None
    segment: int = field(init=False)
    bus: int = field(init=False)
    devfn: int = field(init=False)
    devtlb: DeviceTlb = field(init=False, repr=False)
    in_flight: deque[PageRequest] = field(init=False, repr=False)
    pending_groups: dict[tuple[int | None, int], PageRequest] = field(init=False, repr=False)
    responses: deque[Response] = field(init=False, repr=False)
    unit: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        seg, bus, dev, fn = parse_bdf(self.bdf)
        self.bdf = format_bdf(seg, bus, dev, fn)
        if not isinstance(self.pasid_bits, int) or not 0 <= self.pasid_bits <= MAX_PASID_BITS:
            raise IoasidError(EINVAL, f"{self.bdf}: pasid_bits {self.pasid_bits!r} not in 0..20")
        if not isinstance(self.qdep, int) or not 0 <= self.qdep <= 32:
            raise IoasidError(EINVAL, f"{self.bdf}: ATS queue depth {self.qdep!r} not in 0..32")
        if self.pf_bdf is not None:
            pseg, pbus, pdev, pfn = parse_bdf(self.pf_bdf)
            self.pf_bdf = format_bdf(pseg, pbus, pdev, pfn)
        self.segment, self.bus, self.devfn = seg, bus, (dev << 3) | fn
        self.devtlb = DeviceTlb()
        self.in_flight = deque()
        self.pending_groups = {}
        self.responses = deque(maxlen=256)

    @property
    def sid(self) -> int:
        """The 16-bit source (requester) id: bus, device, function."""
        return (self.bus << 8) | self.devfn

    @property
    def pf_sid(self) -> int:
        """The source id of the physical function (the device itself unless it is a VF)."""
        if self.pf_bdf is None:
            return self.sid
        _, bus, dev, fn = parse_bdf(self.pf_bdf)
        return (bus << 8) | (dev << 3) | fn

    @property
    def max_pasids(self) -> int:
        """The number of PASIDs its PASID capability allows (0 without PASID)."""
        return 1 << self.pasid_bits if self.pasid_bits else 0

    def receive_response(self, resp: Response, *, check_lpig: bool) -> list[str]:
        """A page group response arrived; returns the protocol violations found."""
        self.responses.append(resp)
        request = self.pending_groups.pop((resp.pasid, resp.prg_index), None)
        if request is None:
            return ["unexpected_response"]
        problems = []
        if resp.private != request.private:
            problems.append("private_data_mismatch")
        if check_lpig and resp.lpig != request.lpig:
            problems.append("lpig_mismatch")
        return problems

    def describe(self) -> dict[str, Any]:
        return {
            "bdf": self.bdf,
            "sid": self.sid,
            "pasid_bits": self.pasid_bits,
            "ats": self.ats,
            "qdep": self.qdep,
            "pri": self.pri,
            "pf_bdf": self.pf_bdf,
            "unit": getattr(self.unit, "name", None),
            "devtlb_entries": len(self.devtlb),
            "in_flight_page_requests": len(self.in_flight),
            "pending_page_groups": len(self.pending_groups),
        }
