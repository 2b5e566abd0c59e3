"""The ``/dev/ioasid`` uAPI (``include/uapi/linux/ioasid.h`` of the series) and our extensions.

Command numbers and argument layouts, as facts. The series defines its four commands with
``_IO('i', nr)``: no direction and no size are encoded, so the numbers are 0x6964..0x6967. Our
extensions (batch allocation and free, guest bind and unbind) are not in the series: they use the
kernel's full ``_IOC`` encoding (direction and argument size), as Jason Gunthorpe asked for in
his review of patch 18, and numbers from 0xA0 up so they can never clash with the series'.

Every structure is a sequence of ``__u32`` (and one ``__u64``) fields in the host's byte order
with no padding, exactly as the C compiler lays them out.
"""

from __future__ import annotations

import struct
from typing import Final

# --- the series (patch 18) -------------------------------------------------------------------
IOASID_API_VERSION: Final = 0
IOASID_TYPE: Final = ord("i")  # 0x69
IOASID_BASE: Final = 100
IOASID_BITS: Final = 31
"""The uAPI returns an ID as a non-negative ``int`` ioctl result, hence 31 bits."""

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    """Linux's generic ``_IOC(dir, type, nr, size)`` for type ``'i'``."""
    return (direction << 30) | (size << 16) | (IOASID_TYPE << 8) | nr


IOASID_GET_API_VERSION: Final = _ioc(_IOC_NONE, IOASID_BASE + 0, 0)  # 0x6964
IOASID_GET_INFO: Final = _ioc(_IOC_NONE, IOASID_BASE + 1, 0)  # 0x6965
IOASID_REQUEST_ALLOC: Final = _ioc(_IOC_NONE, IOASID_BASE + 2, 0)  # 0x6966
IOASID_REQUEST_FREE: Final = _ioc(_IOC_NONE, IOASID_BASE + 3, 0)  # 0x6967

INFO = struct.Struct("=III")
"""``struct ioasid_info``: argsz, flags (must be 0), ioasid_bits (output). 12 bytes."""
ALLOC_REQUEST = struct.Struct("=IIII")
"""``struct ioasid_alloc_request``: argsz, flags (must be 0), range.min, range.max (inclusive).
16 bytes."""
FREE_ARG = struct.Struct("=i")
"""The argument of ``IOASID_REQUEST_FREE``: a 32-bit signed int."""

# --- extensions (not in the series) ----------------------------------------------------------
EXT_BASE: Final = 0xA0

ALLOC_BATCH = struct.Struct("=IIIII")
"""``struct ioasid_alloc_batch``: argsz, flags (must be 0), min, max, count. 20 bytes. The reply
carries ``count`` ``__u32`` IDs, ascending; the result is ``count``."""
FREE_BATCH = struct.Struct("=III")
"""``struct ioasid_free_batch``: argsz, flags (must be 0), count, then ``count`` ``__u32`` IDs.
12 bytes plus the IDs. The result is the number freed."""
BIND_GPASID = struct.Struct("=IIIIIIQ")
"""``struct ioasid_bind_gpasid``: argsz, flags (``IOASID_BIND_GPASID_VAL``), hpasid, gpasid,
devid (PCI ``segment << 16 | bus << 8 | devfn``), addr_width, gpgd (the guest's first-level
page-table pointer). 32 bytes."""
UNBIND_GPASID = struct.Struct("=IIII")
"""``struct ioasid_unbind_gpasid``: argsz, flags (must be 0), hpasid, devid. 16 bytes."""

IOASID_REQUEST_ALLOC_BATCH: Final = _ioc(_IOC_READ | _IOC_WRITE, EXT_BASE + 0, ALLOC_BATCH.size)
IOASID_REQUEST_FREE_BATCH: Final = _ioc(_IOC_WRITE, EXT_BASE + 1, FREE_BATCH.size)
IOASID_BIND_GPASID: Final = _ioc(_IOC_WRITE, EXT_BASE + 2, BIND_GPASID.size)
IOASID_UNBIND_GPASID: Final = _ioc(_IOC_WRITE, EXT_BASE + 3, UNBIND_GPASID.size)

IOASID_BIND_GPASID_VAL: Final = 1 << 0
"""``ioasid_bind_gpasid.flags``: ``gpasid`` is valid and becomes the SPID of ``hpasid``."""
IOASID_BATCH_MAX: Final = 65536
"""The largest ``count`` of one batch request."""

COMMAND_NAMES: Final = {
    IOASID_GET_API_VERSION: "GET_API_VERSION",
    IOASID_GET_INFO: "GET_INFO",
    IOASID_REQUEST_ALLOC: "REQUEST_ALLOC",
    IOASID_REQUEST_FREE: "REQUEST_FREE",
    IOASID_REQUEST_ALLOC_BATCH: "REQUEST_ALLOC_BATCH",
    IOASID_REQUEST_FREE_BATCH: "REQUEST_FREE_BATCH",
    IOASID_BIND_GPASID: "BIND_GPASID",
    IOASID_UNBIND_GPASID: "UNBIND_GPASID",
}

_REQUEST_LAYOUTS: Final = {
    IOASID_GET_INFO: (INFO, ("argsz", "flags", "ioasid_bits")),
    IOASID_REQUEST_ALLOC: (ALLOC_REQUEST, ("argsz", "flags", "min", "max")),
    IOASID_REQUEST_FREE: (FREE_ARG, ("ioasid",)),
    IOASID_REQUEST_ALLOC_BATCH: (ALLOC_BATCH, ("argsz", "flags", "min", "max", "count")),
    IOASID_REQUEST_FREE_BATCH: (FREE_BATCH, ("argsz", "flags", "count")),
    IOASID_BIND_GPASID: (BIND_GPASID,
                         ("argsz", "flags", "hpasid", "gpasid", "devid", "addr_width", "gpgd")),
    IOASID_UNBIND_GPASID: (UNBIND_GPASID, ("argsz", "flags", "hpasid", "devid")),
}


def command_name(cmd: int) -> str:
    """The name of ioctl ``cmd`` (``REQUEST_ALLOC``), or its number in hex if unknown."""
    return COMMAND_NAMES.get(cmd) or hex(cmd)


def request_fields(cmd: int, arg: bytes) -> dict[str, int]:
    """The fixed arguments of request ``cmd`` by their field names (a batch's IDs are left out);
    ``{"bytes": len(arg)}`` for a command without arguments, an unknown one, or an argument
    too short for its structure."""
    layout = _REQUEST_LAYOUTS.get(cmd)
    if layout is None or len(arg) < layout[0].size:
        return {"bytes": len(arg)}
    struct_, names = layout
    return dict(zip(names, struct_.unpack_from(arg), strict=True))


def devid(bus: int, dev: int, fn: int, segment: int = 0) -> int:
    """The ``devid`` of a PCI function: ``segment << 16 | bus << 8 | dev << 3 | fn``."""
    if not (0 <= segment <= 0xFFFF and 0 <= bus <= 0xFF and 0 <= dev <= 0x1F and 0 <= fn <= 7):
        raise ValueError(f"bad PCI address {segment:04x}:{bus:02x}:{dev:02x}.{fn}")
    return (segment << 16) | (bus << 8) | (dev << 3) | fn


def parse_bdf(text: str) -> int:
    """The ``devid`` of ``[segment:]bus:dev.fn`` in hexadecimal (``00:02.0``, ``0000:3a:00.1``).

    Raises ``ValueError`` for anything else.
    """
    try:
        head, fn = text.rsplit(".", 1)
        parts = head.split(":")
        if len(parts) == 2:
            parts.insert(0, "0")
        if len(parts) != 3:
            raise ValueError
        segment, bus, dev = (int(p, 16) for p in parts)
        return devid(bus, dev, int(fn, 16), segment)
    except ValueError:
        raise ValueError(f"bad PCI address {text!r}: expected [segment:]bus:dev.fn") from None


def format_devid(value: int) -> str:
    """``devid`` as ``segment:bus:dev.fn``."""
    return f"{value >> 16:04x}:{(value >> 8) & 0xFF:02x}:{(value >> 3) & 0x1F:02x}.{value & 7}"
