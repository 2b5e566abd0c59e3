"""DMA remapping: how a request (source id, PASID, address) is translated, with the caches.

``Translator.dma`` walks root entry, scalable-mode context entry, PASID directory entry and
PASID entry from memory on every cache miss, fills the context cache, the PASID cache and the
IOTLB (and the device TLB for an ATS translation request), and reports faults with their
scalable-mode reason codes. Page tables themselves are not simulated: a translation's result is
the page-table root its entry names (first level for PGTT 1 and 3, second level for 2, none
for pass-through).

Cached state is dropped only by invalidation descriptors. As a simulator check (not hardware
behaviour) every cache hit is compared with what memory says now; a hit on an entry that memory
no longer holds, or holds differently, is reported as a ``hazard`` ("stale translation after
free" when the PASID entry is gone): the symptom of a driver that invalidates in the wrong
order or not at all.

With CAP.CM the unit may also cache not-present PASID entries, which is why a driver must
invalidate after setting an entry up in caching mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ioasidsd.vtd.hardware import faults as f
from ioasidsd.vtd.hardware import registers as r
from ioasidsd.vtd.hardware.caches import CachedPasidEntry
from ioasidsd.vtd.hardware.context import (
    CONTEXT_ENTRIES_PER_TABLE,
    CONTEXT_ENTRY_SIZE,
    ROOT_ENTRY_SIZE,
    RootEntry,
    SmContextEntry,
)
from ioasidsd.vtd.hardware.memory import MemoryAccessError
from ioasidsd.vtd.hardware.pasid_table import (
    DIR_ENTRY_SIZE,
    PASID_ENTRY_SIZE,
    PASID_ENTRY_WORDS,
    PDE_ADDR_MASK,
    PDE_FPD,
    PDE_P,
    PasidEntry,
    Pgtt,
    dir_index,
    table_index,
)

if TYPE_CHECKING:
    from ioasidsd.vtd.hardware.unit import Unit


@dataclass(frozen=True, slots=True)
class DmaResult:
    """The outcome of one DMA request."""

    ok: bool
    source: str  # "untranslated", "walk", "iotlb", "devtlb" or "fault"
    fault: int | None = None
    suppressed: bool = False
    pgtt: int | None = None
    did: int | None = None
    root: int | None = None
    hazards: tuple[str, ...] = ()


class _Fault(Exception):
    def __init__(self, reason: int, fpd: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fpd = fpd


class Translator:
    """The translation path of one unit."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self._hazards: list[str] = []

    def dma(self, sid: int, pasid: int | None, addr: int, *, write: bool = False,
            ats: bool = False, priv: bool = False) -> DmaResult:
        """Translate one request; faults are recorded (or suppressed) and returned."""
        unit = self.unit
        self._hazards = []
        if not unit.regs.value("GSTS") & r.GSTS_TES:
            return DmaResult(True, "untranslated")
        page = addr >> 12
        device = unit.devices.get(sid)
        if ats and device is not None:
            cached = device.devtlb.lookup((pasid, page))
            if cached is not None:
                hazards = self._check(sid, pasid, cached, "devtlb")
                pgtt, did, root = cached
                return DmaResult(True, "devtlb", pgtt=pgtt, did=did, root=root,
                                 hazards=hazards)
        try:
            ctx = self._context(sid)
            if pasid is None:
                pasid = ctx.rid_pasid
            elif not ctx.paside:
                raise _Fault(f.SM_PASIDE_CLEAR, ctx.fpd)
            if ats and not ctx.dte:
                raise _Fault(f.SM_DTE_CLEAR, ctx.fpd)
            if pasid >= ctx.max_pasid:
                raise _Fault(f.SM_PASID_TOO_LARGE, ctx.fpd)
            entry, did, hazards = self._pasid_entry(sid, pasid, ctx)
            if priv and not entry.sre:
                raise _Fault(f.SM_SRE_CLEAR, entry.fpd)
        except _Fault as fault:
            recorded_pasid = pasid
            unit.faults.report(sid, recorded_pasid, addr, fault.reason, write=write,
                               fpd=fault.fpd)
            return DmaResult(False, "fault", fault=fault.reason, suppressed=fault.fpd,
                             hazards=tuple(self._hazards))
        key = (did, pasid, page)
        cached = unit.iotlb.lookup(key)
        if cached is not None:
            hazards += self._check(sid, pasid, cached, "iotlb")
            source = "iotlb"
        else:
            if entry.pgtt in (Pgtt.FL_ONLY, Pgtt.NESTED):
                root = entry.flptptr
            elif entry.pgtt == Pgtt.SL_ONLY:
                root = entry.slptptr
            else:
                root = None
            cached = (entry.pgtt, did, root)
            unit.iotlb.fill(key, cached)
            source = "walk"
        if ats and device is not None:
            device.devtlb.fill((pasid, page), cached)
        pgtt, did, root = cached
        return DmaResult(True, source, pgtt=pgtt, did=did, root=root, hazards=hazards)

    # --- structure walk
    def _context(self, sid: int) -> SmContextEntry:
        unit = self.unit
        cached = unit.context_cache.lookup(sid)
        if cached is not None:
            return cached
        bus, devfn = sid >> 8, sid & 0xFF
        try:
            lo, hi = unit.mem.read_words(unit.root_table + ROOT_ENTRY_SIZE * bus, 2)
        except MemoryAccessError:
            raise _Fault(f.SM_ROOT_ACCESS, False) from None
        root = RootEntry.decode(lo, hi)
        table = root.upper if devfn >= CONTEXT_ENTRIES_PER_TABLE else root.lower
        if not table:
            raise _Fault(f.SM_ROOT_NOT_PRESENT, False)
        try:
            words = unit.mem.read_words(
                table + CONTEXT_ENTRY_SIZE * (devfn % CONTEXT_ENTRIES_PER_TABLE), 4)
        except MemoryAccessError:
            raise _Fault(f.SM_CTX_ACCESS, False) from None
        ctx = SmContextEntry.decode(words)
        if not ctx.p:
            raise _Fault(f.SM_CTX_NOT_PRESENT, ctx.fpd)
        if SmContextEntry.reserved_bits_set(words):
            raise _Fault(f.SM_CTX_RESERVED, ctx.fpd)
        unit.context_cache.fill(sid, ctx)
        return ctx

    def _read_pasid_entry(self, ctx: SmContextEntry, pasid: int) -> tuple[tuple[int, ...], bool]:
        """The entry's words and whether the directory entry has FPD; faults on the way."""
        mem = self.unit.mem
        try:
            pde = mem.read64(ctx.pasid_dir + DIR_ENTRY_SIZE * dir_index(pasid))
        except MemoryAccessError:
            raise _Fault(f.SM_PDE_ACCESS, ctx.fpd) from None
        dir_fpd = bool(pde & PDE_FPD) or ctx.fpd
        if not pde & PDE_P:
            raise _Fault(f.SM_PDE_NOT_PRESENT, dir_fpd)
        addr = (pde & PDE_ADDR_MASK) + PASID_ENTRY_SIZE * table_index(pasid)
        try:
            return mem.read_words(addr, PASID_ENTRY_WORDS), dir_fpd
        except MemoryAccessError:
            raise _Fault(f.SM_PTE_ACCESS, dir_fpd) from None

    def _pasid_entry(self, sid: int, pasid: int, ctx: SmContextEntry,
                     ) -> tuple[PasidEntry, int, tuple[str, ...]]:
        unit = self.unit
        hazards: tuple[str, ...] = ()
        cached = unit.pasid_cache.lookup((sid, pasid))
        if cached is not None:
            words, did = cached.words, cached.did
            dir_fpd = ctx.fpd
            try:
                now, _ = self._read_pasid_entry(ctx, pasid)
            except _Fault:
                now = None
            if now != words:
                hazards = self._hazard("pasid_cache", sid, pasid, now)
        else:
            words, dir_fpd = self._read_pasid_entry(ctx, pasid)
            entry = PasidEntry.decode(words)
            did = entry.did if entry.p else 0
            if entry.p or unit.caps.cm:
                unit.pasid_cache.fill((sid, pasid), CachedPasidEntry(words, did))
        entry = PasidEntry.decode(words)
        fpd = entry.fpd or dir_fpd
        if not entry.p:
            raise _Fault(f.SM_PTE_NOT_PRESENT, fpd)
        if PasidEntry.reserved_bits_set(words):
            raise _Fault(f.SM_PTE_RESERVED, fpd)
        caps = unit.caps
        valid: dict[int, bool] = {
            Pgtt.FL_ONLY: caps.flts,
            Pgtt.SL_ONLY: caps.slts,
            Pgtt.NESTED: caps.nest,
            Pgtt.PT: caps.pt,
        }
        if not valid.get(entry.pgtt, False):
            raise _Fault(f.SM_PTE_INVALID, fpd)
        return entry, did, hazards

    # --- the simulator's consistency check
    def _memory_entry(self, sid: int, pasid: int) -> tuple[int, ...] | None:
        """What memory holds for (sid, pasid) now, ignoring every cache; ``None`` if absent."""
        ctx = self.unit.context_entry(sid)
        if ctx is None or pasid >= ctx.max_pasid:
            return None
        try:
            words, _ = self._read_pasid_entry(ctx, pasid)
        except (MemoryAccessError, _Fault):
            return None
        return words if words[0] & 1 else None

    def _check(self, sid: int, pasid: int | None, cached: tuple[int, int, int | None],
               cache: str) -> tuple[str, ...]:
        if pasid is None:
            return ()
        now = self._memory_entry(sid, pasid)
        if now is not None:
            entry = PasidEntry.decode(now)
            pgtt, did, root = cached
            expected_root = (entry.flptptr if entry.pgtt in (Pgtt.FL_ONLY, Pgtt.NESTED)
                             else entry.slptptr if entry.pgtt == Pgtt.SL_ONLY else None)
            if (entry.pgtt, entry.did, expected_root) == (pgtt, did, root):
                return ()
        return self._hazard(cache, sid, pasid, now)

    def _hazard(self, cache: str, sid: int, pasid: int,
                now: tuple[int, ...] | None) -> tuple[str, ...]:
        unit = self.unit
        gone = now is None or not now[0] & 1
        what = "stale translation after free" if gone else "stale translation"
        unit.counters.inc(f"hazard.stale_{cache}")
        unit.trace.emit("hazard", unit=unit.name, cache=cache, sid=sid, pasid=pasid, what=what)
        self._hazards.append(f"stale_{cache}")
        return (f"stale_{cache}",)
