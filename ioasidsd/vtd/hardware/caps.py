"""The capability (CAP, offset 0x08) and extended capability (ECAP, 0x10) registers.

A simulated unit is configured by ``Capabilities``: one attribute per field, named after the
field in lower case (``pss``, ``smts``, ``nest``...). ``cap()`` and ``ecap()`` encode them at the
bit positions that Linux's ``cap_*``/``ecap_*`` decoders and ``cap_audit.h`` masks use;
``Capabilities.decode`` reads them back. Fields this model does not act on (interrupt remapping,
MTRRs...) are still encoded, so a register dump looks like a real unit's.

``pasid_space`` is the number of PASIDs the unit supports, 2^(PSS+1): PSS holds the PASID width
minus one (Linux computes ``2 << ecap_pss``). Bit 28 of ECAP (Linux's ``ecap_broken_pasid``, the
VT-d 2.x PASID support) is not modelled and always reads 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ioasidsd.vtd.hardware.bits import Field, bit, pack, unpack

CAP_FIELDS: dict[str, Field] = {
    "nd": Field(2, 0),
    "afl": bit(3),
    "rwbf": bit(4),
    "plmr": bit(5),
    "phmr": bit(6),
    "cm": bit(7),
    "sagaw": Field(12, 8),
    "mgaw": Field(21, 16),  # stored as width - 1
    "zlr": bit(22),
    "isoch": bit(23),
    "fro": Field(33, 24),  # fault-recording register offset / 16
    "sllps": Field(37, 34),
    "psi": bit(39),
    "nfr": Field(47, 40),  # number of fault-recording registers - 1
    "mamv": Field(53, 48),
    "dwd": bit(54),
    "drd": bit(55),
    "fl1gp": bit(56),
    "pi": bit(59),
    "fl5lp": bit(60),
    "ecmds": bit(61),
    "esirtps": bit(62),
    "esrtps": bit(63),
}

ECAP_FIELDS: dict[str, Field] = {
    "c": bit(0),
    "qi": bit(1),
    "dt": bit(2),
    "ir": bit(3),
    "eim": bit(4),
    "pt": bit(6),
    "sc": bit(7),
    "iro": Field(17, 8),  # IOTLB register offset / 16
    "mhmv": Field(23, 20),
    "mts": bit(25),
    "nest": bit(26),
    "dis": bit(27),
    "prs": bit(29),
    "ers": bit(30),
    "srs": bit(31),
    "nwfs": bit(33),
    "eafs": bit(34),
    "pss": Field(39, 35),
    "pasid": bit(40),
    "dit": bit(41),
    "pds": bit(42),
    "smts": bit(43),
    "vcs": bit(44),
    "slads": bit(45),
    "slts": bit(46),
    "flts": bit(47),
    "smpwc": bit(48),
    "rps": bit(49),
    "pms": bit(51),
}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The capability knobs of one unit; defaults describe a scalable-mode unit with 20-bit
    PASIDs, first/second-level and nested translation, page requests with drain support, and
    16-bit domain ids. Booleans are one-bit fields; integers must fit their field."""

    # --- CAP
    nd: int = 6
    afl: bool = False
    rwbf: bool = False
    plmr: bool = False
    phmr: bool = False
    cm: bool = False
    sagaw: int = 0b00100  # 48-bit, 4-level second-level tables
    mgaw: int = 47
    zlr: bool = False
    isoch: bool = False
    fro: int = 0x22  # FRCD registers at 0x220
    sllps: int = 0b0011  # 2 MiB and 1 GiB second-level pages
    psi: bool = True
    nfr: int = 0  # one fault-recording register
    mamv: int = 18
    dwd: bool = True
    drd: bool = True
    fl1gp: bool = True
    pi: bool = False
    fl5lp: bool = False
    ecmds: bool = False
    esirtps: bool = False
    esrtps: bool = False
    # --- ECAP
    c: bool = True
    qi: bool = True
    dt: bool = True
    ir: bool = False
    eim: bool = False
    pt: bool = True
    sc: bool = True
    iro: int = 0x0F  # IVA/IOTLB registers at 0xF0/0xF8
    mhmv: int = 0x0F
    mts: bool = False
    nest: bool = True
    dis: bool = False
    prs: bool = True
    ers: bool = False
    srs: bool = True
    nwfs: bool = False
    eafs: bool = False
    pss: int = 19
    pasid: bool = True
    dit: bool = False
    pds: bool = True
    smts: bool = True
    vcs: bool = False
    slads: bool = False
    slts: bool = True
    flts: bool = True
    smpwc: bool = True
    rps: bool = False
    pms: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value does not fit its bits."""
        for name, field in (CAP_FIELDS | ECAP_FIELDS).items():
            value = getattr(self, name)
            if isinstance(value, bool):
                if field.width != 1:
                    raise ValueError(f"capability {name} takes a number, not {value!r}")
                continue
            if not isinstance(value, int) or not 0 <= value <= field.max:
                raise ValueError(
                    f"capability {name}={value!r}: expected 0..{field.max} "
                    f"(bits {field.hi}:{field.lo})"
                )

    def cap(self) -> int:
        """The CAP register value."""
        return pack(CAP_FIELDS, {name: getattr(self, name) for name in CAP_FIELDS})

    def ecap(self) -> int:
        """The ECAP register value."""
        return pack(ECAP_FIELDS, {name: getattr(self, name) for name in ECAP_FIELDS})

    @classmethod
    def decode(cls, cap: int, ecap: int) -> Capabilities:
        """The knobs encoded in a CAP and an ECAP value (one-bit fields become booleans)."""
        values: dict[str, Any] = {}
        for fields, word in ((CAP_FIELDS, cap), (ECAP_FIELDS, ecap)):
            for name, value in unpack(fields, word).items():
                values[name] = bool(value) if fields[name].width == 1 else value
        return cls(**values)

    def replace(self, **changes: Any) -> Capabilities:
        """A copy with some knobs changed; ``ValueError`` for unknown names or bad values."""
        unknown = set(changes) - set(CAP_FIELDS) - set(ECAP_FIELDS)
        if unknown:
            raise ValueError(f"unknown capability knob(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The knobs as a plain mapping."""
        return dataclasses.asdict(self)

    # --- derived facts the driver and the hardware use
    @property
    def pasid_space(self) -> int:
        """The number of PASIDs this unit supports: 2^(PSS+1)."""
        return 2 << self.pss

    @property
    def domain_ids(self) -> int:
        """The number of domain ids: 2^(4 + 2*ND)."""
        return 1 << (4 + 2 * self.nd)

    @property
    def pasid_supported(self) -> bool:
        """PASIDs are usable: scalable mode and ECAP.PASID (Linux ``pasid_supported``)."""
        return self.smts and self.pasid

    @property
    def frcd_offset(self) -> int:
        """Byte offset of the first fault-recording register."""
        return self.fro * 16


PCI_PASID_SPACE = 1 << 20


def system_pasid_space(units: Iterable[Capabilities]) -> tuple[int, bool]:
    """What ``init_dmars`` computes over the units: the PASID space (the smallest
    ``pasid_space`` of the units with PASID support, at most 2^20) and whether scalable mode is
    on (every unit supports it; no unit, no scalable mode). The space is the system capacity
    the driver installs when scalable mode is on."""
    space, smts, count = PCI_PASID_SPACE, True, 0
    for caps in units:
        count += 1
        smts = smts and caps.smts
        if caps.pasid_supported:
            space = min(space, caps.pasid_space)
    return space, smts and count > 0
