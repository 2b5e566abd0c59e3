"""The invalidation queue, hardware side: a ring of descriptors in memory, run in order.

IQA gives the ring's base, the descriptor width (DW, bit 11: 256-bit descriptors, only honoured
when ECAP.SMTS) and its size (QS: 2^QS pages, i.e. 2^(QS+8-DW) descriptors). IQH and IQT are
byte offsets; software advances IQT, the unit processes every descriptor from IQH to IQT
synchronously and advances IQH after each one (QEMU's model).

Errors latch FSTS.IQE with an IQEI code in IQER and stop processing with IQH at the offending
slot; nothing more is fetched until software clears IQE (which resumes processing). Causes:
IQT beyond the ring, a descriptor fetch from unbacked memory, an unknown type or a reserved
bit, a 128-bit descriptor while the root table is in scalable mode (Intel's VT-d specification,
section 6.5.2; a strictness option since QEMU does not check it), and PD in a wait when
ECAP.PDS is clear (an option: QEMU accepts it). An IQT write with bit 4 set in 256-bit mode is
ignored.

Wait descriptors: SW writes the 32-bit status data to the status address; IF sets ICS.IWC and
raises the completion event unless IECTL.IM (a second IF while IWC is set raises nothing new);
FN needs nothing more, processing being in order; PD first moves every page request the unit's
devices have in flight into the PRQ (all responses queued before it were delivered already).

Disabling the queue (GCMD.QIE to 0) is refused, QIES staying set, unless IQH equals IQT and
the last descriptor processed was a wait.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from ioasidsd.vtd.hardware import descriptors as d
from ioasidsd.vtd.hardware import registers as r
from ioasidsd.vtd.hardware.device import Response
from ioasidsd.vtd.hardware.memory import MemoryAccessError

if TYPE_CHECKING:
    from ioasidsd.vtd.hardware.unit import Unit


class InvalidationQueue:
    """The queued-invalidation engine of one unit."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.base = 0
        self.wide = False  # 256-bit descriptors
        self.entries = 0
        self.last_type: int | None = None
        self.processed = 0
        self.recent: deque[str] = deque(maxlen=64)

    @property
    def shift(self) -> int:
        """log2 of the descriptor size in bytes (4 or 5)."""
        return 5 if self.wide else 4

    @property
    def enabled(self) -> bool:
        return bool(self.unit.regs.value("GSTS") & r.GSTS_QIES)

    # --- enable / disable (GCMD.QIE)
    def enable(self) -> None:
        regs = self.unit.regs
        iqa = regs.value("IQA")
        self.base = iqa & r.IQ_ADDR_MASK
        self.wide = bool(iqa & r.IQA_DW) and self.unit.caps.smts
        self.entries = 1 << ((iqa & r.IQA_QS_MASK) + 8 - int(self.wide))
        self.last_type = None
        regs.set("IQH", 0)
        regs.set_bits("GSTS", r.GSTS_QIES)
        self.unit.trace.emit("iq_enable", unit=self.unit.name, entries=self.entries,
                             width=256 if self.wide else 128)
        if regs.value("IQT"):
            self.process()

    def disable(self) -> bool:
        """Turn the queue off if it is idle after a wait; returns whether it did."""
        regs = self.unit.regs
        idle = regs.value("IQH") == regs.value("IQT")
        if not idle or self.last_type not in (None, d.QI_IWD_TYPE):
            self.unit.counters.inc("iq.disable_refused")
            self.unit.trace.emit("warn", unit=self.unit.name,
                                 msg="queued invalidation disable refused",
                                 head=regs.value("IQH"), tail=regs.value("IQT"))
            return False
        regs.clear_bits("GSTS", r.GSTS_QIES)
        regs.set("IQH", 0)
        return True

    # --- register hooks
    def on_iqt_write(self, value: int, old: int) -> None:
        regs = self.unit.regs
        if self.wide and value & 0x10:
            regs.set("IQT", old)
            self.unit.counters.inc("iq.iqt_write_ignored")
            return
        if self.enabled:
            self.process()

    def resume(self) -> None:
        """Software cleared FSTS.IQE: continue from IQH."""
        if self.enabled:
            self.process()

    # --- processing
    def _error(self, iqei: int, reason: str) -> None:
        unit = self.unit
        unit.regs.set_bits("FSTS", r.FSTS_IQE)
        iqer = unit.regs.value("IQER")
        unit.regs.set("IQER", (iqer & ~r.IQER_IQEI_MASK) | iqei)
        unit.counters.inc("iq.iqe")
        unit.trace.emit("iqe", unit=unit.name, iqei=iqei, reason=reason,
                        head=unit.regs.value("IQH") >> self.shift)
        if unit.regs.value("FECTL") & r.ECTL_IM:
            unit.regs.set_bits("FECTL", r.ECTL_IP)
        else:
            unit.counters.inc("irq.fault")

    def process(self) -> None:
        """Run descriptors from IQH to IQT until the ring is empty or an error latches."""
        unit = self.unit
        regs = unit.regs
        if regs.value("FSTS") & r.FSTS_IQE:
            return
        shift = self.shift
        tail = regs.value("IQT") >> shift
        if tail >= self.entries:
            self._error(d.IQEI_TAIL, f"IQT slot {tail} beyond a {self.entries}-slot queue")
            return
        head = regs.value("IQH") >> shift
        pending = (tail - head) % self.entries
        unit.counters.high("iq.high_water", pending)
        nwords = 4 if self.wide else 2
        while head != tail:
            addr = self.base + (head << shift)
            try:
                words = unit.mem.read_words(addr, nwords)
            except MemoryAccessError as exc:
                self._error(d.IQEI_FETCH, str(exc))
                return
            if not self.wide and unit.sm_root and unit.options.strict_sm_128bit:
                self._error(d.IQEI_WIDTH, "128-bit descriptor with a scalable-mode root table")
                return
            try:
                desc = d.decode(words)
                if desc.type == d.QI_IWD_TYPE and desc["pd"] and not unit.caps.pds \
                        and unit.options.pd_reserved_without_pds:
                    raise d.InvalidDescriptor(d.IQEI_RESERVED, "inv_wait: PD without ECAP.PDS")
            except d.InvalidDescriptor as exc:
                self._error(exc.iqei, exc.reason)
                return
            dropped = self._execute(desc)
            self.last_type = desc.type
            self.processed += 1
            self.recent.append(desc.label)
            unit.counters.inc(f"desc.{desc.label}")
            gran = d.granularity_name(desc)
            if gran is not None:
                unit.counters.inc(f"gran.{desc.label}.{gran}")
            if dropped:
                unit.counters.inc(f"inv_entries.{desc.label}", dropped)
            unit.trace.emit("inv_desc", unit=unit.name, label=desc.label, slot=head,
                            qw0=words[0], qw1=words[1], dropped=dropped)
            head = (head + 1) % self.entries
            regs.set("IQH", head << shift)

    def _execute(self, desc: d.Descriptor) -> int:
        """Apply one descriptor; returns the number of cache entries it dropped."""
        unit = self.unit
        t = desc.type
        if t == d.QI_CC_TYPE:
            if desc["g"] == d.CC_DEVICE:
                return unit.context_cache.invalidate_device(desc["sid"], desc["fm"])
            return unit.context_cache.invalidate_all()  # domain handled as global, like QEMU
        if t == d.QI_IOTLB_TYPE:
            g = desc["g"]
            if g == d.IOTLB_GLOBAL:
                return unit.iotlb.invalidate_all()
            if g == d.IOTLB_DSI:
                return unit.iotlb.invalidate_domain(desc["did"])
            return unit.iotlb.invalidate_pages(desc["did"], None, desc["addr"], 1 << desc["am"])
        if t == d.QI_EIOTLB_TYPE:
            if desc["g"] == d.QI_GRAN_NONG_PASID:
                return unit.iotlb.invalidate_pasid(desc["did"], desc["pasid"])
            return unit.iotlb.invalidate_pages(desc["did"], desc["pasid"], desc["addr"],
                                               1 << desc["am"])
        if t == d.QI_PC_TYPE:
            g = desc["g"]
            if g == d.QI_PC_GLOBAL:
                return unit.pasid_cache.invalidate_all()
            if g == d.QI_PC_ALL_PASIDS:
                return unit.pasid_cache.invalidate_domain(desc["did"])
            return unit.pasid_cache.invalidate_pasid(desc["did"], desc["pasid"])
        if t == d.QI_DIOTLB_TYPE:
            device = unit.devices.get(desc["sid"])
            if device is None:
                unit.counters.inc("desc.no_device")
                return 0
            rng = d.devtlb_range(desc["addr"], desc["s"])
            return device.devtlb.invalidate(None, False, rng)
        if t == d.QI_DEIOTLB_TYPE:
            device = unit.devices.get(desc["sid"])
            if device is None:
                unit.counters.inc("desc.no_device")
                return 0
            rng = d.devtlb_range(desc["addr"], desc["s"])
            return device.devtlb.invalidate(desc["pasid"], bool(desc["g"]), rng)
        if t == d.QI_IWD_TYPE:
            self._wait(desc)
            return 0
        if t == d.QI_PGRP_RESP_TYPE:
            self._respond(desc)
            return 0
        return 0  # IEC: interrupt remapping is not modelled

    def _wait(self, desc: d.Descriptor) -> None:
        unit = self.unit
        regs = unit.regs
        for flag in ("sw", "if", "fn", "pd"):
            if desc[flag]:
                unit.counters.inc(f"wait.{flag}")
        if desc["pd"]:
            unit.deliver_page_requests()
        if desc["sw"]:
            addr = desc["status_addr"] << 2
            try:
                unit.mem.write32(addr, desc["status_data"])
            except MemoryAccessError:
                unit.counters.inc("wait.write_fail")
                unit.trace.emit("warn", unit=unit.name, msg="wait status write failed",
                                addr=addr)
        if desc["if"]:
            if regs.value("ICS") & r.ICS_IWC:
                unit.counters.inc("wait.if_coalesced")
            else:
                regs.set_bits("ICS", r.ICS_IWC)
                if regs.value("IECTL") & r.ECTL_IM:
                    regs.set_bits("IECTL", r.ECTL_IP)
                else:
                    unit.counters.inc("irq.inv_complete")

    def _respond(self, desc: d.Descriptor) -> None:
        unit = self.unit
        device = unit.devices.get(desc["rid"])
        code = desc["code"]
        unit.counters.inc(f"prq.response.{code:#x}")
        if device is None:
            unit.counters.inc("prq.response_no_device")
            return
        private = None
        if desc["pdp"]:
            private = (desc.fields.get("private0", 0), desc.fields.get("private1", 0))
        resp = Response(desc["pasid"] if desc["pasid_present"] else None, desc["prg_index"],
                        code, private, bool(desc["lpig"]))
        problems = device.receive_response(resp, check_lpig=unit.version_major < 4)
        for problem in problems:
            unit.counters.inc(f"prq.{problem}")
            unit.counters.inc("prq.protocol_violations")
        unit.trace.emit("prq_response", unit=unit.name, bdf=device.bdf, pasid=resp.pasid,
                        prg_index=resp.prg_index, code=code, problems=problems)
